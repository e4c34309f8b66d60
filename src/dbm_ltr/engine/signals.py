"""Stopping a run cleanly: SIGINT / SIGTERM ask the training loop to stop at the next step,
which writes a checkpoint and raises :class:`Interrupted`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

__all__ = ["Interrupted", "StopSignals"]


class Interrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, run_dir: Path, where: str) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} {where}; checkpoint written; continue with: dbm-ltr train --out {run_dir} --resume"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """SIGINT / SIGTERM handlers for the length of a ``with`` block: the first signal asks
    the loop to stop at the next step boundary; a second one stops at once
    (``KeyboardInterrupt``). Nothing is installed outside the main thread, nor under
    torchrun: its agent stops workers with SIGTERM to restart them, and a worker that lingers
    breaks the next rendezvous, so there a worker stops at once and the run resumes from its
    last epoch checkpoint (``train.auto_resume``)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.signum = 0
        self.enabled = enabled
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
