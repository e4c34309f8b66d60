"""dbm-ltr: the Difficulty-aware Balancing Margin loss for long-tailed recognition.

The public names below are imported on first use, so ``import dbm_ltr`` (and the command
line's ``--help``) does not load PyTorch.
"""

from importlib import import_module

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
