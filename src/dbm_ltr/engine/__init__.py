"""The training engine: validated config, one trainer for every method, schedules,
atomic checkpoints with exact resume, and torchrun/DDP support."""

from .build import build_method
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Config, ConfigError, config_from_dict, load_config
from .evaluation import evaluate_method
from .schedules import learning_rate
from .trainer import Trainer, TrainingError

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "Trainer",
    "TrainingError",
    "build_method",
    "config_from_dict",
    "evaluate_method",
    "learning_rate",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
]
