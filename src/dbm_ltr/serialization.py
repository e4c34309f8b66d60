"""Reading pickled torch files without running code from them.

Every checkpoint and weights file dbm-ltr reads goes through :func:`safe_load`: PyTorch's
restricted unpickler (``torch.load(..., weights_only=True)``), which builds tensors, numbers,
strings, lists, tuples and dicts and calls nothing else. A file that asks for more (a pickled
object whose loading would call a function, e.g. ``os.system``) is refused with
:class:`~dbm_ltr.errors.UnsafeCheckpointError` and nothing of it runs. Only after
:func:`trust_checkpoints` (the command line's ``--trust-checkpoint``, for files one has made
oneself) does a refused file get PyTorch's full unpickler.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .errors import UnsafeCheckpointError

__all__ = ["safe_load", "trust_checkpoints", "trusted", "trusting_checkpoints"]

_trusted = False  # trust_checkpoints
_open_blocks = 0  # trusting_checkpoints blocks now open, in any thread
_blocks_lock = threading.Lock()


def trust_checkpoints(enabled: bool = True) -> None:
    """Let every later read fall back to the full unpickler for files the restricted one
    refuses: only for checkpoints you made yourself, since a pickle can run any code. For one
    piece of work, :func:`trusting_checkpoints` (what ``--trust-checkpoint`` uses) ends it."""
    global _trusted
    _trusted = bool(enabled)


@contextlib.contextmanager
def trusting_checkpoints() -> Iterator[None]:
    """:func:`trust_checkpoints` for the ``with`` block only, also when the block fails (a
    command run through ``cli.main`` in a notebook leaves later reads restricted). Blocks may
    overlap (threads): reads are trusted while any of them is open.

    Example:
        >>> with trusting_checkpoints():
        ...     trusted()
        True
        >>> trusted()
        False
    """
    global _open_blocks
    with _blocks_lock:
        _open_blocks += 1
    try:
        yield
    finally:
        with _blocks_lock:
            _open_blocks -= 1


#: What checkpoints of format 1-2 need beyond the restricted unpickler: NumPy's array
#: reconstruction (its random state) and NumPy scalars.
_LEGACY_PREFIXES = ("numpy.", "numpy._core.", "numpy.core.")


def trusted() -> bool:
    """Whether :func:`trust_checkpoints` or a :func:`trusting_checkpoints` block is in effect
    (a command passes it on to its subprocesses)."""
    return _trusted or _open_blocks > 0


def _unsafe_globals(data: bytes, err: Exception) -> list[str]:
    """The globals a refused pickle asks for (best effort: PyTorch's scan, else its message)."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:
        try:
            return list(scan(io.BytesIO(data)))
        except Exception:  # noqa: BLE001 - a damaged file: fall back to the message
            pass
    return re.findall(r"GLOBAL ([\w.]+)", str(err))[:1]


def safe_load(data: bytes, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` of ``data`` with the restricted unpickler (weights only).

    A file that needs other globals (a pickled object whose loading would call a function) is
    refused with :class:`UnsafeCheckpointError`, one line naming ``what`` and what it asked
    for, unless :func:`trust_checkpoints` was called. Other failures propagate unchanged.
    """
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise
        wanted = _unsafe_globals(data, err)
        if not wanted and "unsupported global" not in str(err).lower():  # a damaged or foreign file
            detail = str(err).partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0]
            raise pickle.UnpicklingError(" ".join(detail.split()) or str(err).splitlines()[0]) from err
        if trusted():
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
        shown = ", ".join(wanted[:3]) + (", ..." if len(wanted) > 3 else "") or "a Python object"
        if wanted and all(g.startswith(_LEGACY_PREFIXES) for g in wanted):
            raise UnsafeCheckpointError(
                f"{what} was written by an earlier dbm-ltr (it keeps NumPy objects: {shown}), which the "
                "safe loader does not read; if you made it yourself, rerun with --trust-checkpoint "
                "(resuming then rewrites it in the safe format)"
            ) from None
        raise UnsafeCheckpointError(
            f"{what} may contain code and was not loaded: it asks for {shown}, which the safe loader "
            "refuses; use --trust-checkpoint only for a file you made yourself"
        ) from None
