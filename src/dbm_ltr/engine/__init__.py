"""The training engine: validated config, one trainer for every method, schedules,
atomic checkpoints with exact resume, and torchrun/DDP support.

The names below are imported on first use, so importing a light module of the engine (its
config, its signals) does not load PyTorch.
"""

from importlib import import_module

_EXPORTS = {
    "CheckpointError": ".checkpoint",
    "Config": ".config",
    "ConfigError": ".config",
    "Trainer": ".trainer",
    "TrainingError": ".trainer",
    "build_method": ".build",
    "config_from_dict": ".config",
    "evaluate_method": ".evaluation",
    "learning_rate": ".schedules",
    "load_checkpoint": ".checkpoint",
    "load_config": ".config",
    "save_checkpoint": ".checkpoint",
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
