"""``dbm-ltr reproduce``: plan, validation, packed runs, skip/resume, failures, the report."""

import json
import re

import pytest
from analysis_helpers import tiny_overrides

from dbm_ltr import cli
from dbm_ltr.engine import ConfigError
from dbm_ltr.experiments.reproduce import (
    ROW_SETS,
    ReproRun,
    _command,
    parse_rows,
    plan_reproduction,
    progress_line,
)


def test_row_sets_and_row_errors():
    assert parse_rows("table2", "cifar10_lt") == [
        "ce",
        "ldam",
        "dbm_ce",
        "ce_drw",
        "ldam_drw",
        "dbm_drw",
        "bs",
        "dbm_bs",
    ]
    assert parse_rows("all", "cifar100_lt")[-6:] == ["bcl", "dbm_bcl", "gml", "dbm_gml", "ncl", "dbm_ncl"]
    assert parse_rows("bs, dbm_bs", "cifar10_lt") == ["bs", "dbm_bs"]
    with pytest.raises(ConfigError, match=r"unknown row\(s\) dbm_focal for cifar10_lt: rows are table2, all or"):
        parse_rows("ce,dbm_focal", "cifar10_lt")
    with pytest.raises(
        ConfigError, match="no presets for data set 'digits_lt'; reproduce knows cifar100_lt, cifar10_lt"
    ):
        parse_rows("ce", "digits_lt")
    with pytest.raises(ConfigError, match="names a row twice"):
        parse_rows("ce,ce", "cifar10_lt")
    assert set(ROW_SETS["table2"]) < set(ROW_SETS["all"])


