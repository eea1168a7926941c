"""TOML errors name the key at fault and list the keys its own table takes, at any depth."""

from __future__ import annotations

import pytest

import edgeprune as ep
from edgeprune.recipe import load_recipe


def test_an_unknown_key_in_a_recipe_layer_lists_the_keys_a_layer_override_takes(write_toml):
    path = write_toml("recipe.toml", '[layers."fc1"]\nmethd = "keep"\nmethod = "keep"\n')
    with pytest.raises(ep.RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "layers.fc1.methd" in message
    assert "expected one of: amount, m, method, n)" in message and "ignore, layers" not in message


def test_an_unknown_top_level_recipe_key_still_lists_the_top_level_keys(write_toml):
    path = write_toml("recipe.toml", 'ignor = ["fc1"]\n')
    with pytest.raises(ep.RecipeError, match=r"'ignor': unknown key \(expected one of: ignore, layers\)"):
        load_recipe(path)
