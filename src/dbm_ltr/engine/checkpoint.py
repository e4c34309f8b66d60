"""Checkpoints that survive faults: atomic, checksummed, with the previous one kept.

A run directory holds ``checkpoint.pt`` (the latest), ``checkpoint.prev.pt`` (the one before)
and ``checkpoint.sha256`` (JSON: the SHA-256 of both). :func:`save_checkpoint` serialises the
state in memory, writes it to a temporary file in the same folder and fsyncs it, records the
new digest next to the current one, then renames the current file to ``.prev`` and the
temporary file into place. A process killed at any moment therefore leaves a checkpoint whose
digest is recorded: the latest, or the previous one. A full disk or an unwritable folder fails
before anything is replaced. :func:`load_latest` verifies the digest before use and falls back
to the previous checkpoint, with a warning, when the latest is missing, truncated or damaged.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DbmLtrError

__all__ = [
    "CHECKPOINT",
    "CheckpointError",
    "FORMAT_VERSION",
    "capture_rng",
    "load_checkpoint",
    "load_latest",
    "previous_path",
    "restore_rng",
    "save_checkpoint",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CHECKPOINT = "checkpoint.pt"
DIGESTS = "checkpoint.sha256"


class CheckpointError(DbmLtrError, RuntimeError):
    """A checkpoint that cannot be used or written, or a run directory that cannot be trained
    into; the message says why and what to do."""


def previous_path(path: Path) -> Path:
    """``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _digests_path(path: Path) -> Path:
    """The digests file shared by ``X.pt`` and ``X.prev.pt`` (``checkpoint.sha256`` for a run)."""
    name = path.name.replace(".prev.", ".")
    return path.with_name(DIGESTS) if name == CHECKPOINT else path.with_name(f"{name}.sha256")


def _read_digests(path: Path) -> dict[str, str]:
    try:
        values = json.loads(_digests_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def temporary_file(path: Path) -> str:
    """A new temporary file beside ``path`` (for an atomic rename onto it), with the
    permissions of any file this process creates (``mkstemp`` would make it private)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    return tmp


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the one place checkpoint bytes hit the disk)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = temporary_file(path)
    try:
        _write_file(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_error(path: Path, err: OSError, epoch: Any) -> CheckpointError:
    reason = "the disk is full" if err.errno == errno.ENOSPC else (
        "the folder is not writable" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else str(err))
    kept = (f"the previous checkpoint ({path}) is intact" if path.exists()
            else "no earlier checkpoint exists")
    return CheckpointError(
        f"could not write the checkpoint of epoch {epoch} to {path.parent}: {reason} "
        f"({err.strerror or err}); {kept}. Free space or fix the folder, then resume with "
        f"dbm-ltr train --out {path.parent} --resume"
    )


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically, keeping the previous file as ``.prev`` and both
    digests in ``checkpoint.sha256``; on a write failure nothing is replaced and
    :class:`CheckpointError` says what failed."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    previous = previous_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*path.parent.glob(f".{path.name}.*.tmp"), *path.parent.glob(f".{DIGESTS}.*.tmp")]:
            stale.unlink(missing_ok=True)  # left by a process killed while writing
        tmp = temporary_file(path)
        try:
            _write_file(Path(tmp), data)
            known = _read_digests(path)
            # the new digest is recorded before any rename: whichever file a kill leaves in
            # place has its digest on record
            _atomic_write(_digests_path(path), json.dumps(
                {"latest": digest, "previous": known.get("latest")}
            ).encode())
            if path.exists():
                os.replace(path, previous)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        raise _write_error(path, err, state.get("epoch")) from None


def _verified_bytes(path: Path) -> bytes:
    """The file's bytes, if its digest is on record (or no digests are kept beside it)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    known = {v for v in _read_digests(path).values() if v}
    if known and hashlib.sha256(data).hexdigest() not in known:
        raise CheckpointError(
            f"{path} is damaged or truncated (its SHA-256 does not match {_digests_path(path).name})"
        )
    return data


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint file, verified against its recorded digest when there is one."""
    path = Path(path)
    data = _verified_bytes(path)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:300]}); "
            "it may be truncated or corrupted: delete it and rerun without --resume, or resume "
            "from an intact copy"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} was not written by this version of dbm-ltr (format "
            f"{state.get('format_version') if isinstance(state, dict) else 'unknown'}, expected "
            f"{FORMAT_VERSION})"
        )
    return state


def load_latest(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], str]:
    """``(state, warning)``: the latest checkpoint, or the previous one when the latest is
    missing or damaged (``warning`` then says so; ``""`` otherwise)."""
    path = Path(path)
    try:
        return load_checkpoint(path, map_location), ""
    except CheckpointError as latest_error:
        previous = previous_path(path)
        if not previous.is_file():
            raise
        try:
            state = load_checkpoint(previous, map_location)
        except CheckpointError:
            raise latest_error from None
        return state, (f"{latest_error}; using the previous checkpoint {previous.name} "
                       f"(after epoch {state.get('epoch')}) instead")


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