def test_dry_run_validates_everything_and_trains_nothing(fake_cifar10_root, tmp_path, capsys):
    out = tmp_path / "table2"
    code = cli.main(
        [
            "reproduce",
            "--data",
            "cifar10_lt",
            "--imbalance-factor",
            "10",
            "--seeds",
            "0,1",
            "--out",
            str(out),
            "--dry-run",
            "--set",
            f"data.root={fake_cifar10_root}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "16 runs (16 to train, 1 at a time)" in printed  # 8 rows x 2 seeds, one job on the CPU
    assert f"{out}/dbm_bs_seed1  cifar10_lt/dbm_bs seed 1  (train)" in printed
    assert "dry run: nothing trained" in printed and not out.exists()


@pytest.mark.parametrize(
    "args,match",
    [
        (["--rows", "ce,gml_student"], r"unknown row\(s\) gml_student"),
        (["--jobs", "0"], r"--jobs must be >= 1, got 0"),
        (["--progress-every", "-5"], r"--progress-every must be >= 0 seconds \(0: no progress lines\), got -5"),
        (["--seeds", "0,x"], r"--seeds must be comma-separated integers"),
        (["--set", "train.device=cuda"], r"cifar10_lt/ce: train.device=cuda but CUDA is not available"),
        (["--set", "optim.lrr=0.1"], r"cifar10_lt/ce: unknown config key optim.lrr"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_trained(fake_cifar10_root, tmp_path, capsys, args, match):
    import torch

    if "cuda" in match and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "out"
    code = cli.main(
        ["reproduce", "--data", "cifar10_lt", "--out", str(out), *args, "--set", f"data.root={fake_cifar10_root}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("dbm-ltr reproduce: error: ")
    assert re.search(match, err[0]), err[0]
    assert not out.exists()


def test_missing_or_damaged_archive_is_named(tmp_path, capsys):
    code = cli.main(
        [
            "reproduce",
            "--data",
            "cifar10_lt",
            "--out",
            str(tmp_path / "o"),
            "--dry-run",
            "--set",
            f"data.root={tmp_path}",
        ]
    )
    assert code == 2 and "cifar10_train.npz" in capsys.readouterr().err
    (tmp_path / "cifar10_train.npz").write_bytes(b"not an archive")
    code = cli.main(
        [
            "reproduce",
            "--data",
            "cifar10_lt",
            "--out",
            str(tmp_path / "o"),
            "--dry-run",
            "--set",
            f"data.root={tmp_path}",
        ]
    )
    assert code == 2 and "cannot read as a .npz archive" in capsys.readouterr().err


def test_two_rows_for_one_epoch_then_skip_resume_and_a_failure(fake_cifar10_root, tmp_path, capsys):
    """A real reproduce in subprocesses: two rows, one epoch each, two at a time; the report
    and the plot. Rerun: finished runs are skipped. A third row whose directory holds a damaged
    checkpoint fails with its log's last lines while the others are kept."""
    out = tmp_path / "t2"
    common = [
        "--data",
        "cifar10_lt",
        "--imbalance-factor",
        "10",
        "--out",
        str(out),
        "--jobs",
        "2",
        "--set",
        *tiny_overrides(fake_cifar10_root),
        "data.imbalance_factor=10",
    ]
    assert cli.main(["reproduce", "--rows", "ce,dbm_bs", "--progress-every", "0.5", *common]) == 0
    printed = capsys.readouterr().out
    assert "  progress ce_seed0: " in printed  # each process takes seconds to start: lines came
    for row in ("ce", "dbm_bs"):
        metrics = json.loads((out / f"{row}_seed0" / "metrics.json").read_text())
        assert metrics["epoch"] == 1 and metrics["preset"] == f"cifar10_lt/{row}"
        assert f"{row}_seed0: finished in" in printed
    report = (out / "report.md").read_text()
    assert "| cifar10_lt/dbm_bs | 10 | 1 | 1 (short; recipe 200) |" in report
    assert (out / "report.csv").is_file() and (out / "reproduce.png").stat().st_size > 1000
    stamp = (out / "ce_seed0" / "metrics.json").stat().st_mtime_ns

    broken = out / "bs_seed0"
    broken.mkdir()
    (broken / "config.yaml").write_text(
        (out / "ce_seed0" / "config.yaml")
        .read_text()
        .replace("name: ce", "name: bs")
        .replace("cifar10_lt/ce", "cifar10_lt/bs")
    )
    # only the previous checkpoint (a kill between the two renames of a save, or the latest
    # deleted): a run to resume, not a new one, which the run directory would refuse
    (broken / "checkpoint.prev.pt").write_bytes(b"damaged")
    plan = plan_reproduction("cifar10_lt", ["ce", "bs"], [0], out, tiny_overrides(fake_cifar10_root), 10)
    assert [r.status for r in plan] == ["done", "resume"] and _command(plan[1])[-1] == "--resume"
    code = cli.main(["reproduce", "--rows", "ce,dbm_bs,bs", *common])
    captured = capsys.readouterr()
    assert code == 1
    assert "bs_seed0: FAILED (exit 2)" in captured.out and "not a readable checkpoint" in captured.out
    assert "1 run(s) did not finish: bs_seed0" in captured.err
    assert (out / "ce_seed0" / "metrics.json").stat().st_mtime_ns == stamp  # skipped, not retrained
    assert "cifar10_lt/ce" in (out / "report.md").read_text()


def test_existing_run_with_other_settings_is_refused(fake_cifar10_root, tmp_path):
    out = tmp_path / "t2"
    run = out / "ce_seed0"
    run.mkdir(parents=True)
    from dbm_ltr.engine import load_config
    from dbm_ltr.engine.rundir import save_config

    save_config(load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10_root) + ["optim.lr=0.3"]), run / "config.yaml")
    with pytest.raises(ConfigError, match="holds a run with other settings .*optim.lr"):
        plan_reproduction("cifar10_lt", ["ce"], [0], out, tiny_overrides(fake_cifar10_root), 10)


def test_a_run_from_before_the_recipe_revision_is_resumed_with_its_own(fake_cifar10_root, tmp_path):
    """A run directory saved with our earlier cosine and without data.autoaugment (torchvision's
    policy then) is planned as a resumption that keeps them, and the plan says so."""
    from dbm_ltr.engine import load_config
    from dbm_ltr.engine.rundir import save_config
    from dbm_ltr.experiments.reproduce import describe

    out = tmp_path / "t2"
    run = out / "ce_seed0"
    run.mkdir(parents=True)
    save_config(
        load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10_root) + ["optim.schedule=cosine"]), run / "config.yaml"
    )
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("  autoaugment: reference\n", ""))
    runs = plan_reproduction("cifar10_lt", ["ce"], [0], out, tiny_overrides(fake_cifar10_root), 10)
    assert runs[0].kept == "optim.schedule 'cosine', data.autoaugment 'torchvision'"
    assert "started before its preset's revision, keeps optim.schedule 'cosine'" in describe(runs, 1)


@pytest.mark.parametrize(
    "device,extra,every", [("cpu", [], None), ("cuda", [], "1"), ("cuda", ["train.eval_every=5"], None)]
)
def test_on_a_gpu_every_run_is_evaluated_every_epoch(fake_cifar10_root, tmp_path, monkeypatch, device, extra, every):
    import torch

    from dbm_ltr.experiments import reproduce

    monkeypatch.setattr(reproduce, "pick_device", lambda name: torch.device(device))
    runs = plan_reproduction(
        "cifar10_lt", ["ce", "dbm_ce"], [0], tmp_path / "o", tiny_overrides(fake_cifar10_root) + extra, 10
    )
    for run in runs:
        added = [o for o in run.overrides if o == "train.eval_every=1"]
        assert added == ([f"train.eval_every={every}"] if every else []), run.overrides
        assert run.device == device


def test_slurm_jobs_take_their_device_from_their_gpus_not_the_login_node(fake_cifar10_root, tmp_path, monkeypatch):
    """As Slurm jobs the runs train on the jobs' GPUs (--slurm-gpus), whatever the machine that
    plans them has: no device lookup here, every epoch evaluated on a GPU, and a run that asks for
    CUDA in jobs without GPUs refused."""
    from dbm_ltr.experiments import reproduce

    def no_lookup(name):
        raise AssertionError("the device was looked up on the planning machine")

    monkeypatch.setattr(reproduce, "pick_device", no_lookup)
    base = tiny_overrides(fake_cifar10_root)
    for gpus, added in ((1, ["train.eval_every=1"]), (0, [])):
        (run,) = plan_reproduction("cifar10_lt", ["ce"], [0], tmp_path / "o", base, 10, job_gpus=gpus)
        assert [o for o in run.overrides if o.startswith("train.eval_every")] == added
        assert run.device == ("cuda" if gpus else "cpu")
    (run,) = plan_reproduction("cifar10_lt", ["ce"], [0], tmp_path / "o", base + ["train.device=cpu"], 10, job_gpus=1)
    assert "train.eval_every=1" not in run.overrides and run.device == "cpu"
    with pytest.raises(ConfigError, match="train.device=cuda in jobs without GPUs: add --slurm-gpus N"):
        plan_reproduction("cifar10_lt", ["ce"], [0], tmp_path / "o", base + ["train.device=cuda"], 10, job_gpus=0)


def test_gml_rows_bring_their_teacher_first(fake_cifar10_root, tmp_path, capsys):
    """``all`` lists GML and DBM-GML; each seed's teacher is trained first and named by its
    students; a dry run shows the order and the dependency."""
    from dbm_ltr.experiments.reproduce import describe

    assert parse_rows("all", "cifar10_lt")[8:] == ["bcl", "dbm_bcl", "gml", "dbm_gml", "ncl", "dbm_ncl"]
    runs = plan_reproduction(
        "cifar10_lt", ["ce", "dbm_gml", "gml"], [0, 1], tmp_path / "o", tiny_overrides(fake_cifar10_root), 10
    )
    assert [r.name for r in runs] == [
        "gml_teacher_seed0",
        "gml_teacher_seed1",
        "ce_seed0",
        "ce_seed1",
        "dbm_gml_seed0",
        "dbm_gml_seed1",
        "gml_seed0",
        "gml_seed1",
    ]
    student = runs[-1]
    assert student.after is runs[1] and f"method.teacher={runs[1].run_dir}" in student.overrides
    assert "(train, after gml_teacher_seed1)" in describe(runs, 1)


def test_a_student_runs_after_its_teacher_and_not_after_a_failed_one(fake_cifar10_root, tmp_path, capsys):
    out = tmp_path / "gml"
    common = [
        "--data",
        "cifar10_lt",
        "--imbalance-factor",
        "10",
        "--out",
        str(out),
        "--jobs",
        "2",
        "--set",
        *tiny_overrides(fake_cifar10_root),
        "data.limit=40",
    ]
    # a damaged teacher checkpoint: the teacher fails, its student is not started
    teacher = out / "gml_teacher_seed0"
    teacher.mkdir(parents=True)
    (teacher / "checkpoint.pt").write_bytes(b"damaged")
    assert cli.main(["reproduce", "--rows", "gml", *common]) == 1
    printed = capsys.readouterr().out
    assert (
        "gml_teacher_seed0: FAILED" in printed and "gml_seed0: not started, gml_teacher_seed0 did not finish" in printed
    )
    (teacher / "checkpoint.pt").unlink()
    assert cli.main(["reproduce", "--rows", "gml", *common]) == 0
    printed = capsys.readouterr().out
    assert printed.index("gml_teacher_seed0: finished") < printed.index("started  gml_seed0")
    metrics = json.loads((out / "gml_seed0" / "metrics.json").read_text())
    assert metrics["method"] == "gml" and "cifar10_lt/gml" in (out / "report.md").read_text()


def test_progress_line_reads_the_pace_from_the_log(tmp_path):
    """Epochs done, the median time of the last five epochs, and the time left at that pace;
    evaluation lines count as epochs, a half-written last line is skipped."""
    run = ReproRun("dbm_drw", 0, "cifar10_lt/dbm_drw", tmp_path / "dbm_drw_seed0", [], epochs=200)
    assert progress_line(run) == "  progress dbm_drw_seed0: starting (no epoch finished yet)"
    run.run_dir.mkdir()
    seconds = [90.0, 30.0, 31.0, 29.0, 32.0, 30.5, 35.0]  # the first epoch's start-up falls out
    lines = [
        json.dumps({"epoch": e + 1, "lr": 0.1, "seconds": s, **({"test_top1": 50.0} if e == 4 else {})})
        for e, s in enumerate(seconds)
    ]
    (run.run_dir / "log.jsonl").write_text("\n".join(lines) + '\n{"epoch": 8, "lr"')
    # median of 31, 29, 32, 30.5, 35 = 31.0 s; 193 epochs left: 5983 s = 1 h 40 min
    assert progress_line(run) == "  progress dbm_drw_seed0: epoch 7/200, 31.0 s an epoch, about 1 h 40 min left"
    run.epochs = 8
    assert progress_line(run).endswith("epoch 7/8, 31.0 s an epoch, about 1 min left")


def _wait_for_first_epoch(run_dir, alive, timeout=120.0):
    import time

    log, deadline = run_dir / "log.jsonl", time.time() + timeout
    while not (log.is_file() and log.read_text().strip()) and time.time() < deadline and alive():
        time.sleep(0.2)


def _assert_stopped_with_checkpoint(run_dir, name):
    train_log = (run_dir / "train.log").read_text()
    assert f"stopped by {name}" in train_log and "checkpoint written" in train_log, train_log[-1000:]
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "metrics.json").exists()


def test_kill_stops_the_runs_with_their_checkpoints(fake_cifar10_root, tmp_path, monkeypatch):
    """SIGTERM to reproduce alone (``kill``; here this process, running it in-process): after
    the grace period the training process gets one SIGTERM, stops with a checkpoint, and
    KeyboardInterrupt propagates; the run is not counted as failed."""
    import os
    import signal
    import threading

    from dbm_ltr.experiments import reproduce

    monkeypatch.setattr(reproduce, "STOP_GRACE", 0.5)
    exit_codes, stop_gracefully = [], reproduce._stop_gracefully

    def stop_and_record(processes):
        stop_gracefully(processes)
        exit_codes.extend(p.returncode for p in processes)

    monkeypatch.setattr(reproduce, "_stop_gracefully", stop_and_record)
    runs = plan_reproduction(
        "cifar10_lt",
        ["ce"],
        [0],
        tmp_path / "t2",
        tiny_overrides(fake_cifar10_root, epochs=500) + ["data.imbalance_factor=10"],
    )
    lines, done = [], threading.Event()

    def kill_when_training():
        _wait_for_first_epoch(runs[0].run_dir, lambda: not done.is_set())
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_when_training, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            reproduce.run_reproduction(runs, 1, log=lines.append)
    finally:
        done.set()
    assert runs[0].returncode is None and not any("FAILED" in line for line in lines)
    _assert_stopped_with_checkpoint(runs[0].run_dir, "SIGTERM")
    # 128 + SIGTERM: the run stopped on its one signal; a second one, before or after its
    # checkpoint, ends it otherwise (KeyboardInterrupt, or killed by the default handler)
    assert exit_codes == [128 + signal.SIGTERM]


def test_ctrl_c_to_the_group_reaches_each_run_once(fake_cifar10_root, tmp_path):
    """SIGINT to reproduce's whole process group (Ctrl-C): the training process gets it once
    (reproduce does not add its own), stops with a checkpoint, and reproduce says it was
    interrupted, not that the run failed."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "t2"
    cmd = [
        sys.executable,
        "-m",
        "dbm_ltr.cli",
        "reproduce",
        "--data",
        "cifar10_lt",
        "--rows",
        "ce",
        "--out",
        str(out),
        "--set",
        *tiny_overrides(fake_cifar10_root, epochs=500),
        "data.imbalance_factor=10",
    ]
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_first_epoch(out / "ce_seed0", lambda: parent.poll() is None)
    assert parent.poll() is None, parent.communicate()
    os.killpg(parent.pid, signal.SIGINT)
    stdout, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 130, stdout + stderr
    assert "reproduce interrupted; rerun the same command to resume" in stderr
    assert "FAILED" not in stdout and "did not finish" not in stderr
    _assert_stopped_with_checkpoint(out / "ce_seed0", "SIGINT")
