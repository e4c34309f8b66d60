"""dbm-ltr: the Difficulty-aware Balancing Margin loss for long-tailed recognition."""

from .losses import (
    BalancedLoss,
    DBMLoss,
    LDAMLoss,
    class_balanced_weights,
    class_margins,
    create_loss,
    log_prior,
)
from .nn import CosineClassifier

__version__ = "0.1.0"

__all__ = [
    "BalancedLoss",
    "CosineClassifier",
    "DBMLoss",
    "LDAMLoss",
    "class_balanced_weights",
    "class_margins",
    "create_loss",
    "log_prior",
]
