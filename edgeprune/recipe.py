"""A user's per-layer overrides of the policy, in TOML.

    ignore = ["classifier", "*.attention.output.dense"]   # kept as they are (glob patterns allowed)

    [layers."resnet.encoder.stages.3.layers.1.layer.1.convolution"]
    method = "structured"        # structured | n:m (with n, m) | "2:4" (any "N:M") | unstructured | keep
    amount = 0.25                # structured: fraction of output channels; unstructured: of weights

Every name or pattern must match a prunable layer of the model: a typo is an error, not a no-op. An exact
layer name overrides the target's rules (even the first-layer and head rules); a glob pattern ("*", "fc?")
applies only to the layers the rules leave free to prune, and an exact name wins over a glob.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._toml import read_toml, validate
from .errors import RecipeError


METHODS = ("structured", "n:m", "unstructured", "keep")


class LayerOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    method: Literal["structured", "n:m", "unstructured", "keep"]  # "N:M" is read as n:m with n, m
    amount: Optional[float] = Field(default=None, ge=0.0, lt=1.0)
    n: Optional[int] = Field(default=None, ge=1)
    m: Optional[int] = Field(default=None, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _n_m_spelling(cls, data: Any) -> Any:
        """`method = "2:4"` (as the plan table prints it) means `method = "n:m"` with n = 2, m = 4."""
        method = data.get("method") if isinstance(data, dict) else None
        if not isinstance(method, str) or method in METHODS:
            return data  # pydantic reports a missing or mistyped method itself
        spelled = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", method)
        if spelled is None:
            raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}, or an N:M pattern such as '2:4'")
        n, m = int(spelled[1]), int(spelled[2])
        for key, value in (("n", n), ("m", m)):
            if data.get(key, value) != value:
                raise ValueError(f"method {data['method']!r} says {key} = {value}, but {key} = {data[key]!r} is also given")
        return {**data, "method": "n:m", "n": n, "m": m}

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

    def resolve(self, layer_names: list[str], source: str = "recipe") -> tuple[set[str], dict[str, tuple[str, LayerOverride]]]:
        """(ignored layers, {layer: (the [layers] key that matched it, its override)}) against the model's
        layers; unknown names are errors. An exact name wins over a glob; among globs, the last one wins."""

        def match(pattern: str, key: str) -> list[str]:
            found = [n for n in layer_names if fnmatch.fnmatchcase(n, pattern)]
            if not found:
                close = difflib.get_close_matches(pattern, layer_names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise RecipeError(f"{source}: {key} names layer {pattern!r}, which the model does not have{hint}")
            return found

        ignored = {n for pattern in self.ignore for n in match(pattern, "ignore")}
        overrides: dict[str, tuple[str, LayerOverride]] = {}
        # exact names last, so that they win over any glob that also matches
        for pattern, override in sorted(self.layers.items(), key=lambda item: item[0] in layer_names):
            for n in match(pattern, f"[layers.{pattern!r}]"):
                overrides[n] = (pattern, override)
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
