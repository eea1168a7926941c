"""Model factories named as `package.module:function` (the CLI's --model, `load`'s first argument)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from torch import nn

from .errors import ModelError

Factory = Union[str, Callable[[], nn.Module]]


def resolve(factory: Factory) -> Callable[[], nn.Module]:
    if callable(factory):
        return factory
    module_name, sep, attr = str(factory).partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"model factory {factory!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model factory {factory!r}: cannot import {module_name!r}: {exc}") from exc
    except SyntaxError as exc:  # the user's own module: name the file and line, as python would
        raise ModelError(f"model factory {factory!r}: {exc.filename}, line {exc.lineno}: SyntaxError: {exc.msg}") from exc
    except Exception as exc:  # the module's top-level code failed while importing
        raise ModelError(f"model factory {factory!r}: importing {module_name!r} failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelError(f"model factory {factory!r}: {module_name} has no callable {attr!r}")
    return fn


def build(factory: Factory) -> nn.Module:
    fn = resolve(factory)
    try:
        model = fn()
    except Exception as exc:
        raise ModelError(f"model factory {getattr(fn, '__qualname__', fn)} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {getattr(fn, '__qualname__', fn)} returned {type(model).__name__}, not an nn.Module")
    return model


def default_inputs(factory: Factory) -> Any:
    """The factory's own example inputs (`factory.example_inputs()`), or None when it has none."""
    make = getattr(resolve(factory), "example_inputs", None)
    if not callable(make):
        return None
    try:
        return make()
    except Exception as exc:
        raise ModelError(f"model factory {spec_of(factory)}: its example_inputs() failed: "
                         f"{type(exc).__name__}: {exc}") from exc


def spec_of(factory: Factory) -> str:
    """'module:function' for a factory, so a saved model names what rebuilds it."""
    if isinstance(factory, str):
        return factory
    return f"{factory.__module__}:{factory.__qualname__}"
