"""Reading run directories (written by ``dbm-ltr train --out RUN``) with one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..engine.config import saved_config
from ..engine.rundir import CHECKPOINT, CONFIG, METRICS, is_run_dir
from ..errors import DbmLtrError

__all__ = [
    "RunError",
    "check_run_dir",
    "read_metrics",
    "read_run_config",
    "run_labels",
]


class RunError(DbmLtrError, ValueError):
    """A folder that cannot be used as a run directory; the message names it and says why."""


def check_run_dir(run_dir: str | Path, need: Sequence[str] = (CHECKPOINT,)) -> Path:
    """``run_dir`` as a :class:`Path` if it is a run directory holding the files in ``need``.

    Raises:
        RunError: the folder does not exist, is not a run directory (none of
            ``config.yaml``, ``checkpoint.pt``, ``metrics.json``), or lacks a needed file.
    """
    path = Path(run_dir)
    if not path.exists():
        raise RunError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunError(f"{path} is not a directory; pass the run directory written by dbm-ltr train --out")
    if not is_run_dir(path):
        raise RunError(
            f"{path} is not a run directory (no {CONFIG}, {CHECKPOINT} or {METRICS}); "
            "create one with: dbm-ltr train --config PRESET --out DIR"
        )
    for name in need:
        if not (path / name).is_file():
            hint = {
                METRICS: f"the run has not finished; finish it with: dbm-ltr train --out {path} --resume",
                CHECKPOINT: "the trained weights are needed; the run directory is incomplete",
                CONFIG: "the run's resolved config is needed",
            }.get(name, "")
            raise RunError(f"{path} has no {name}" + (f" ({hint})" if hint else ""))
    return path


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``metrics.json`` (final-epoch evaluation)."""
    path = check_run_dir(run_dir, need=(METRICS,)) / METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is not readable JSON ({type(err).__name__}: {str(err)[:100]})") from None
    if not isinstance(metrics, dict) or "top1" not in metrics:
        raise RunError(f"{path} is not a metrics file written by dbm-ltr train (no 'top1')")
    return metrics


def read_run_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` as a nested dict (settings it predates at the values it trained
    with, :func:`~dbm_ltr.engine.config.saved_config`), or ``None`` if the run has none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunError(f"{path} is not readable YAML ({type(err).__name__})") from None
    if not isinstance(values, dict):
        raise RunError(f"{path} is not a config (not a mapping)")
    return saved_config(values)


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Short unique names for runs: the folder name, with parent folders added where two
    runs share it (``seed0/run`` vs ``seed1/run``)."""
    paths = [Path(p).resolve() for p in run_dirs]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
            break
        depth += 1
    if len(set(labels)) != len(labels):  # the same folder given twice
        labels = [f"{label}#{k + 1}" for k, label in enumerate(labels)]
    return labels
