"""``--launcher slurm``: the runs of ``reproduce`` and ``sweep`` as Slurm jobs, submitted through
submitit.

Each run is one job running ``dbm-ltr train`` into its run directory (its output in
``RUN/train.log``, its job id in ``RUN/slurm_job.json``); the runs submitted together form one
job array, at most ``--slurm-max-jobs`` of them running at a time. A job with several GPUs gets
one task per GPU (or ``--slurm-tasks``), and each task trains as one process of the engine's
DDP (ranks from Slurm's task ids, the address of the job's first node). Runs that distil a
teacher are submitted after it, with ``--dependency=afterok`` on the teacher's job; a job runs
:class:`~dbm_ltr.experiments.slurm_job.TrainJob`.

Preemption and time limits: submitit asks Slurm for ``USR2`` 90 s before the time limit and
treats ``USR2`` as preemption; the job then stops its training with a mid-epoch checkpoint
(SIGTERM to the engine) and requeues itself, and the requeued job resumes exactly. Repeating
the command skips finished runs, leaves pending and running jobs alone, resubmits failed or
vanished ones, and waits for all of them before it writes the report; ``--collect`` reports
what has finished without submitting or waiting.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.checkpoint import CHECKPOINT, previous_path
from ..engine.rundir import LOG, METRICS, OUTPUT, RANK_OUTPUT, SLURM_JOB
from ..errors import ConfigError, MissingDependencyError
from .slurm_job import TrainJob

__all__ = [
    "JobSpec",
    "SlurmOptions",
    "check_slurm",
    "job_states",
    "parse_time",
    "run_on_slurm",
    "train_job",
]

#: How often one run may reach a job's time limit and be requeued (each time it resumes from a
#: mid-epoch checkpoint, so it always gets further); submitit's own default is 3.
MAX_TIME_LIMITS = 100
ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "STAGE_OUT",
    "SIGNALING",
    "PREEMPTED",
}


@dataclass
class SlurmOptions:
    """What every job asks Slurm for (``--slurm-*`` options; empty or 0: the cluster's default)."""

    partition: str = ""
    time: str = "1-00:00:00"
    cpus: int = 0
    mem: str = ""
    gpus: int = 0
    tasks: int = 0  # DDP processes per job; 0: one per GPU (one without GPUs)
    account: str = ""
    qos: str = ""
    extra: Sequence[str] = ()
    max_jobs: int = 0
    poll: float = 10.0


def parse_time(text: str) -> int:
    """Minutes of an ``sbatch --time`` value: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM`` or ``D-HH:MM:SS`` (seconds round up)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match or (match.group(1) is None and match.group(4) is not None and match.group(3) is None):
        raise ConfigError(
            f"--slurm-time {text!r}: use sbatch's formats MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
        )
    days, a, b, c = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # MM
        seconds = int(a) * 60
    if seconds <= 0:
        raise ConfigError(f"--slurm-time {text!r}: the time limit must be positive")
    return -(-seconds // 60)


def _extra_parameters(extra: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in extra:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-extra {item!r}: write sbatch options as KEY=VALUE, e.g. constraint=a100")
        out[key.replace("-", "_")] = value or True  # KEY= : a flag without a value (exclusive=, hold=)
    return out


def check_slurm(options: SlurmOptions) -> None:
    """Everything a submission needs, checked before anything is submitted: submitit, ``sbatch``
    on the PATH, a partition the cluster has, a time limit Slurm reads, extra options as KEY=VALUE."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "--launcher slurm submits through submitit: pip install 'dbm-ltr[slurm]'"
        ) from None
    if shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm: no sbatch on the PATH; run on a Slurm login node, or use --launcher local")
    parse_time(options.time)
    _extra_parameters(options.extra)
    if options.partition:
        found = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
        partitions = sorted(set(found.stdout.split()))
        if found.returncode == 0 and options.partition not in partitions:
            raise ConfigError(
                f"--slurm-partition {options.partition!r}: no such partition; the cluster has {', '.join(partitions)}"
            )
    for name, value in (
        ("--slurm-cpus", options.cpus),
        ("--slurm-gpus", options.gpus),
        ("--slurm-tasks", options.tasks),
        ("--slurm-max-jobs", options.max_jobs),
    ):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")


