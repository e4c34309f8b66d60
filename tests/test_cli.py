"""The command line: the README's main job, eval, and one-line errors instead of tracebacks."""

import json

import pytest
from fakes import tiny_settings, write_fake_cifar_npz

from dbm_ltr.cli import main

TINY = tiny_settings(epochs=1)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_fake_cifar_npz(tmp_path_factory.mktemp("c10"), 10, 40, 10)


def one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


def test_demo_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("CE", "DBM-CE", "BS", "DBM-BS"):
        assert f"\n  {name} " in out
    assert "many" in out and "few" in out
    metrics = json.loads((tmp_path / "dbm_ce_seed0" / "metrics.json").read_text())
    assert metrics["cls_num_list"] == [124, 88, 63, 45, 32, 23, 16, 12, 8, 6]


def test_train_then_eval(tmp_path, fake_root, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--config", "cifar10_lt/ce", "--out", str(run), "--set", f"data.root={fake_root}", *TINY]) == 0
    )
    assert "run directory" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt")]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["top1"] == json.loads((run / "metrics.json").read_text())["top1"]
    # resume of a finished run: nothing left to train, its metrics as they were
    before = (run / "metrics.json").read_text()
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert (run / "metrics.json").read_text() == before


def test_errors_are_one_line(tmp_path, fake_root, capsys):
    one_line_error(
        capsys,
        ["train", "--config", "cifar10_lt/ce", "--out", str(tmp_path / "a"), "--set", "optim.lrr=0.1"],
        "unknown config key optim.lrr (did you mean 'lr'?)",
    )
    err = one_line_error(
        capsys,
        ["train", "--config", "cifar100_lt/ce", "--out", str(tmp_path / "b"), "--set", f"data.root={tmp_path}"],
        str(tmp_path),
    )
    assert "download" in err and "cifar-100-python" in err
    one_line_error(capsys, ["train", "--config", "nope", "--out", str(tmp_path / "c")], "neither a file nor a preset")
    one_line_error(
        capsys,
        ["train", "--out", str(tmp_path / "d"), "--resume"],
        f"--resume without --config needs {tmp_path / 'd' / 'config.yaml'}; it does not exist",
    )
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    one_line_error(capsys, ["eval", "--checkpoint", str(bad)], "not a readable checkpoint")
    one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "missing.pt")], "no checkpoint at")
    one_line_error(
        capsys,
        [
            "train",
            "--config",
            "cifar10_lt/dbm_ce",
            "--out",
            str(tmp_path / "e"),
            "--set",
            f"data.root={fake_root}",
            "model.classifier=linear",
            *TINY,
        ],
        "set model.classifier=cosine",
    )


def test_help_is_instant_and_version_is_printed(capsys):
    """--help and usage errors do not import PyTorch (the package imports it lazily)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom dbm_ltr import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().endswith("False")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "dbm-ltr 0.1.0"


def test_presets_lists_names_and_paper_numbers(capsys):
    assert main(["presets", "cifar10_lt/dbm_bs"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("cifar10_lt/dbm_bs ") and "IF 100: 84.6" in line
    assert main(["presets", "no_such_thing"]) == 1


def test_the_smallest_real_run_needs_no_extra_settings(tmp_path, fake_root, capsys):
    """optim.epochs=1 with the preset's 5-epoch warm-up: the warm-up fits the run (a note,
    not an error); data.limit keeps the class proportions and is marked everywhere."""
    run = tmp_path / "run"
    argv = [
        "train",
        "--config",
        "cifar10_lt/dbm_ce",
        "--out",
        str(run),
        "--set",
        f"data.root={fake_root}",
        "optim.epochs=1",
        "data.limit=40",
        "data.workers=0",
        "train.progress=false",
        "data.imbalance_factor=10",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "warmup_epochs=5 is longer than the run (1 epoch)" in out and "data.limit=40" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["limit"] == 40 and sum(metrics["cls_num_list"]) <= 40
    assert metrics["cls_num_list"][0] > metrics["cls_num_list"][-1] >= 1  # still long-tailed, every class
    assert metrics["environment"]["torch"] and "dbm_ltr" in metrics["environment"]
    assert main(["report", str(run)]) == 0
    assert "(short; recipe 200, 40 training images)" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume"]) == 0  # finished: says so, trains nothing
    out = capsys.readouterr().out
    assert "is already finished (epoch 1/1); its metrics:" in out and str(run / "metrics.json") in out


def test_eval_takes_a_run_directory_from_another_working_directory(tmp_path, fake_root, capsys, monkeypatch):
    """The run records the absolute data root; a relative root that only exists from the run
    directory is found there too."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(fake_root, tmp_path / "data")
    run = tmp_path / "runs" / "r"
    assert main(["train", "--config", "cifar10_lt/ce", "--out", "runs/r", "--set", "data.root=data", *TINY]) == 0
    config = (run / "config.yaml").read_text()
    assert f"root: {tmp_path / 'data'}" in config  # stored absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text())["top1"] == json.loads((run / "metrics.json").read_text())["top1"]
    # a run directory moved together with its data, root given relative to the run
    moved = tmp_path / "moved"
    (moved / "runs").mkdir(parents=True)
    shutil.copytree(run, moved / "runs" / "r")
    shutil.copytree(tmp_path / "data", moved / "runs" / "r" / "data")
    assert main(["eval", "--checkpoint", str(moved / "runs" / "r"), "--set", "data.root=data"]) == 0


