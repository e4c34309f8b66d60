"""Methods by name: how a method turns a batch into a loss and images into predictions.

``create_method(name, trunk=..., classifier=..., num_classes=..., cls_num_list=..., loss=...,
loss_name=..., **params)``; ``params`` are the method's own hyper-parameters (see
:func:`method_parameters`).
"""

from __future__ import annotations

from ..registry import Registry, keyword_defaults
from .base import COMMON_ARGS, Method, StepOutput, check_head_matches_loss
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
    "method_parameters",
    "method_views",
    "register_method",
]

#: Method classes by name. A class provides ``build(*, trunk, classifier, num_classes,
#: cls_num_list, loss, loss_name, **params)``, a classmethod that builds its models and passes
#: ``params`` (the constructor's keyword parameters, whose defaults live there only) on, and
#: ``views``. A ``teacher`` parameter names a finished run the engine loads and checks
#: (:func:`dbm_ltr.engine.build.load_teacher`) and passes on as its checkpoint state.
METHODS = Registry("method")
register_method = METHODS.register


def method_parameters(name: str) -> dict:
    """The method's own keyword parameters with their defaults: those of its constructor,
    and those only its ``build`` takes (e.g. NCL's ``num_experts``)."""
    cls = METHODS.lookup(name)
    return {**keyword_defaults(cls.__init__), **keyword_defaults(cls.build, COMMON_ARGS)}


def method_views(name: str) -> tuple[str, ...]:
    """The training views of method ``name`` (known before the method is built)."""
    return tuple(METHODS.lookup(name).views)


def create_method(name: str, **kwargs) -> Method:
    return METHODS.lookup(name).build(**kwargs)


register_method("standard", StandardMethod)
register_method("bcl", BCLMethod)
register_method("ncl", NCLMethod)
register_method("gml", GMLMethod)
