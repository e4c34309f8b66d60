"""``--launcher slurm`` against a real single-node Slurm (``scripts/slurm_local.sh start``, which
``.ci/run`` runs): four runs become four jobs and a report; a repeated command submits nothing
while they are pending or running; a job sent the preemption signal mid-epoch is requeued and
ends where an uninterrupted job ends; GML students wait for their teacher; bad input is one line."""

import functools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dbm_ltr import cli
from dbm_ltr.experiments.slurm import parse_time


@functools.cache
def slurm_problem() -> str:
    """Why the Slurm tests cannot run here, or "" (asked once: ``sinfo`` takes 9 s to give up on a
    controller that is not running)."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (scripts/slurm_local.sh start installs and starts it)"
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if state.returncode != 0 or not state.stdout.strip():
        return "Slurm is not running (scripts/slurm_local.sh start)"
    return ""


needs_slurm = pytest.mark.skipif(bool(slurm_problem()), reason=slurm_problem() or "Slurm is up")
SMALL = ["optim.epochs=1", "data.limit=40", "data.test_limit=20", "data.workers=0", "optim.batch_size=16"]


def slurm_args(command: str, out: Path, root: Path | str, *options: str, settings: list[str] = SMALL) -> list[str]:
    """``COMMAND --launcher slurm --out OUT``: jobs of one CPU and 10 minutes, polled every second,
    on the fake CIFAR-10 at ``root`` (IF 10) with ``settings``; ``options`` come last and win."""
    return [
        command,
        "--launcher",
        "slurm",
        "--out",
        str(out),
        "--slurm-cpus",
        "1",
        "--slurm-time",
        "10",
        "--slurm-poll",
        "1",
        *options,
        "--set",
        f"data.root={root}",
        "data.imbalance_factor=10",
        *settings,
    ]


def dbm_ltr(*args: str, output: Path | None = None) -> subprocess.Popen:
    """``dbm-ltr ARGS``, its output piped (or written to ``output``)."""
    stdout = subprocess.PIPE if output is None else open(output, "w")  # the child writes into it
    return subprocess.Popen(
        [sys.executable, "-m", "dbm_ltr.cli", *args], stdout=stdout, stderr=subprocess.STDOUT, text=True
    )


def job_id(run: Path, process: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((run / "slurm_job.json").read_text())["job_id"]
        except (OSError, ValueError, KeyError):
            if process.poll() is not None and not (run / "slurm_job.json").exists():
                raise AssertionError(f"no job recorded in {run}: {process.communicate()[0]}") from None
            time.sleep(0.2)
    raise AssertionError(f"no job recorded in {run}")


def wait_for_log(run: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    log = run / "train.log"
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(0.2)


def squeue() -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True).stdout
    return dict(line.split("|", 1) for line in out.split())


def job_times(job: str) -> dict[str, str]:
    """A job's StartTime and EndTime as ``scontrol show job`` writes them (sortable text)."""
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(w.split("=", 1) for w in shown.split() if w.startswith(("StartTime=", "EndTime=")))


def test_time_limits_in_sbatchs_formats():
    assert [parse_time(t) for t in ("30", "1:30", "2:00:00", "1-0", "1-2:30", "0-0:0:59")] == [
        30,
        2,
        120,
        1440,
        1590,
        1,
    ]
    for bad in ("2h", "1:2:3:4", "-5", "", "0"):
        with pytest.raises(Exception, match="--slurm-time"):
            parse_time(bad)


