"""Losses: pure functions and small ``nn.Module`` s, no data and no engine.

Losses are created by name from a registry so that a config can name them::

    crit = create_loss("dbm", cls_num_list, base="bs", max_margin=0.1)

Built-in names: ``ce``, ``cb``, ``drw``, ``bs`` (:class:`BalancedLoss` on linear logits),
``dbm`` (:class:`DBMLoss`) and ``ldam`` (:class:`LDAMLoss`), both on raw cosines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..registry import Registry, keyword_defaults
from .balanced import (
    BASES,
    BalancedLoss,
    class_balanced_weights,
    class_counts,
    drw_phase,
    log_prior,
)
from .ldam import LDAMLoss, ldam_margins
from .margins import (
    INSTANCE_MARGINS,
    OVERFLOW_MODES,
    DBMLoss,
    MarginLoss,
    class_margins,
    dbm_target_cosine,
    hard_positive_mask,
)

__all__ = [
    "BASES",
    "INSTANCE_MARGINS",
    "LOSSES",
    "OVERFLOW_MODES",
    "BalancedLoss",
    "DBMLoss",
    "LDAMLoss",
    "MarginLoss",
    "class_balanced_weights",
    "class_counts",
    "class_margins",
    "create_loss",
    "dbm_target_cosine",
    "drw_phase",
    "hard_positive_mask",
    "ldam_margins",
    "log_prior",
    "loss_input",
    "loss_parameters",
    "register_loss",
]

LossFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    factory: LossFactory
    fixed: dict  # keyword arguments the name fixes (e.g. base="drw")
    params: tuple | None  # the keyword arguments a config may set (None: all of the factory's)

    def __call__(self, cls_num_list, **kwargs) -> nn.Module:
        return self.factory(cls_num_list, **self.fixed, **kwargs)


#: Losses by name (entries call ``factory(cls_num_list, **fixed, **kwargs)``).
LOSSES = Registry("loss")


def register_loss(
    name: str,
    factory: LossFactory | None = None,
    *,
    fixed: dict | None = None,
    params: tuple | None = None,
):
    """Register ``factory(cls_num_list, **kwargs) -> nn.Module`` under ``name``.

    Usable as a decorator. ``fixed`` are keyword arguments the name implies; ``params``
    restricts which keyword arguments a config may set. The module should have an attribute
    ``input_kind`` (``"logits"`` or ``"cosine"``) saying what its ``forward`` expects.
    """

    def add(f: LossFactory) -> LossFactory:
        LOSSES.register(name, _Entry(f, dict(fixed or {}), params))
        return f

    return add(factory) if factory is not None else add


def loss_parameters(name: str) -> dict:
    """The keyword parameters a config may set for loss ``name``, with their defaults."""
    entry = LOSSES.lookup(name)
    return {
        k: v
        for k, v in keyword_defaults(entry.factory, entry.fixed).items()
        if entry.params is None or k in entry.params
    }


def create_loss(name: str, cls_num_list: Sequence[int] | torch.Tensor, **kwargs) -> nn.Module:
    """Build the loss registered as ``name`` for the given training counts."""
    entry = LOSSES.lookup(name)
    accepted = loss_parameters(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} does not take {', '.join(unknown)}; it accepts "
            f"{', '.join(sorted(accepted)) or 'no parameters'}"
        )
    return entry(cls_num_list, **kwargs)


def loss_input(loss: nn.Module) -> str:
    """``"cosine"`` if ``loss`` expects raw cosines, else ``"logits"``."""
    return getattr(loss, "input_kind", "logits")


BalancedLoss.input_kind = "logits"
MarginLoss.input_kind = "cosine"
register_loss("ce", BalancedLoss, fixed={"base": "ce"}, params=())
register_loss("cb", BalancedLoss, fixed={"base": "cb"}, params=("cb_beta",))
register_loss("drw", BalancedLoss, fixed={"base": "drw"}, params=("drw_epoch", "cb_beta"))
register_loss("bs", BalancedLoss, fixed={"base": "bs"}, params=())
register_loss("dbm", DBMLoss)
register_loss("ldam", LDAMLoss)
