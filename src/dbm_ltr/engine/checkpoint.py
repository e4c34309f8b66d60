"""Checkpoints that survive faults: atomic, checksummed, with the previous one kept.

A run directory holds ``checkpoint.pt`` (the latest), ``checkpoint.prev.pt`` (the one before)
and ``checkpoint.sha256`` (JSON: the SHA-256 of both). :func:`save_checkpoint` serialises the
state in memory, writes it to a temporary file in the same folder and fsyncs it, records the
new digest next to the current one, then renames the current file to ``.prev`` and the
temporary file into place. A process killed at any moment therefore leaves a checkpoint whose
digest is recorded: the latest, or the previous one. A full disk or an unwritable folder fails
before anything is replaced. :func:`load_latest` verifies the digest before use and falls back
to the previous checkpoint, with a warning, when the latest is missing, truncated or damaged.

Reading a checkpoint never runs code from it: every read goes through PyTorch's restricted
unpickler (``torch.load(..., weights_only=True)``), which builds tensors, numbers, strings,
lists, tuples and dicts and nothing else; a checkpoint holds only those (the NumPy random
state is kept as a tensor and numbers). A file that needs anything more is refused in one
line (:class:`UnsafeCheckpointError`) and none of it is executed. Checkpoints of earlier
versions (format 1-2) kept NumPy's random state as an array, which the restricted unpickler
does not build: they load only after an explicit :func:`trust_checkpoints` (the command
line's ``--trust-checkpoint``), meant for files one has made oneself.
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

from ..errors import CheckpointError, MissingDependencyError, UnsafeCheckpointError
from ..serialization import safe_load, trust_checkpoints, trusting_checkpoints

__all__ = [
    "CHECKPOINT",
    "CheckpointError",
    "FORMAT_VERSION",
    "UnsafeCheckpointError",
    "capture_rng",
    "export_weights",
    "load_checkpoint",
    "load_latest",
    "load_weights",
    "previous_path",
    "restore_rng",
    "safe_load",
    "save_checkpoint",
    "trust_checkpoints",
    "trusting_checkpoints",
]

FORMAT_VERSION = 3  # 3: RNG states in plain types (the restricted unpickler reads every part)
READABLE_VERSIONS = (1, 2, 3)
CHECKPOINT = "checkpoint.pt"
DIGESTS = "checkpoint.sha256"


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


def atomic_write(path: Path, data: bytes) -> None:
    tmp = temporary_file(path)
    try:
        _write_file(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: What to do about a run checkpoint that fails its digest or does not unpickle.
DAMAGED_ADVICE = "delete it and rerun without --resume, or resume from an intact copy"


def _write_error(path: Path, err: OSError, epoch: Any) -> CheckpointError:
    reason = (
        "the disk is full"
        if err.errno == errno.ENOSPC
        else ("the folder is not writable" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else str(err))
    )
    kept = f"the previous checkpoint ({path}) is intact" if path.exists() else "no earlier checkpoint exists"
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
            # the new digest is recorded before any rename: whichever file a kill leaves in
            # place has its digest on record. The file about to become .prev is hashed, not
            # taken from the record: a save killed after its digest was written names a file
            # that never replaced this one.
            current = _file_digest(path) if path.exists() else None
            atomic_write(_digests_path(path), json.dumps({"latest": digest, "previous": current}).encode())
            if path.exists():
                os.replace(path, previous)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        raise _write_error(path, err, state.get("epoch")) from None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_run_checkpoint(path: Path) -> bool:
    """Whether ``path`` is one of the two checkpoint files a run directory keeps digests of."""
    return path.name in (CHECKPOINT, previous_path(Path(CHECKPOINT)).name)


def _verified_bytes(path: Path) -> bytes:
    """The file's bytes, if its digest is on record (or no digests are kept beside it)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.suffix in (".json", ".yaml", ".yml", ".jsonl", ".png", ".log"):
        raise CheckpointError(
            f"{path} is a run's {path.name}, not a checkpoint; give the run directory ({path.parent}) or its "
            f"{CHECKPOINT}"
        )
    data = path.read_bytes()
    known = {v for v in _read_digests(path).values() if v} if _is_run_checkpoint(path) else set()
    if known and hashlib.sha256(data).hexdigest() not in known:
        raise CheckpointError(
            f"{path} is damaged or truncated (its SHA-256 does not match {_digests_path(path).name}); {DAMAGED_ADVICE}"
        )
    return data


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read one checkpoint file, verified against its recorded digest when there is one."""
    path = Path(path)
    data = _verified_bytes(path)
    try:
        state = safe_load(data, str(path), map_location)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        if isinstance(err, UnsafeCheckpointError):
            raise
        advice = (
            f"it may be truncated or corrupted; {DAMAGED_ADVICE}"
            if _is_run_checkpoint(path)
            else f"give a run directory or the {CHECKPOINT} that dbm-ltr train wrote"
        )
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:300]}); {advice}"
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
        problem = str(latest_error).removesuffix(f"; {DAMAGED_ADVICE}")
        try:
            state = load_checkpoint(previous, map_location)
        except CheckpointError as previous_error:
            raise CheckpointError(f"{problem}, and the previous one cannot stand in: {previous_error}") from None
        return (
            state,
            f"{problem}; using the previous checkpoint {previous.name} (after epoch {state.get('epoch')}) instead",
        )


def capture_rng() -> dict[str, Any]:
    """The Python, NumPy, torch (and CUDA) random states in types the restricted unpickler
    reads: tuples, numbers, strings and tensors."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng`'s states (or those of a format 1-2 checkpoint)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        numpy = (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per device the saving process saw; a resumed run may see fewer (or more)
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)