@pytest.mark.parametrize(
    "case,match",
    [
        ("no sbatch", "no sbatch on the PATH"),
        ("time", "--slurm-time '3 hours': use sbatch's formats"),
        ("extra", "--slurm-extra 'constraint': write sbatch options as KEY=VALUE"),
        ("partition", "--slurm-partition 'gpu-xl': no such partition"),
        (
            "refused",
            "sbatch refused the jobs (sbatch: error: Batch job submission failed: Invalid feature specification)",
        ),
    ],
)
def test_bad_slurm_input_is_one_line_and_submits_nothing(case, match, fake_cifar10, tmp_path, capsys, monkeypatch):
    if case in ("partition", "refused") and slurm_problem():
        pytest.skip(slurm_problem())
    out = tmp_path / "table"
    extra = {
        "no sbatch": [],
        "time": ["--slurm-time", "3 hours"],
        "extra": ["--slurm-extra", "constraint"],
        "partition": ["--slurm-partition", "gpu-xl"],
        "refused": ["--slurm-extra", "constraint=no_such_feature"],
    }[case]
    if case == "no sbatch":
        empty = tmp_path / "bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
    code = cli.main(slurm_args("reproduce", out, fake_cifar10, "--data", "cifar10_lt", "--rows", "ce", *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    if case == "refused":  # sbatch saw the jobs: only submitit's folder of them is left, no run
        assert [p.name for p in out.iterdir()] == [".slurm"]
    else:
        assert not out.exists()


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--collect"], "--collect: Slurm options, for --launcher slurm"),
        (["--slurm-gpus", "1", "--slurm-time", "2:00:00"], "--slurm-time, --slurm-gpus: Slurm options"),
        (["--launcher", "slurm", "--jobs", "2"], "--jobs: how many runs train at once here"),
    ],
)
def test_options_of_the_other_launcher_are_refused_not_ignored(fake_cifar10, tmp_path, capsys, extra, match):
    out = tmp_path / "o"
    args = ["reproduce", "--data", "cifar10_lt", "--rows", "ce", "--out", str(out), *extra]
    assert cli.main([*args, "--set", f"data.root={fake_cifar10}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists()


@needs_slurm
def test_four_runs_are_four_jobs_a_repeat_submits_nothing_and_students_wait(fake_cifar10, tmp_path):
    """CE, and GML with its teacher and the DBM student: four runs, four jobs, held so that the
    same command repeated meets them pending; released, the students start after their teacher
    ended, and the report covers every row."""
    out = tmp_path / "table"
    args = slurm_args(
        "reproduce",
        out,
        fake_cifar10,
        *("--data", "cifar10_lt", "--rows", "ce,gml,dbm_gml"),
        *("--slurm-extra", "hold="),  # pending until released below: the repeat meets them pending
    )
    first = dbm_ltr(*args)
    names = ("ce_seed0", "gml_teacher_seed0", "gml_seed0", "dbm_gml_seed0")
    ids = {name: job_id(out / name, first) for name in names}
    assert len(set(ids.values())) == 4
    for student in ("gml_seed0", "dbm_gml_seed0"):
        assert json.loads((out / student / "slurm_job.json").read_text())["after"] == ids["gml_teacher_seed0"]
    assert all(squeue().get(job) == "PENDING" for job in ids.values()), squeue()
    repeat = tmp_path / "repeat.txt"
    second = dbm_ltr(*args, output=repeat)  # the same command while they are pending
    deadline = time.monotonic() + 120
    while repeat.read_text().count("left alone") < 4:
        assert second.poll() is None and time.monotonic() < deadline, repeat.read_text()
        time.sleep(0.2)
    subprocess.run(["scontrol", "release", *ids.values()], check=True)
    while not {"RUNNING", "COMPLETING"} & set(squeue().get(job) for job in ids.values()):
        assert time.monotonic() < deadline, "the released jobs did not run"
        time.sleep(0.1)
    second.wait(timeout=300)
    text_second = repeat.read_text()
    text_first = first.communicate(timeout=400)[0]
    assert first.returncode == 0 and second.returncode == 0, text_first + text_second
    assert text_first.count("submitted ") == 4
    assert "submitted " not in text_second and "left alone" in text_second
    assert {json.loads((out / n / "slurm_job.json").read_text())["job_id"] for n in names} == set(ids.values())
    assert all((out / n / "metrics.json").is_file() for n in names)
    shown = {name: job_times(job) for name, job in ids.items()}
    teacher_end = shown["gml_teacher_seed0"]["EndTime"]
    assert all(shown[s]["StartTime"] >= teacher_end for s in ("gml_seed0", "dbm_gml_seed0")), shown
    report = (out / "report.md").read_text()
    assert "cifar10_lt/ce" in report and "cifar10_lt/dbm_gml" in report
    collected = dbm_ltr(*args, "--collect")
    text = collected.communicate(timeout=120)[0]
    assert collected.returncode == 0 and "submitted " not in text and "cifar10_lt/ce" in text


@needs_slurm
def test_a_preempted_job_is_requeued_and_ends_as_an_uninterrupted_run(fake_cifar10, tmp_path):
    settings = [
        "optim.epochs=4",
        "data.workers=0",
        "optim.batch_size=16",
        "train.deterministic=true",
        "data.test_limit=20",
    ]
    out, straight = tmp_path / "table", tmp_path / "straight"
    process, uninterrupted = (
        dbm_ltr(
            *slurm_args("reproduce", folder, fake_cifar10, "--data", "cifar10_lt", "--rows", "ce", settings=settings)
        )
        for folder in (out, straight)
    )
    run = out / "ce_seed0"
    job = job_id(run, process)
    wait_for_log(run, "epoch 1/4", 120)  # the first epoch is done, the second is under way
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # submitit's preemption signal
    wait_for_log(run, "stopped by SIGTERM in epoch", 60)
    # requeued, it starts again once its credential expires (slurm_local.sh: cred_expire=10 s)
    text = process.communicate(timeout=300)[0]
    assert process.returncode == 0, text
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown
    log = (run / "train.log").read_text()
    assert re.search(r"resuming .* in epoch [234] after step \d+", log), log
    text = uninterrupted.communicate(timeout=300)[0]
    assert uninterrupted.returncode == 0, text
    straight = straight / "ce_seed0"
    a, b = (json.loads((folder / "log.jsonl").read_text().splitlines()[-1]) for folder in (straight, run))
    assert a["train_loss"] == b["train_loss"], (a, b)
    a, b = (json.loads((folder / "metrics.json").read_text()) for folder in (straight, run))
    assert a["per_class"] == b["per_class"] and a["top1"] == b["top1"]
    wa = torch.load(straight / "checkpoint.pt", weights_only=True)["method"]
    wb = torch.load(run / "checkpoint.pt", weights_only=True)["method"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@needs_slurm
def test_a_sweep_point_with_two_tasks_trains_as_two_ddp_processes(fake_cifar10, tmp_path):
    out = tmp_path / "sweep"
    process = dbm_ltr(
        *slurm_args(
            "sweep",
            out,
            fake_cifar10,
            "--config",
            "cifar10_lt/dbm_ce",
            "--grid",
            "max_margin=0.1",
            "--slurm-tasks",
            "2",
        )
    )
    text = process.communicate(timeout=300)[0]
    assert process.returncode == 0, text
    run = out / "max_margin=0.1"
    assert "submitted max_margin=0.1" in text and (run / "metrics.json").is_file()
    assert " x2" in (run / "train.log").read_text()  # the run line names the two processes
    assert (run / "train.rank1.log").is_file()
    assert "max_margin" in (out / "sweep_report.md").read_text()


@needs_slurm
def test_students_of_a_failed_teacher_are_cancelled_and_reported(fake_cifar10, tmp_path):
    out = tmp_path / "gml"
    teacher = out / "gml_teacher_seed0"
    teacher.mkdir(parents=True)
    (teacher / "checkpoint.pt").write_bytes(b"damaged")  # the teacher's job fails at once
    process = dbm_ltr(*slurm_args("reproduce", out, fake_cifar10, "--data", "cifar10_lt", "--rows", "gml"))
    text = process.communicate(timeout=200)[0]
    assert process.returncode == 1, text
    student = job_id(out / "gml_seed0", process)
    assert "gml_teacher_seed0: job" in text and "ended without finishing" in text
    assert f"gml_seed0: job {student} cancelled, its teacher gml_teacher_seed0 did not finish" in text
    assert student not in squeue()
