"""What a Slurm job of ``--launcher slurm`` runs (:mod:`dbm_ltr.experiments.slurm` submits it).

Only the standard library at import: submitit unpickles the job in a process of its own before
it starts training, and loading PyTorch there as well would cost every job seconds of CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TrainJob"]


class TrainJob:
    """The job's function (pickled by submitit): ``dbm-ltr train ARGS`` as a child process,
    with ``--resume`` where one of ``checkpoints`` exists, its output appended to ``output`` in
    the run directory (``rank_output`` formatted with the rank for the other DDP processes).

    submitit's preemption / time-limit signal (``USR2``) reaches :meth:`checkpoint`, which stops
    the child with SIGTERM (the engine writes a mid-epoch checkpoint) and hands submitit this job
    again to requeue; the requeued job resumes from the checkpoint. The child ignores ``USR2``
    itself, which Slurm sends to every process of the job."""

    def __init__(
        self, run_dir: str, train_args: Sequence[str], checkpoints: Sequence[str], output: str, rank_output: str
    ) -> None:
        self.run_dir = str(run_dir)
        self.train_args = list(train_args)
        self.checkpoints = list(checkpoints)
        self.output, self.rank_output = output, rank_output
        self._child: subprocess.Popen | None = None

    def _arguments(self) -> tuple:
        return self.run_dir, self.train_args, self.checkpoints, self.output, self.rank_output

    def __getstate__(self) -> tuple:
        return self._arguments()

    def __setstate__(self, state: tuple) -> None:
        self.__init__(*state)

    def __call__(self) -> str:
        rank = 0
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # several tasks: the engine's DDP processes
            import submitit

            # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from Slurm's task ids, as torchrun sets them
            rank = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False).rank
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        resume = any(Path(p).exists() for p in self.checkpoints)
        log = run_dir / (self.output if rank == 0 else self.rank_output.format(rank))
        with open(log, "a") as handle:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "dbm_ltr.cli", "train", *self.train_args, *(["--resume"] if resume else [])],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_ignore_usr2,
            )
            while (code := self._child.poll()) is None:  # not wait(): its lock would block checkpoint()
                time.sleep(0.5)
        if code != 0:
            raise RuntimeError(f"dbm-ltr train exited with {code}; its output: {log}")
        return self.run_dir

    def checkpoint(self, *args, **kwargs):
        import submitit

        child = self._child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGTERM)  # the engine stops at the next step with a checkpoint
            # waitpid, not child.wait(): this runs in a signal handler that may have interrupted
            # a call holding the Popen's lock
            while True:
                try:
                    if os.waitpid(child.pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:  # already reaped
                    break
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(TrainJob(*self._arguments()))


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
