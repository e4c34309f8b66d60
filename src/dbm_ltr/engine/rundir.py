"""The run directory: its files, which config differences a resumed run may have, its lock.

A run is a directory written by ``dbm-ltr train --out RUN``::

    RUN/config.yaml            the resolved configuration
    RUN/checkpoint.pt          the latest checkpoint (see :mod:`.checkpoint`), with
    RUN/checkpoint.prev.pt     the previous one and
    RUN/checkpoint.sha256      the digests of both
    RUN/log.jsonl              one line per finished epoch
    RUN/metrics.json           the final evaluation (written last: a run is finished when it exists)
    RUN/per_class_accuracy.png
    RUN/tb/                    TensorBoard events, when tensorboard is installed
    RUN/.lock                  held by the process training into RUN
    RUN/train.log              the process's output, when dbm-ltr reproduce started it
    RUN/slurm_job.json         the Slurm job that trains it (--launcher slurm)

Every tool that reads or writes runs (trainer, eval, analyze, report, sweep, reproduce) takes
these names and rules from here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import CHECKPOINT, CheckpointError, load_latest, previous_path, temporary_file
from .config import Config, ConfigError, config_from_dict, flatten_config, saved_config

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "LOCK",
    "LOG",
    "METRICS",
    "OUTPUT",
    "PER_CLASS_PLOT",
    "RECIPE_REVISIONS",
    "SLURM_JOB",
    "RESUMABLE_DIFFERENCES",
    "TENSORBOARD",
    "RunLock",
    "config_differences",
    "environment",
    "foreign_files",
    "has_checkpoint",
    "is_run_dir",
    "open_run",
    "recipe_revisions",
    "run_dir_error",
    "write_json",
    "write_log",
]

CONFIG = "config.yaml"
LOG = "log.jsonl"
METRICS = "metrics.json"
PER_CLASS_PLOT = "per_class_accuracy.png"
TENSORBOARD = "tb"
LOCK = ".lock"
OUTPUT = "train.log"  # the training process's output, where a tool that starts it keeps it (reproduce)
SLURM_JOB = "slurm_job.json"  # the Slurm job that trains the run (--launcher slurm)
RANK_OUTPUT = "train.rank{}.log"  # the output of a job's DDP process of that rank (> 0)
_RANK_OUTPUT = re.compile(re.escape(RANK_OUTPUT).replace(r"\{\}", r"\d+"))

#: Settings a resumed run may change: where the data lives, loader workers, device, logging,
#: compilation, how often it is evaluated. The run stays the same experiment; it is
#: bit-identical when workers and device are unchanged.
RESUMABLE_DIFFERENCES = frozenset(
    {
        "name",
        "paper",
        "data.root",
        "data.split_dir",
        "data.workers",
        "data.download",
        "data.eval_batch_size",
        "train.progress",
        "train.device",
        "train.compile",
        "train.compile_mode",
        "train.auto_resume",
        "train.eval_every",
    }
)


#: Revisions of the presets' recipe, ``setting: ((old value, new value), ...)``. A run started
#: with the old value continues with it when it is resumed from the revised preset (``dbm-ltr
#: train --config PRESET --resume``, ``reproduce``): the difference is named, not refused.
RECIPE_REVISIONS: dict[str, tuple[tuple[Any, Any], ...]] = {
    # CIFAR presets: the DBM code's cosine; GML: its CIFAR warm-up, its ImageNet cosine
    "optim.schedule": (("cosine", "cosine_reference"), ("step", "step_gml"), ("cosine_shifted", "cosine")),
    "data.autoaugment": (("torchvision", "reference"),),
    # GML at ImageNet scale: the GML code's views, its SyncBatchNorm; its teachers' loader
    "data.augment": (("", "imagenet_randaug"),),
    "data.augment_views": (([], ["imagenet_randaug", "imagenet_randaug_stack", "imagenet_randaug_stack"]),),
    "train.sync_bn": ((False, True),),
    "train.drop_last": ((False, True),),
}


def _flat_pair(saved: dict, now: dict) -> tuple[dict, dict]:
    return flatten_config(_with_defaults(saved_config(saved))), flatten_config(_with_defaults(now))


def config_differences(saved: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every setting (dotted key) that differs
    between a run's saved config and a resolved config, and that a resumed run may not change
    (neither a resumable setting nor a recipe revision, :data:`RECIPE_REVISIONS`)."""
    old, new = _flat_pair(saved, now)
    return [
        (k, old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if k not in RESUMABLE_DIFFERENCES
        and old.get(k) != new.get(k)
        and (old.get(k), new.get(k)) not in RECIPE_REVISIONS.get(k, ())
    ]


def recipe_revisions(saved: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for each recipe revision between a run's saved
    config and a resolved config: the run keeps its saved value."""
    old, new = _flat_pair(saved, now)
    return [
        (k, old.get(k), new.get(k))
        for k in RECIPE_REVISIONS
        if old.get(k) != new.get(k) and (old.get(k), new.get(k)) in RECIPE_REVISIONS[k]
    ]


def _with_defaults(values: dict) -> dict:
    """``values`` with every setting it lacks at its default (a run written before a setting
    existed trained with its default, or with its value in
    :data:`~dbm_ltr.engine.config.LEGACY_VALUES`, which :func:`saved_config` fills in first)."""
    try:
        return config_from_dict(values, check_values=False).to_dict()
    except (ConfigError, TypeError):
        return values


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (the latest or the previous one)."""
    path = Path(run_dir) / CHECKPOINT
    return path.exists() or previous_path(path).exists()


def open_run(
    run_dir: Path, config: Config, resume: bool, is_main: bool = True, log: Callable[[str], None] = print
) -> dict | None:
    """Whether ``config`` may train into ``run_dir``: ``None`` for a new run (an empty or new
    folder), or the checkpoint state to resume, whose config may differ from ``config`` only in
    resumable settings; a recipe revision (:data:`RECIPE_REVISIONS`) is set back in ``config``
    to the run's own value, and logged. :class:`CheckpointError` says why not, and what to do."""
    run_dir = Path(run_dir)
    if not resume:
        if has_checkpoint(run_dir):
            raise CheckpointError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        other = foreign_files(run_dir) if is_main and not is_run_dir(run_dir) else []
        if other:
            raise CheckpointError(
                f"{run_dir} exists and is not a run directory (it holds {', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''}); choose another --out (or an empty or new folder)"
            )
        return None
    if not has_checkpoint(run_dir):
        raise CheckpointError(
            f"nothing to resume in {run_dir} (no checkpoint); start the run with "
            f"dbm-ltr train --config CONFIG --out {run_dir}"
        )
    state, warning = load_latest(run_dir / CHECKPOINT)
    if warning:
        log(f"warning: {warning}")
    saved = state.get("config", {})
    diff = config_differences(saved, config.to_dict())
    if diff:
        shown = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diff[:4])
        raise CheckpointError(
            f"the checkpoint in {run_dir} was trained with a different config ({shown}); "
            f"resume with the run's own config ({run_dir / CONFIG}) or start a new --out"
        )
    revised = recipe_revisions(saved, config.to_dict())
    for key, old, _ in revised:  # the run goes on with the recipe it started with
        section, leaf = key.split(".")
        setattr(getattr(config, section), leaf, old)
    if revised:
        shown = ", ".join(f"{k} {a!r} (now {b!r})" for k, a, b in revised)
        log(f"note: {run_dir} was started before its preset's recipe was revised; it continues with its own: {shown}")
    return state


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a run (its config, a checkpoint or its metrics)."""
    path = Path(path)
    return any((path / name).is_file() for name in (CONFIG, CHECKPOINT, METRICS))


def foreign_files(path: str | Path) -> list[str]:
    """Files in ``path`` that no run writes before its checkpoint (a folder holding any is not
    a place to start a run)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(
        p.name for p in path.iterdir() if p.name not in (LOCK, OUTPUT, SLURM_JOB) and not _RANK_OUTPUT.fullmatch(p.name)
    )


def environment() -> dict[str, Any]:
    """What produced a run: package, PyTorch, torchvision and Python versions, and the git
    commit of the source when it is a git checkout (``-dirty`` with uncommitted changes)."""
    import platform

    import torch
    import torchvision

    from .. import __version__

    # plain strings (torch.__version__ is a str subclass the checkpoints' safe loader would refuse)
    return {
        "dbm_ltr": str(__version__),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON atomically (a temporary file renamed into place)."""
    _atomic_text(Path(path), json.dumps(value, indent=2))


def save_config(config: Config, path: Path) -> None:
    """Write a run's ``config.yaml`` atomically (a kill while writing leaves the previous file,
    which ``--resume`` without ``--config`` reads)."""
    _atomic_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def write_log(run_dir: Path, rows: Iterable[dict]) -> None:
    """Rewrite ``log.jsonl`` with ``rows`` (on resume: the checkpoint's history, so an epoch
    logged before a crash but not checkpointed is not listed twice)."""
    _atomic_text(Path(run_dir) / LOG, "".join(json.dumps(r) + "\n" for r in rows))


def _atomic_text(path: Path, text: str) -> None:
    tmp = temporary_file(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_dir_error(run_dir: Path, err: OSError, doing: str) -> CheckpointError:
    """One line for a filesystem error in a run directory: what failed, where, and what to do."""
    where = err.filename or run_dir
    return CheckpointError(
        f"cannot {doing} {where}: {err.strerror or err}; choose an --out folder you can write to "
        "(a new or empty folder, or a run to --resume)"
    )


def _same_file(handle, path: Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path`` (not one unlinked since)."""
    try:
        mine, now = os.fstat(handle.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


class RunLock:
    """An exclusive lock on a run directory (``RUN/.lock``), held while a process trains into
    it. It is an OS file lock (``flock``), so a killed process never leaves it stuck; where
    the OS has none (Windows) it does nothing. A directory the lock created is removed again on
    release when nothing but the lock was written into it (a run that failed to start)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._file = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this OS
            return self
        folder = self.path.parent
        missing = [p for p in [folder, *folder.parents] if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as err:
            raise run_dir_error(folder, err, "create the run directory") from None
        self._created = missing  # innermost first
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise CheckpointError(
                f"{self.path.parent} is in use by another dbm-ltr process (pid {holder}); wait for "
                f"it to finish or stop it, or choose another --out"
            ) from None
        if not _same_file(handle, self.path):  # the holder removed it as we opened it: start again
            handle.close()
            return self.acquire()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            # a run that never started leaves nothing behind: the lock file goes while still held
            empty = self._created and [p.name for p in self.path.parent.iterdir()] == [LOCK]
            if empty:
                self.path.unlink(missing_ok=True)
            self._file.close()  # closing the file releases the lock
            self._file = None
            if empty:
                for folder in self._created:
                    try:
                        folder.rmdir()
                    except OSError:
                        break