@dataclass
class JobSpec:
    """One run to train as a job: ``dbm-ltr train`` with ``train_args`` into ``run_dir``
    (``--resume`` is added when the job finds a checkpoint), after the job of ``after``."""

    name: str
    run_dir: Path
    train_args: list[str]
    after: JobSpec | None = None
    epochs: int = 0
    job_id: str = ""
    state: str = ""  # the last state read from squeue ("" once the job has ended)
    error: str = field(default="", repr=False)

    @property
    def finished(self) -> bool:
        return (self.run_dir / METRICS).is_file()

    def recorded_job(self) -> str:
        try:
            return str(json.loads((self.run_dir / SLURM_JOB).read_text())["job_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""


def job_states() -> dict[str, str]:
    """``job id -> state`` of every job ``squeue`` lists (one line per array task)."""
    found = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        raise ConfigError(f"squeue failed: {(found.stderr or found.stdout).strip()[:200]}")
    states = {}
    for line in found.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state
    return states


def _executor(folder: Path, options: SlurmOptions, name: str, dependency: str = ""):
    import submitit

    executor = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=MAX_TIME_LIMITS)
    gpus = options.gpus
    params = {
        "job_name": name,
        "time": parse_time(options.time),
        "ntasks_per_node": options.tasks or max(1, gpus),
        "signal_delay_s": 90,
        "array_parallelism": options.max_jobs or 256,
        "additional_parameters": {"requeue": True, **_extra_parameters(options.extra)},
    }
    optional = {
        "partition": options.partition,
        "cpus_per_task": options.cpus,
        "mem": options.mem,
        "gpus_per_node": gpus,
        "account": options.account,
        "qos": options.qos,
        "dependency": dependency,
    }
    params.update({k: v for k, v in optional.items() if v})
    executor.update_parameters(**params)
    return executor


def submit(specs: Sequence[JobSpec], options: SlurmOptions, folder: Path, log: Callable[[str], None]) -> None:
    """Submit ``specs`` as job arrays: those others depend on first, then the rest, each with
    ``afterok`` on the jobs of their teachers that have not finished; records every job id."""
    teachers = [s for s in specs if any(o.after is s for o in specs)]
    _submit_group(teachers, "", options, folder, log)
    groups: dict[str, list[JobSpec]] = {}
    for spec in specs:
        if spec not in teachers:
            waiting = spec.after is not None and not spec.after.finished
            groups.setdefault(spec.after.job_id if waiting else "", []).append(spec)
    for dependency, group in sorted(groups.items()):
        _submit_group(group, dependency, options, folder, log)


def train_job(spec: JobSpec) -> TrainJob:
    """The job's function for ``spec``, with the run directory's layout it needs."""
    checkpoint = spec.run_dir / CHECKPOINT
    return TrainJob(
        str(spec.run_dir), spec.train_args, [str(checkpoint), str(previous_path(checkpoint))], OUTPUT, RANK_OUTPUT
    )


def _submit_group(
    group: Sequence[JobSpec], after: str, options: SlurmOptions, folder: Path, log: Callable[[str], None]
) -> None:
    if not group:
        return
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    executor = _executor(folder, options, "dbm-ltr", f"afterok:{after}" if after else "")
    try:
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():  # submitit echoes sbatch's error
            jobs = [executor.submit(train_job(s)) for s in group]
    except (FailedJobError, FailedSubmissionError) as err:
        said = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError(
            f"sbatch refused the jobs ({said[-1] if said else 'no message'}); check the --slurm-* options "
            "(partition, account, QoS, memory, GPUs, --slurm-extra)"
        ) from None
    for spec, job in zip(group, jobs):
        spec.job_id, spec.state = str(job.job_id), "PENDING"
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "job_id": spec.job_id,
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "logs": str(folder),
            "after": after,
        }
        (spec.run_dir / SLURM_JOB).write_text(json.dumps(record))
        log(f"  submitted {spec.name}: job {spec.job_id}" + (f" (after job {after})" if after else ""))