def test_interrupt_before_the_first_checkpoint_says_to_start_again(tmp_path, fake_root, capsys, monkeypatch):
    from dbm_ltr.engine import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "load_datasets", interrupted)
    assert (
        main(
            [
                "train",
                "--config",
                "cifar10_lt/ce",
                "--out",
                str(tmp_path / "r"),
                "--set",
                f"data.root={fake_root}",
                *TINY,
            ]
        )
        == 130
    )
    err = capsys.readouterr().err
    assert "nothing was saved yet, start again with: dbm-ltr train --config cifar10_lt/ce" in err
    assert "--resume" not in err


def test_checkpoints_are_readable_like_any_other_file(tmp_path):
    import os

    from dbm_ltr.engine.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        save_checkpoint({"epoch": 1}, tmp_path / "checkpoint.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "checkpoint.sha256").stat().st_mode & 0o777 == 0o644


def test_demo_reports_each_run_and_says_what_it_replaces(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--epochs", "1", "--seeds", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("training CE, DBM-CE, BS, DBM-BS on long-tailed digits, 1 seed(s) each: 4 runs of 1 epoch")
    assert "  [1/4] CE      seed 0: top-1 " in out and "  [4/4] DBM-BS  seed 0: top-1 " in out
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"replacing 4 earlier demo run(s) in {tmp_path}")


def test_missing_optional_dependency_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were not installed
    one_line_error(
        capsys,
        ["demo", "--out", str(tmp_path), "--epochs", "1", "--seeds", "1"],
        "the digits demo data set needs scikit-learn: pip install scikit-learn",
    )


def test_threads_and_loader_workers_follow_the_available_cores(tmp_path, fake_root):
    import torch

    from dbm_ltr.engine import Trainer, load_config
    from dbm_ltr.engine.distributed import available_cores, loader_workers

    assert loader_workers(-1) == min(4, available_cores()) and loader_workers(3) == 3
    assert load_config("cifar10_lt/ce").data.workers == -1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(available_cores() + 3)  # more than the process may use
        trainer = Trainer(load_config("cifar10_lt/ce", [f"data.root={fake_root}", *TINY]), tmp_path / "a")
        assert torch.get_num_threads() == available_cores()
        trainer.close()
        Trainer(
            load_config("cifar10_lt/ce", [f"data.root={fake_root}", "train.threads=1", *TINY]), tmp_path / "b"
        ).close()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_slurm_job_uses_the_cpus_it_was_given(monkeypatch):
    import os

    from dbm_ltr.engine.distributed import available_cores

    mask = len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")  # Slurm without core binding: the mask is the machine's
    assert available_cores() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(mask + 8))  # never more than the mask
    assert available_cores() == mask
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "")
    assert available_cores() == mask
