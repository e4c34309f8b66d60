"""Runs that survive faults: SIGKILL anywhere, SIGINT/SIGTERM, one writer per run directory,
non-finite losses, empty classes, and a lost worker under torchrun."""

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes import tiny_overrides, torchrun_failure

from dbm_ltr import cli
from dbm_ltr.engine import CheckpointError, Trainer, TrainingError, load_config
from dbm_ltr.engine.checkpoint import load_checkpoint
from dbm_ltr.engine.rundir import RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DEMO = ["--config", "demo/dbm_ce", "--set", "optim.epochs=12", "train.deterministic=true"]


def quiet(_message):
    pass


def train_command(out, *extra):
    return [sys.executable, "-m", "dbm_ltr.cli", "train", "--out", str(out), *extra]


def final_state(run):
    state = load_checkpoint(Path(run) / "checkpoint.pt")
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    return state["method"], {k: metrics[k] for k in ("top1", "per_class", "epoch")}


def untimed_log(run):
    """log.jsonl's rows without their timings."""
    rows = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in rows]


def log_epochs(run):
    return [json.loads(line)["epoch"] for line in (Path(run) / "log.jsonl").read_text().splitlines()]


def wait_until(condition, process, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError("the condition never came true")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted digits run (12 epochs) every interrupted one must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(train_command(run, *DEMO), check=True, env=ENV, capture_output=True)
    return final_state(run)


def _line_count(run, n):
    path = Path(run) / "log.jsonl"
    return lambda: path.exists() and len(path.read_text().splitlines()) >= n


def _writing_checkpoint(run):
    return lambda: any(Path(run).glob(".checkpoint.pt.*.tmp"))


@pytest.mark.parametrize("moment", ["after 3 epochs", "while a checkpoint is written", "at a random time"])
def test_sigkill_anywhere_then_resume_gives_the_same_run(reference, tmp_path, moment):
    run = tmp_path / "run"
    process = subprocess.Popen(train_command(run, *DEMO), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if moment == "after 3 epochs":
        assert wait_until(_line_count(run, random.Random(1).randint(3, 9)), process)
    elif moment == "while a checkpoint is written":
        assert wait_until(_line_count(run, 2), process)
        if not wait_until(_writing_checkpoint(run), process):  # a write takes milliseconds
            pytest.skip("no checkpoint write was caught in progress on this file system")
    else:  # inside an epoch from the 4th to the 8th, timed by the pace of the one before
        draw = random.Random(2)
        line = draw.randint(3, 7)
        assert wait_until(_line_count(run, line - 1), process)
        begin = time.monotonic()
        assert wait_until(_line_count(run, line), process)
        time.sleep(draw.uniform(0.2, 0.8) * (time.monotonic() - begin))
    assert process.poll() is None, "the run ended before the kill: nothing was interrupted"
    process.kill()
    process.wait()
    resume = subprocess.run(train_command(run, "--resume"), env=ENV, capture_output=True, text=True)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert "resuming" in resume.stdout + resume.stderr
    weights, metrics = final_state(run)
    ref_weights, ref_metrics = reference
    assert metrics == ref_metrics
    for key in ref_weights:
        assert torch.equal(weights[key], ref_weights[key]), key
    assert log_epochs(run) == list(range(1, 13))  # every epoch once, in order


def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def signal_overrides(root):
    return tiny_overrides(root, epochs=2) + [
        "data.pipeline=loader",
        "data.workers=2",
        "optim.batch_size=8",
        "train.deterministic=true",
    ]


@pytest.fixture(scope="module")
def straight_loader_run(fake_cifar10, tmp_path_factory):
    """An uninterrupted 2-epoch CIFAR run with 2 loader workers."""
    run = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(
        train_command(run, "--config", "cifar10_lt/ce", "--set", *signal_overrides(fake_cifar10)),
        check=True,
        env=ENV,
        capture_output=True,
    )
    return run


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the loader's workers")
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_within_a_step_writes_a_checkpoint_and_ends_the_workers(
    fake_cifar10, straight_loader_run, tmp_path, signum, code
):
    """Mid-epoch: the run stops after the current step, writes a checkpoint that resumes at the
    next step, exits 128 + signal with the resume command, and no loader worker outlives it.
    The resumed run equals an uninterrupted one."""
    overrides, straight = signal_overrides(fake_cifar10), straight_loader_run
    run = tmp_path / "run"
    process = subprocess.Popen(
        train_command(run, "--config", "cifar10_lt/ce", "--set", *overrides),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(_line_count(run, 1), process)
    time.sleep(0.3)  # inside epoch 2
    workers = _children(process.pid)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err[-2000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"dbm-ltr train: stopped by {signal.Signals(signum).name} in epoch 2 after step ")
    assert message.endswith(f"checkpoint written; continue with: dbm-ltr train --out {run} --resume")
    assert workers and not any(_alive(pid) for pid in workers)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 1 and state["partial"]["epoch"] == 1 and 0 < state["partial"]["step"] < 20
    resumed = subprocess.run(train_command(run, "--resume"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert final_state(run)[1] == final_state(straight)[1]
    a, b = final_state(run)[0], final_state(straight)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert log_epochs(run) == [1, 2]


def test_one_writer_per_run_directory_and_no_stuck_lock(tmp_path, capsys):
    run = tmp_path / "run"
    process = subprocess.Popen(
        train_command(run, *DEMO[:2], "--set", "optim.epochs=400"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(_line_count(run, 1), process)
        assert cli.main(["train", "--out", str(run), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by another dbm-ltr process (pid {process.pid})" in err
        assert cli.main(["train", "--config", "demo/dbm_ce", "--out", str(run)]) == 2
        assert "is in use" in capsys.readouterr().err
    finally:
        process.kill()
        process.wait()
    RunLock(run).acquire().release()  # the killed holder left no stuck lock


def test_a_lock_file_removed_as_it_was_opened_is_not_the_lock(tmp_path, monkeypatch):
    """A process that opens RUN/.lock just as its holder removes it (a run that never started
    leaves nothing behind) would lock a file no one else can see: it starts again on the file
    at the path, which a third process would lock too."""
    from dbm_ltr.engine import rundir

    run = tmp_path / "run"
    run.mkdir()
    opened = []

    def open_then_removed(path, mode):
        handle = open(path, mode)
        if not opened:  # the first open: the holder unlinks the file right after
            Path(path).unlink()
        opened.append(path)
        return handle

    monkeypatch.setattr(rundir, "open", open_then_removed, raising=False)
    lock = RunLock(run).acquire()
    monkeypatch.undo()
    assert len(opened) == 2 and (run / ".lock").read_text() == str(os.getpid())
    with pytest.raises(CheckpointError, match="is in use by another dbm-ltr process"):
        RunLock(run).acquire()  # the file at the path is the one held
    lock.release()


def test_config_yaml_is_replaced_whole_or_not_at_all(fake_cifar10, tmp_path, monkeypatch):
    """``--resume`` without ``--config`` reads RUN/config.yaml: a write that fails (or is
    killed) midway leaves the previous file, not an empty or half one."""
    from dbm_ltr.engine import rundir

    path = tmp_path / "config.yaml"
    rundir.save_config(load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10)), path)
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        rundir.save_config(load_config("cifar10_lt/dbm_ce", tiny_overrides(fake_cifar10)), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_train_refuses_a_folder_that_is_not_a_run_and_resume_without_checkpoint(tmp_path, capsys):
    other = tmp_path / "analysis"
    other.mkdir()
    (other / "analysis.md").write_text("# not a run\n")
    assert cli.main(["train", "--config", "demo/dbm_ce", "--out", str(other)]) == 2
    assert "exists and is not a run directory" in capsys.readouterr().err
    assert cli.main(["train", "--config", "demo/dbm_ce", "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err


class _PoisonedLoss(torch.nn.Module):
    """Wraps a method: the loss is NaN at the given (epoch, step) pairs (1-based steps)."""

    def __init__(self, method, bad):
        super().__init__()
        self.method, self.bad, self.calls = method, set(bad), {}

    def forward(self, images, targets, epoch, **kw):
        out = self.method(images, targets, epoch, **kw)
        self.calls[epoch] = self.calls.get(epoch, 0) + 1
        if (epoch, self.calls[epoch]) in self.bad:
            return out._replace(loss=out.loss * float("nan"))
        return out


def test_nan_policy_skip_drops_and_counts_steps_and_stop_names_the_step(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=2) + ["train.nan_policy=skip"])
    trainer = Trainer(cfg, tmp_path / "skip", log=quiet)
    trainer.model = _PoisonedLoss(trainer.method, {(0, 2), (1, 1), (1, 4)})
    metrics = trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "skip" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 2]
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters()) and metrics["top1"] >= 0

    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=2))
    trainer = Trainer(cfg, tmp_path / "stop", log=quiet)
    trainer.model = _PoisonedLoss(trainer.method, {(1, 3)})
    with pytest.raises(TrainingError, match="non-finite .* in epoch 2 at step 3 of 5; .*train.nan_policy=skip"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "stop" / "checkpoint.pt")["epoch"] == 1  # the last good one


def test_an_empty_class_is_named_before_training(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10) + ["data.imbalance_factor=100"])
    with pytest.raises(ValueError, match=r"imbalance factor 100 leaves class\(es\) 8 \(class8\), 9 \(class9\) without"):
        Trainer(cfg, tmp_path / "run", log=quiet)


def test_auto_resume_continues_a_run_and_starts_a_new_one(fake_cifar10, tmp_path):
    overrides = tiny_overrides(fake_cifar10, epochs=2) + ["train.auto_resume=true"]
    cfg = load_config("cifar10_lt/ce", overrides)
    first = Trainer(cfg, tmp_path / "run", log=quiet)
    assert first.start_epoch == 0
    first.train_one_epoch(0)
    first.history.append({"epoch": 1})
    first._save(1)
    first.close()
    again = Trainer(cfg, tmp_path / "run", log=quiet)  # no --resume: auto_resume finds the checkpoint
    assert again.start_epoch == 1
    again.close()


def _rank_pids(parent):
    """pid -> RANK of torchrun's worker processes."""
    out = {}
    for pid in _children(parent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[pid] = int(item[5:])
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the workers")
def test_torchrun_restarts_a_lost_worker_and_the_run_resumes_by_itself(fake_cifar10, tmp_path):
    """Two gloo processes; rank 1 is SIGKILLed in epoch 2; torchrun (--max-restarts 1) starts
    both again and train.auto_resume continues from the last checkpoint to the same result."""
    overrides = tiny_overrides(fake_cifar10, epochs=3) + [
        "train.device=cpu",
        "train.auto_resume=true",
        "train.deterministic=true",
        "optim.batch_size=16",
    ]

    def command(run, restarts):
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            f"--max-restarts={restarts}",
            "-m",
            "dbm_ltr.cli",
            "train",
            "--config",
            "cifar10_lt/ce",
            "--out",
            str(run),
            "--set",
            *overrides,
        ]

    straight = subprocess.run(command(tmp_path / "straight", 0), env=ENV, capture_output=True, text=True)
    assert straight.returncode == 0, torchrun_failure(straight)
    run = tmp_path / "run"
    process = subprocess.Popen(command(run, 1), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks = {}  # found first, so that the kill follows the first epoch's log line at once
    wait_until(lambda: len(ranks.update(_rank_pids(process.pid)) or ranks) == 2, process)
    victim = next(pid for pid, rank in ranks.items() if rank == 1)
    wait_until(_line_count(run, 1), process)
    os.kill(victim, signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, torchrun_failure(
        subprocess.CompletedProcess(process.args, process.returncode, out, err)
    )
    assert "resuming" in out
    (weights, metrics), (weights_straight, metrics_straight) = final_state(run), final_state(tmp_path / "straight")
    assert metrics == metrics_straight
    assert weights.keys() == weights_straight.keys()
    assert all(torch.equal(weights[k], weights_straight[k]) for k in weights)  # momentum restored: bit for bit
    assert untimed_log(run) == untimed_log(tmp_path / "straight") and log_epochs(run) == [1, 2, 3]


@pytest.mark.parametrize("seed", [0])
def test_fuzzed_settings_end_in_a_one_line_error_or_a_valid_plan(tmp_path, capsys, seed, fake_cifar10):
    """A few hundred random keys, values and types through --set and through config files:
    every one is accepted (the sweep's dry run validates it, builds the method and loads the
    data) or ends in a one-line error, never a traceback."""
    data = [f"data.root={fake_cifar10}", "data.imbalance_factor=10"]  # the fuzzed settings may change them
    rng = random.Random(seed)
    keys = [
        "optim.lr",
        "optim.epochs",
        "optim.batch_size",
        "optim.schedule",
        "optim.milestones",
        "optim.warmup_epochs",
        "optim.momentum",
        "data.imbalance_factor",
        "data.workers",
        "data.pipeline",
        "data.name",
        "model.name",
        "model.classifier",
        "loss.name",
        "loss.max_margin",
        "loss.tau",
        "loss.scale",
        "loss.base",
        "loss.instance_margin",
        "method.name",
        "method.alpha",
        "train.seed",
        "train.amp",
        "train.nan_policy",
        "train.eval_every",
        "max_margin",
        "tau",
        "optim",
        "loss",
        "name",
        "paper",
        "data.root",
        "bogus.key",
        "optim.bogus",
        "epochs",
        "seed",
    ]
    values = [
        "0",
        "-1",
        "1e9",
        "0.5",
        "nan",
        "inf",
        "true",
        "no",
        "''",
        "[1, 2]",
        "{a: 1}",
        "cosine",
        "x",
        "resnet32",
        "dbm",
        "bs",
        "hard",
        "bcl",
        "cifar100_lt",
        "null",
        "[",
        "1e-3",
        "200",
        "'5e-4'",
    ]
    accepted = rejected = 0
    for case in range(300):
        items = [f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(1, 3))]
        if case % 3 == 0:  # the same through a config file
            config = tmp_path / f"c{case}.yaml"
            body = "\n".join(
                f"{i.split('=', 1)[0].replace('.', ': {', 1)}: {i.split('=', 1)[1]}}}"
                if "." in i.split("=", 1)[0]
                else f"{i.split('=', 1)[0]}: {i.split('=', 1)[1]}"
                for i in items
            )
            config.write_text("data: {name: cifar10_lt}\n" + body + "\n")
            argv = [
                "sweep",
                "--config",
                str(config),
                "--grid",
                "train.seed=0",
                "--out",
                str(tmp_path / "o"),
                "--dry-run",
                "--set",
                *data,
            ]
        else:
            argv = [
                "sweep",
                "--config",
                "cifar10_lt/dbm_ce",
                "--grid",
                "train.seed=0",
                "--out",
                str(tmp_path / "o"),
                "--dry-run",
                "--set",
                *data,
                *items,
            ]
        code = cli.main(argv)
        captured = capsys.readouterr()
        if code == 0:
            accepted += 1
            assert "dry run: nothing trained" in captured.out
        else:
            rejected += 1
            err = captured.err.strip().splitlines()
            assert code == 2 and len(err) == 1 and err[0].startswith("dbm-ltr sweep: error: "), (items, captured.err)
    assert accepted > 10 and rejected > 100


def test_a_stop_that_also_ended_the_loader_workers_checkpoints_the_finished_steps(fake_cifar10, tmp_path):
    """Ctrl-C in a terminal or a scheduler's SIGTERM reaches the loader's workers too; when they
    die before the next step boundary, the run still stops after its last finished step with a
    mid-epoch checkpoint, not with the loader's error."""
    from dbm_ltr.engine.signals import Interrupted

    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1) + ["data.pipeline=loader"])
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    real = trainer.pipeline.train_batches

    def workers_killed(epoch, start=0):
        batches, total = real(epoch, start)

        def stream():
            yield from itertools.islice(batches, 2)
            trainer._stop.signum = signal.SIGTERM  # the signal arrived ...
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")  # ... and killed them

        return stream(), total

    trainer.pipeline.train_batches = workers_killed
    with pytest.raises(Interrupted, match="in epoch 1 after step 2 of 5"):
        trainer.train_one_epoch(0)
    trainer.close()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["partial"]["step"] == 2
    other = Trainer(cfg, tmp_path / "other", log=quiet)  # without a stop the loader's error is the error

    def dead_workers():
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
        yield

    other.pipeline.train_batches = lambda epoch, start=0: (dead_workers(), 5)
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        other.train_one_epoch(0)
    other.close()
