"""The model registry: a plain dict from name to a typed builder."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from mfnet.errors import UnknownModelError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Builder) -> Builder:
    """Registers ``builder`` under its function name; a name registered twice raises."""
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = builder
    return builder


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of ``name``; an unknown name raises ``UnknownModelError`` with the closest names."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run `mfnet models` to list them."
        raise UnknownModelError(f"unknown model {name!r}: {hint}") from None


def build_model(name: str, *, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Builds ``name`` with random weights (``num_classes=None`` keeps the builder's default)."""
    builder = get_builder(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return builder(**kwargs)
    except TypeError as err:
        raise UnknownModelError(f"model {name!r} does not take these arguments ({err})") from None
