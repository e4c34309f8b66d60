"""Methods by name: how a method turns a batch into a loss and images into predictions.

``create_method(name, trunk=..., classifier=..., num_classes=..., cls_num_list=..., loss=...,
loss_name=..., **params)``; ``params`` are the method's own hyper-parameters (see
:func:`method_parameters`).
"""

from __future__ import annotations

import inspect

from ..registry import Registry
from .base import Method, StepOutput, check_head_matches_loss
from .bcl import BCLMethod
from .gml import GMLMethod
from .ncl import NCLMethod
from .standard import StandardMethod

__all__ = [
    "BCLMethod",
    "GMLMethod",
    "METHODS",
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
COMMON_ARGS = (
    "trunk", "classifier", "num_classes", "cls_num_list", "loss", "loss_name", "data_name",
    "imbalance_factor", "data_seed",
)

#: Method classes by name. A class provides ``build(*, trunk, classifier, num_classes,
#: cls_num_list, loss, loss_name, **params)`` (a classmethod that accepts and ignores further
#: keyword arguments, ``**_``, so the engine can pass new common ones: ``data_name``,
#: ``imbalance_factor``, ``data_seed`` of the training set) and ``views``.
METHODS = Registry("method")
register_method = METHODS.register
list_methods = METHODS.names


def method_parameters(name: str) -> dict:
    """The method's own keyword parameters with their defaults."""
    params = inspect.signature(METHODS.lookup(name).build).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.name not in COMMON_ARGS and p.default is not p.empty and p.kind is not p.VAR_KEYWORD
    }


def method_views(name: str) -> tuple[str, ...]:
    """The training views of method ``name`` (known before the method is built)."""
    return tuple(METHODS.lookup(name).views)


def create_method(name: str, **kwargs) -> Method:
    return METHODS.lookup(name).build(**kwargs)


register_method("standard", StandardMethod)
register_method("bcl", BCLMethod)
register_method("ncl", NCLMethod)
register_method("gml", GMLMethod)
