"""A user's per-layer overrides of the policy, in TOML.

    ignore = ["classifier", "*.attention.output.dense"]   # kept as they are (glob patterns allowed)

    [layers."resnet.encoder.stages.3.layers.1.layer.1.convolution"]
    method = "structured"        # structured | n:m | unstructured | keep
    amount = 0.25                # structured: fraction of output channels; unstructured: of weights

Every name or pattern must match a prunable layer of the model: a typo is an error, not a no-op.
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._toml import read_toml, validate
from .errors import RecipeError


class LayerOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    method: Literal["structured", "n:m", "unstructured", "keep"]
    amount: Optional[float] = Field(default=None, ge=0.0, lt=1.0)
    n: Optional[int] = Field(default=None, ge=1)
    m: Optional[int] = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _fields_fit_method(self) -> "LayerOverride":
        if self.method == "unstructured" and self.amount is None:
            raise ValueError("method 'unstructured' needs an amount")
        if self.method != "n:m" and (self.n or self.m):
            raise ValueError("n and m apply only to method 'n:m'")
        if self.method in ("n:m", "keep") and self.amount is not None:
            raise ValueError(f"method {self.method!r} takes no amount")
        return self


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ignore: list[str] = []
    layers: dict[str, LayerOverride] = {}
    _source: str = ""

    def resolve(self, layer_names: list[str], source: str = "recipe") -> tuple[set[str], dict[str, LayerOverride]]:
        """(ignored layers, per-layer overrides) against the model's layers; unknown names are errors."""

        def match(pattern: str, key: str) -> list[str]:
            found = [n for n in layer_names if fnmatch.fnmatchcase(n, pattern)]
            if not found:
                close = difflib.get_close_matches(pattern, layer_names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise RecipeError(f"{source}: {key} names layer {pattern!r}, which the model does not have{hint}")
            return found

        ignored = {n for pattern in self.ignore for n in match(pattern, "ignore")}
        overrides: dict[str, LayerOverride] = {}
        for pattern, override in self.layers.items():
            for n in match(pattern, f"[layers.{pattern!r}]"):
                overrides[n] = override
        return ignored, overrides


def load_recipe(recipe: "Recipe | str | Path | dict | None") -> tuple[Recipe, str]:
    """A recipe and where it came from (for error messages)."""
    if recipe is None:
        return Recipe(), "recipe"
    if isinstance(recipe, Recipe):
        return recipe, "recipe"
    if isinstance(recipe, dict):
        return validate(Recipe, recipe, "recipe", RecipeError), "recipe"
    path = Path(recipe)
    return validate(Recipe, read_toml(path, RecipeError), path, RecipeError), str(path)
