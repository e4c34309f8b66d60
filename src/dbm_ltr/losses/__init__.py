"""Losses: pure functions and small ``nn.Module`` s, no data and no engine.

Losses are created by name from a registry so that a config can name them::

    crit = create_loss("dbm", cls_num_list, base="bs", max_margin=0.1)

Built-in names: ``ce``, ``cb``, ``drw``, ``bs`` (:class:`BalancedLoss` on linear logits),
``dbm`` (:class:`DBMLoss`) and ``ldam`` (:class:`LDAMLoss`), both on raw cosines.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

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
    "list_losses",
    "log_prior",
    "loss_input",
    "register_loss",
]

LossFactory = Callable[..., nn.Module]
_LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str, factory: LossFactory | None = None):
    """Register ``factory(cls_num_list, **kwargs) -> nn.Module`` under ``name``.

    Usable as a decorator. The module should have an attribute ``input_kind``
    (``"logits"`` or ``"cosine"``) saying what its ``forward`` expects.
    """

    def add(f: LossFactory) -> LossFactory:
        if name in _LOSSES:
            raise ValueError(f"a loss named {name!r} is already registered")
        _LOSSES[name] = f
        return f

    return add(factory) if factory is not None else add


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def create_loss(name: str, cls_num_list: Sequence[int] | torch.Tensor, **kwargs) -> nn.Module:
    """Build the loss registered as ``name`` for the given training counts."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(list_losses())}")
    try:
        return _LOSSES[name](cls_num_list, **kwargs)
    except TypeError as err:  # unexpected keyword
        raise ValueError(f"loss {name!r}: {err}") from None


def loss_input(loss: nn.Module) -> str:
    """``"cosine"`` if ``loss`` expects raw cosines, else ``"logits"``."""
    return getattr(loss, "input_kind", "logits")


BalancedLoss.input_kind = "logits"
MarginLoss.input_kind = "cosine"
for _base in BASES:
    register_loss(_base, lambda counts, _b=_base, **kw: BalancedLoss(counts, base=_b, **kw))
register_loss("dbm", DBMLoss)
register_loss("ldam", LDAMLoss)
