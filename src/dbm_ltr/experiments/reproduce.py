"""``dbm-ltr reproduce``: the CIFAR rows of Table 2, one command.

One run directory per (row, seed), ``OUT/<row>_seed<k>``, each trained from the row's preset
by ``dbm-ltr train`` in a process of its own; ``--jobs N`` such processes run at a time on
the one device (packed runs keep a GPU busy where one small ResNet-32 cannot). Rows that
distil a teacher (GML, DBM-GML) bring the teacher's row, trained first. Everything is
validated before anything trains: the rows, the configs, the device and the data set. A
finished run is skipped and an interrupted one resumed when the command is repeated; a run that
fails is reported with the last lines of its log while the others go on. At the end: the
report (ours, mean +- std over seeds, the best test epoch marked, the paper's value and the
difference) as markdown and CSV, and one PNG of ours beside the paper's per row.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..analysis.plots import plot_reproduction
from ..analysis.report import report_markdown, summarize_runs, write_report
from ..analysis.runs import read_metrics, read_run_config
from ..engine.config import ConfigError, load_config, preset_dir
from ..engine.distributed import available_cores, pick_device
from ..engine.rundir import LOG, METRICS, OUTPUT, has_checkpoint, recipe_revisions
from ..engine.signals import StopSignals
from ..serialization import trusted
from .sweep import check_buildable, check_data, compare_existing

__all__ = [
    "ROW_SETS",
    "ReproRun",
    "default_jobs",
    "parse_rows",
    "plan_reproduction",
    "run_reproduction",
    "summarize_reproduction",
]

#: The single-model rows of Table 2, in the paper's order.
TABLE2_ROWS = ("ce", "ldam", "dbm_ce", "ce_drw", "ldam_drw", "dbm_drw", "bs", "dbm_bs")
#: ``--rows`` shorthands: ``all`` adds the multi-branch rows in the paper's order.
ROW_SETS = {"table2": TABLE2_ROWS, "all": TABLE2_ROWS + ("bcl", "dbm_bcl", "gml", "dbm_gml", "ncl", "dbm_ncl")}
#: Rows that distil a teacher, and the preset row that trains it (first, once per seed).
TEACHERS = {"gml": "gml_teacher", "dbm_gml": "gml_teacher"}
MEMORY_PER_RUN = 3 * 2**30  # bytes of GPU memory budgeted for one packed ResNet-32 run
MAX_JOBS = 8


@dataclass
class ReproRun:
    row: str
    seed: int
    preset: str
    run_dir: Path
    overrides: list[str]
    status: str = "train"  # train | resume | done
    after: ReproRun | None = None  # a run that must finish first (a student's teacher)
    epochs: int = 0  # of its recipe, for the progress lines
    returncode: int | None = None
    seconds: float = 0.0
    error: str = ""
    kept: str = ""  # recipe revisions of its preset that an existing run keeps (its own values)
    device: str = "cpu"  # where it trains: cpu or cuda

    @property
    def name(self) -> str:
        return f"{self.row}_seed{self.seed}"

    @property
    def finished(self) -> bool:
        return (self.run_dir / METRICS).is_file()

    @property
    def ended(self) -> bool:
        """Finished earlier, or its process has exited (successfully or not)."""
        return self.status == "done" or self.returncode is not None


def parse_rows(text: str, data: str) -> list[str]:
    """``table2`` | ``all`` | ``ce,dbm_ce,...`` -> row names that have a preset for ``data``."""
    rows = list(ROW_SETS.get(text, ())) or [r.strip() for r in text.split(",") if r.strip()]
    if not rows:
        raise ConfigError("--rows is empty; use table2, all or a comma-separated list such as ce,dbm_ce")
    available = sorted(p.stem for p in (preset_dir() / data).glob("*.yaml")) if (preset_dir() / data).is_dir() else []
    if not available:
        datasets = sorted(p.name for p in preset_dir().iterdir() if p.is_dir() and p.name.endswith("_lt"))
        raise ConfigError(f"no presets for data set {data!r}; reproduce knows {', '.join(datasets)}")
    unknown = [r for r in rows if r not in available]
    if unknown:
        raise ConfigError(
            f"unknown row(s) {', '.join(unknown)} for {data}: rows are table2, all or names among "
            f"{', '.join(available)}"
        )
    if len(set(rows)) != len(rows):
        raise ConfigError(f"--rows names a row twice: {text}")
    return rows


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct integers such as 0,1,2, got {text!r}")
    return seeds


def default_jobs(device_name: str = "auto") -> int:
    """Runs at a time: 1 on the CPU (each run uses every core); on a GPU as many as its free
    memory allows at ``MEMORY_PER_RUN`` each, at most ``MAX_JOBS``."""
    import torch

    if device_name == "cpu" or not torch.cuda.is_available():
        return 1
    free, _ = torch.cuda.mem_get_info()
    return max(1, min(MAX_JOBS, free // MEMORY_PER_RUN))


def plan_reproduction(
    data: str,
    rows: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    imbalance_factor: float | None = None,
    job_gpus: int | None = None,
) -> list[ReproRun]:
    """One validated :class:`ReproRun` per (row, seed): each config is built (keys, values,
    method and loss), its device exists and its data set loads, before anything trains.

    On a GPU every run is evaluated after every epoch (``train.eval_every=1`` unless the
    overrides set it), so its best test epoch is found as the authors' code finds it, at about
    a tenth of a second an epoch; on a CPU the presets' every 10 epochs stay. The runs train
    here (``job_gpus=None``: the device is looked up on this machine) or as jobs with
    ``job_gpus`` GPUs each (Slurm: the machine that plans them may have none).

    Raises:
        ConfigError: a bad row, setting or device, or an existing run directory trained with
            other settings.
        DatasetNotFoundError / ValueError: the data set is missing or damaged.
    """

    common = list(overrides) + ([f"data.imbalance_factor={imbalance_factor:g}"] if imbalance_factor is not None else [])
    order = list(rows)
    for teacher in dict.fromkeys(TEACHERS[r] for r in rows if r in TEACHERS):  # teachers first
        if teacher in order:
            order.remove(teacher)
        order.insert(0, teacher)
    runs, checked, planned = [], set(), {}
    for row in order:
        for seed in seeds:
            preset = f"{data}/{row}"
            run_overrides = common + [f"train.seed={seed}"]
            teacher = planned.get((TEACHERS.get(row), seed))
            if teacher is not None:
                run_overrides.append(f"method.teacher={teacher.run_dir}")
            try:
                config = load_config(preset, run_overrides)
            except ConfigError as err:
                raise ConfigError(f"{preset}: {err}") from None
            reported = {f"{float(k):g}" for k in ((config.paper or {}).get("top1") or {})}
            if reported and f"{config.data.imbalance_factor:g}" not in reported:
                raise ConfigError(
                    f"--imbalance-factor {config.data.imbalance_factor:g}: the paper reports {preset} at imbalance "
                    f"factor {', '.join(sorted(reported, key=float))} only, and reproduce trains the paper's table; "
                    f"for another one use dbm-ltr train or sweep with --set "
                    f"data.imbalance_factor={config.data.imbalance_factor:g}"
                )
            if teacher is None or teacher.finished:  # a student is built once its teacher exists
                check_buildable(config, preset)
            device = _device_type(config.train.device, job_gpus, preset)
            if device == "cuda" and not _sets(overrides, "train.eval_every") and config.train.eval_every > 1:
                run_overrides.append("train.eval_every=1")  # the best epoch as the authors' code finds it
                config.train.eval_every = 1
            check_data(config, checked)  # the archives exist and load
            run = ReproRun(
                row,
                seed,
                preset,
                Path(out) / f"{row}_seed{seed}",
                run_overrides,
                after=teacher,
                epochs=config.optim.epochs,
                device=device,
            )
            planned[(row, seed)] = run
            if run.run_dir.exists():
                compare_existing(run.run_dir, config)
                saved = read_run_config(run.run_dir)
                kept = recipe_revisions(saved, config.to_dict()) if saved else []
                run.kept = ", ".join(f"{k} {a!r}" for k, a, _ in kept)
                if run.finished:
                    run.status = "done"
                elif has_checkpoint(run.run_dir):  # the latest, or only the previous one
                    run.status = "resume"
            runs.append(run)
    return runs


def _device_type(setting: str, job_gpus: int | None, preset: str) -> str:
    """``cuda`` or ``cpu``: where a run with ``train.device=setting`` trains, on this machine
    (``job_gpus=None``) or in a job with ``job_gpus`` GPUs."""
    if job_gpus is None:
        try:
            return pick_device(setting).type
        except ValueError as err:
            raise ConfigError(f"{preset}: {err}") from None
    if setting.startswith("cuda") and not job_gpus:
        raise ConfigError(f"{preset}: train.device={setting} in jobs without GPUs: add --slurm-gpus N")
    return "cuda" if job_gpus and setting != "cpu" else "cpu"


def _sets(overrides: Sequence[str], key: str) -> bool:
    """Whether ``overrides`` set ``key`` (``section.name=...`` or the bare ``name=...``)."""
    names = {item.split("=", 1)[0].strip() for item in overrides}
    return key in names or key.split(".")[-1] in names


def describe(runs: Sequence[ReproRun], jobs: int) -> str:
    todo = sum(r.status != "done" for r in runs)
    how = f"{jobs} at a time" if jobs else "as Slurm jobs"
    lines = [f"{len(runs)} runs ({todo} to train, {how}):"]
    for r in runs:
        state = {"done": "finished, skipped", "resume": "resume", "train": "train"}[r.status]
        after = f", after {r.after.name}" if r.after is not None and r.status != "done" else ""
        kept = f"; started before its preset's revision, keeps {r.kept}" if r.kept else ""
        lines.append(f"  {r.run_dir}  {r.preset} seed {r.seed}  ({state}{after}{kept})")
    return "\n".join(lines)


def _command(run: ReproRun) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "dbm_ltr.cli",
        "train",
        "--config",
        run.preset,
        "--out",
        str(run.run_dir),
        "--set",
        *run.overrides,
        "train.progress=false",
    ]
    cmd += ["--trust-checkpoint"] if trusted() else []  # the parent's explicit opt-in
    return cmd + (["--resume"] if has_checkpoint(run.run_dir) else [])


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def progress_line(run: ReproRun) -> str:
    """How far a training run is, from its ``log.jsonl``: the epochs done, the median time of
    its last five epochs and the time its remaining epochs take at that pace."""
    try:
        lines = (run.run_dir / LOG).read_text().splitlines()
    except OSError:
        lines = []
    epochs = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "epoch" in entry and "seconds" in entry:
            epochs.append(entry)
    if not epochs:
        return f"  progress {run.name}: starting (no epoch finished yet)"
    done = int(epochs[-1]["epoch"])
    pace = statistics.median(float(e["seconds"]) for e in epochs[-5:])
    left = max(run.epochs - done, 0) * pace
    return f"  progress {run.name}: epoch {done}/{run.epochs}, {pace:.1f} s an epoch, about {_duration(left)} left"


def _duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def run_reproduction(
    runs: Sequence[ReproRun],
    jobs: int,
    log: Callable[[str], None] = print,
    progress_every: float = 600.0,
) -> list[ReproRun]:
    """Train every unfinished run, ``jobs`` processes at a time, each with an equal share of
    the CPU cores for its threads, and every ``progress_every`` seconds (0: never) log a
    :func:`progress_line` of each running one. Failures are recorded (``returncode``,
    ``error``: the last lines of the run's log) and the others go on.

    On SIGINT or SIGTERM (Ctrl-C, ``kill``) the running processes are stopped, each with a
    mid-epoch checkpoint, and ``KeyboardInterrupt`` propagates. A signal sent to the whole
    process group (Ctrl-C) reaches them too: they get ``STOP_GRACE`` seconds to stop on it
    before they are sent SIGTERM, since a second signal would stop a run without its
    checkpoint. A second signal to this process stops them at once."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    pending = [r for r in runs if r.status != "done"]
    cores = available_cores()
    threads = max(1, cores // min(jobs, max(len(pending), 1)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    active: list[tuple[ReproRun, subprocess.Popen, float, object]] = []
    done = len(runs) - len(pending)
    next_progress = time.perf_counter() + progress_every
    try:
        with StopSignals() as stop:
            while (pending or active) and not stop.signum:
                for run in [r for r in pending if r.after is not None and r.after.ended and not r.after.finished]:
                    pending.remove(run)  # its teacher failed: nothing to distil from
                    done += 1
                    run.returncode, run.error = -1, f"{run.after.name} did not finish"
                    log(f"[{done}/{len(runs)}] {run.name}: not started, {run.error}")
                ready = [r for r in pending if r.after is None or (r.after.ended and r.after.finished)]
                while ready and len(active) < jobs:
                    run = ready.pop(0)
                    pending.remove(run)
                    run.run_dir.mkdir(parents=True, exist_ok=True)
                    handle = open(run.run_dir / OUTPUT, "a")
                    process = subprocess.Popen(_command(run), stdout=handle, stderr=subprocess.STDOUT, env=env)
                    active.append((run, process, time.perf_counter(), handle))
                    log(f"  started  {run.name} ({'resuming' if run.status == 'resume' else 'training'})")
                time.sleep(0.2)
                if progress_every > 0 and time.perf_counter() >= next_progress:
                    next_progress = time.perf_counter() + progress_every
                    for run, process, _, _ in active:
                        if process.poll() is None:
                            log(progress_line(run))
                for item in list(active):
                    run, process, start, handle = item
                    if stop.signum or process.poll() is None:  # stopped by the signal: not a failure
                        continue
                    active.remove(item)
                    handle.close()
                    done += 1
                    run.returncode, run.seconds = process.returncode, time.perf_counter() - start
                    if process.returncode == 0 and run.finished:
                        top1 = read_metrics(run.run_dir)["top1"]
                        log(f"[{done}/{len(runs)}] {run.name}: finished in {run.seconds:.0f}s, top-1 {top1:.2f}")
                    else:
                        run.error = _tail(run.run_dir / OUTPUT)
                        log(
                            f"[{done}/{len(runs)}] {run.name}: FAILED (exit {process.returncode}); "
                            f"last lines of {run.run_dir / OUTPUT}:\n{run.error}"
                        )
            if stop.signum:
                _stop_gracefully([process for _, process, _, _ in active])
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        for _, process, _, _ in active:
            if process.poll() is None:
                process.terminate()
        raise
    finally:
        for _, process, _, handle in active:
            process.wait()
            handle.close()
    return list(runs)


STOP_GRACE = 10.0  # seconds a run gets to stop on a signal it received itself


def _stop_gracefully(processes: Sequence[subprocess.Popen]) -> None:
    """Give the runs ``STOP_GRACE`` seconds to exit on a signal sent to the whole process
    group (Ctrl-C), then send SIGTERM to those still running (this process alone was
    signalled, e.g. by ``kill``): one signal each, so each stops with its checkpoint."""
    deadline = time.perf_counter() + STOP_GRACE
    while any(p.poll() is None for p in processes) and time.perf_counter() < deadline:
        time.sleep(0.1)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:  # a second signal here stops them at once (run_reproduction)
        process.wait()


def summarize_reproduction(runs: Sequence[ReproRun], out: str | Path, title: str = "") -> dict[str, Path | str]:
    """Report of the finished runs (``OUT/report.md`` and ``.csv``) and the plot of ours beside
    the paper per row (``OUT/reproduce.png``)."""

    out = Path(out)
    finished = [r.run_dir for r in runs if r.finished]
    if not finished:
        return {"markdown": "no finished runs\n"}
    rows = summarize_runs(finished)
    md, csv_path = write_report(rows, out / "report.md", title=title)
    plot = plot_reproduction(rows, out / "reproduce.png", title=title)
    return {"markdown": report_markdown(rows, title), "report": md, "csv": csv_path, "plot": plot}
