"""Methods by name: how a method turns a batch into a loss and images into predictions.

``create_method(name, trunk=..., classifier=..., num_classes=..., cls_num_list=..., loss=...,
loss_name=..., **params)``; ``params`` are the method's own hyper-parameters (see
:func:`method_parameters`).
"""

from __future__ import annotations

import inspect

from .base import Method, StepOutput, check_head_matches_loss
from .bcl import BCLMethod
from .ncl import NCLMethod
from .standard import StandardMethod

__all__ = [
    "BCLMethod",
    "Method",
    "NCLMethod",
    "StandardMethod",
    "StepOutput",
    "check_head_matches_loss",
    "create_method",
    "list_methods",
    "method_parameters",
    "method_views",
    "register_method",
]

#: Arguments every method builder receives from the engine (not configurable per method).
COMMON_ARGS = ("trunk", "classifier", "num_classes", "cls_num_list", "loss", "loss_name")

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str, cls: type[Method] | None = None):
    """Register a :class:`Method` subclass under ``name`` (usable as a decorator).

    The class provides ``build(*, trunk, classifier, num_classes, cls_num_list, loss,
    loss_name, **params)`` (a classmethod that accepts and ignores further keyword arguments,
    ``**_``, so the engine can pass new common ones) and ``views``.
    """

    def add(c: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        _METHODS[name] = c
        return c

    return add(cls) if cls is not None else add


def list_methods() -> list[str]:
    return sorted(_METHODS)


def _method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name]


def method_parameters(name: str) -> dict:
    """The method's own keyword parameters with their defaults."""
    params = inspect.signature(_method_class(name).build).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.name not in COMMON_ARGS and p.default is not p.empty and p.kind is not p.VAR_KEYWORD
    }


def method_views(name: str) -> tuple[str, ...]:
    """The training views of method ``name`` (known before the method is built)."""
    return tuple(_method_class(name).views)


def create_method(name: str, **kwargs) -> Method:
    return _method_class(name).build(**kwargs)


register_method("standard", StandardMethod)
register_method("bcl", BCLMethod)
register_method("ncl", NCLMethod)
