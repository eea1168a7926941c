"""The errors edgeprune raises. Each message names the file, key, layer or op at fault."""

from __future__ import annotations


class EdgepruneError(Exception):
    """Base class: catch this to handle every edgeprune failure."""


class TargetError(EdgepruneError):
    """A target profile is unknown, malformed or inconsistent."""


class BudgetError(EdgepruneError):
    """A budget is out of range or cannot be met."""


class RecipeError(EdgepruneError):
    """A per-layer recipe is malformed or names a layer the model does not have."""


class ModelError(EdgepruneError):
    """The model cannot be run, traced or pruned as asked."""


class ArtifactError(EdgepruneError):
    """A saved model or artifact is missing, corrupt or would be overwritten."""