def _cancel(spec: JobSpec) -> None:
    subprocess.run(["scancel", spec.job_id], capture_output=True, timeout=60)
    spec.state = ""


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no output at {path})"


def _epoch(run_dir: Path) -> int:
    try:
        rows = (run_dir / LOG).read_text().strip().splitlines()
        return int(json.loads(rows[-1])["epoch"]) if rows else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def run_on_slurm(
    specs: Sequence[JobSpec],
    options: SlurmOptions,
    folder: Path,
    log: Callable[[str], None] = print,
    collect: bool = False,
    progress_every: float = 600.0,
) -> list[JobSpec]:
    """Submit what needs it and wait until every job has ended (``collect``: neither).

    Finished runs are skipped; a run whose recorded job is pending or running is left alone;
    the others (never submitted, failed, vanished) are submitted, a student only once its
    teacher has finished or is pending or running. Returns the specs, with ``error`` (a line
    naming the job and its log, whose last lines are logged) for those that ended without
    finishing."""
    states = job_states()
    todo = []
    for spec in specs:
        spec.job_id = spec.recorded_job()
        spec.state = states.get(spec.job_id, "") if spec.job_id else ""
        if spec.finished:
            continue
        if spec.state in ACTIVE:
            log(f"  {spec.name}: job {spec.job_id} is {spec.state.lower()}, left alone")
        else:
            todo.append(spec)
    for spec in specs:  # a student left waiting for a teacher's job that ended: it would wait forever
        if spec.state in ACTIVE and spec.after is not None and spec.after in todo:
            _cancel(spec)
            log(f"  {spec.name}: job {spec.job_id} waited for a job of {spec.after.name} that ended; cancelled")
            todo.append(spec)
    if collect:
        for spec in todo:
            log(f"  {spec.name}: not finished" + (f" (job {spec.job_id} ended)" if spec.job_id else ""))
        return list(specs)
    blocked = [
        s
        for s in todo
        if s.after is not None and not s.after.finished and s.after not in todo and s.after.state not in ACTIVE
    ]
    for spec in blocked:
        spec.error = f"its teacher {spec.after.name} did not finish"
        log(f"  {spec.name}: not submitted, {spec.error}")
    submit([s for s in todo if s not in blocked], options, folder, log)
    waiting = [s for s in specs if s.job_id and (s.state in ACTIVE or s in todo) and s not in blocked]
    next_progress = time.monotonic() + progress_every
    while waiting:
        time.sleep(options.poll)
        states = job_states()
        for spec in list(waiting):
            if spec not in waiting:  # a student cancelled above
                continue
            spec.state = states.get(spec.job_id, "")
            if spec.state in ACTIVE:
                continue
            waiting.remove(spec)
            if spec.finished:
                top1 = json.loads((spec.run_dir / METRICS).read_text())["top1"]
                log(f"  {spec.name}: finished (job {spec.job_id}), top-1 {top1:.2f}")
            else:
                spec.error = f"job {spec.job_id} ended without finishing; its output: {spec.run_dir / OUTPUT}"
                log(f"  {spec.name}: {spec.error}; last lines:\n{_tail(spec.run_dir / OUTPUT)}")
                for student in [s for s in waiting if s.after is spec]:  # afterok can never be met
                    _cancel(student)
                    waiting.remove(student)
                    student.error = f"its teacher {spec.name} did not finish"
                    log(f"  {student.name}: job {student.job_id} cancelled, {student.error}")
        if progress_every > 0 and time.monotonic() >= next_progress and waiting:
            next_progress = time.monotonic() + progress_every
            for spec in waiting:
                epoch = _epoch(spec.run_dir)
                log(
                    f"  progress {spec.name}: job {spec.job_id} {spec.state.lower()}"
                    + (f", epoch {epoch}/{spec.epochs}" if epoch else "")
                )
    return list(specs)
