"""dbm-ltr: the Difficulty-aware Balancing Margin loss for long-tailed recognition.

The public names below are imported on first use, so ``import dbm_ltr`` (and the command
line's ``--help``) does not load PyTorch.
"""

from dbm_ltr._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BalancedLoss": ".losses",
    "CosineClassifier": ".nn",
    "DBMLoss": ".losses",
    "LDAMLoss": ".losses",
    "class_balanced_weights": ".losses",
    "class_margins": ".losses",
    "create_loss": ".losses",
    "log_prior": ".losses",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
