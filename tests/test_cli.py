"""The command line: the README's main job, eval, and one-line errors instead of tracebacks."""

import json

import pytest
from fakes import write_fake_cifar_npz

from dbm_ltr.cli import main

TINY = ["optim.epochs=1", "optim.warmup_epochs=1", "data.imbalance_factor=10", "data.workers=0",
        "optim.batch_size=32", "train.progress=false", "data.eval_batch_size=100"]


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
    assert main(["train", "--config", "cifar10_lt/ce", "--out", str(run), "--set", f"data.root={fake_root}", *TINY]) == 0
    assert "run directory" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt")]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["top1"] == json.loads((run / "metrics.json").read_text())["top1"]
    # resume of a finished run: nothing left to train, metrics rewritten
    assert main(["train", "--out", str(run), "--resume"]) == 0


def test_errors_are_one_line(tmp_path, fake_root, capsys):
    one_line_error(capsys, ["train", "--config", "cifar10_lt/ce", "--out", str(tmp_path / "a"),
                            "--set", "optim.lrr=0.1"], "unknown config key optim.lrr (did you mean 'lr'?)")
    err = one_line_error(capsys, ["train", "--config", "cifar100_lt/ce", "--out", str(tmp_path / "b"),
                                  "--set", f"data.root={tmp_path}"], str(tmp_path))
    assert "download" in err and "cifar-100-python" in err
    one_line_error(capsys, ["train", "--config", "nope", "--out", str(tmp_path / "c")], "neither a file nor a preset")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "d"), "--resume"], "config.yaml")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    one_line_error(capsys, ["eval", "--checkpoint", str(bad)], "not a readable checkpoint")
    one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "missing.pt")], "no checkpoint at")
    one_line_error(capsys, ["train", "--config", "cifar10_lt/dbm_ce", "--out", str(tmp_path / "e"),
                            "--set", f"data.root={fake_root}", "model.classifier=linear", *TINY],
                   "set model.classifier=cosine")
