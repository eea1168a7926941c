"""Reading TOML into pydantic models, with errors that name the file and the key at fault.

Target profiles and recipes (and later the device inventory) share this one path.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin

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
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 by definition; a Latin-1 editor's file is not
        raise error(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                    "TOML files must be saved as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def _step(annotation: Any, part: Any) -> Any:
    """The type found one step down `annotation` at `part` of an error's location: a model's field, a
    dict's value type (the part is a key), a list's item type (the part is an index); None when unknown."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        members = [a for a in args if a is not type(None)]
        named = [a for a in members if getattr(a, "__name__", None) == part]
        if named:  # pydantic names the union member it tried in the location
            return named[0]
        if len(members) == 1:
            return _step(members[0], part)
        steps = [s for s in (_step(m, part) for m in members) if s is not None]
        return steps[0] if len(steps) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field else None
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    if origin in (list, tuple, set, frozenset, Sequence) and args and isinstance(part, int):
        return args[0]
    return None


def _as_model(annotation: Any) -> "type[BaseModel] | None":
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _as_model(members[0])
    return None


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the table at `loc` may hold, for telling the user what was expected instead: the walk
    descends through models' fields, Optional fields and the values of dict[str, Model] tables."""
    annotation: Any = model
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    table = _as_model(annotation)
    return sorted(table.model_fields) if table else []


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One clause per problem: the dotted key, what was expected, and what was found."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            expected = f" (expected one of: {', '.join(allowed)})" if allowed else ""
            lines.append(f"key '{key}': unknown key{expected}")
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
