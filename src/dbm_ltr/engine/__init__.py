"""The training engine: validated config, one trainer for every method, schedules,
atomic checkpoints with exact resume, and torchrun/DDP support.

The names below are imported on first use, so importing a light module of the engine (its
config, its signals) does not load PyTorch.
"""

from dbm_ltr._lazy import lazy_exports

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

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