#: The metadata key of an exported weights file (a JSON object: format, config, class counts).
WEIGHTS_METADATA = "dbm_ltr"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise MissingDependencyError(
            "exported weights are safetensors files: install the package with pip install 'dbm-ltr[safetensors]'"
        ) from None
    return safetensors.torch


def export_weights(state: dict[str, Any], path: str | Path) -> Path:
    """Write a checkpoint's method weights to a safetensors file (no pickle), with what is
    needed to rebuild the model in its metadata: the config (YAML), the class counts and the
    epoch. :func:`load_weights` reads it back as a state for ``restore_method``."""
    import yaml

    st = _safetensors()
    missing = [k for k in ("config", "method", "cls_num_list", "epoch") if k not in state]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)}; it was not written by dbm-ltr train")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state["method"].items()}
    meta = {
        "classes": [str(c) for c in state.get("classes") or []],
        "format": "dbm-ltr weights",
        "version": 1,
        "epoch": int(state["epoch"]),
        "cls_num_list": [int(n) for n in state["cls_num_list"]],
        "config": yaml.safe_dump(state["config"], sort_keys=False),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path)
    try:
        mode = os.stat(tmp).st_mode  # safetensors writes its files private; keep the usual mode
        st.save_file(tensors, tmp, metadata={WEIGHTS_METADATA: json.dumps(meta)})
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_weights(path: str | Path) -> dict[str, Any]:
    """An exported weights file (:func:`export_weights`) as a checkpoint-like state: ``config``,
    ``method`` (the tensors), ``cls_num_list``, ``epoch``, ``final``. Reading it runs no code."""
    import yaml

    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = st.load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file is one message
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''})"
        ) from None
    try:
        meta = json.loads(metadata[WEIGHTS_METADATA])
        config = yaml.safe_load(meta["config"])
        state = {
            "config": config,
            "method": tensors,
            "cls_num_list": [int(n) for n in meta["cls_num_list"]],
            "epoch": int(meta["epoch"]),
            "classes": list(meta.get("classes") or []),
            "final": True,
        }
    except (KeyError, TypeError, ValueError, yaml.YAMLError):
        raise CheckpointError(
            f"{path} holds no dbm-ltr metadata; write one with dbm-ltr export RUN --out {path.name}"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its dbm-ltr metadata holds no config")
    return state
