"""Reading TOML into pydantic models, with errors that name the file and the key at fault.

Target profiles and recipes (and later the device inventory) share this one path.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path, error: type[Exception]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a table at `loc` may hold, for telling the user what was expected instead."""
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        sub = getattr(field, "annotation", None) if field else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
        else:
            break
    return sorted(model.model_fields)


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One clause per problem: the dotted key, what was expected, and what was found."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(model, err["loc"][:-1]))
            lines.append(f"key '{key}': unknown key (expected one of: {allowed})")
        elif err["type"] == "missing":
            lines.append(f"key '{key}': missing (required)")
        else:
            lines.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def validate(model: type[M], data: dict[str, Any], source: Path | str, error: type[Exception]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{source}: {describe_validation_error(exc, model)}") from None
