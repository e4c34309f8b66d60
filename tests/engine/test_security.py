"""Opening someone else's run never runs their code: every checkpoint read (resume, eval,
analyze, export, a GML teacher, model.pretrained) uses the restricted unpickler; a file that
asks for a function is refused in one line and its payload never runs. Checkpoints of earlier
versions need an explicit --trust-checkpoint; weights travel pickle-free as safetensors."""

import hashlib
import io
import json
import os

import numpy as np
import pytest
import torch
from fakes import tiny_overrides

from dbm_ltr import cli
from dbm_ltr.engine import Trainer, load_config
from dbm_ltr.engine.checkpoint import load_checkpoint


def quiet(_message):
    pass


class Payload:
    """Unpickling this runs a shell command (the attack the restricted loader stops)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_state(path, state) -> None:
    """``state`` to ``path`` with its digest on record, as a tampered run directory would have."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path.write_bytes(data)
    (path.parent / "checkpoint.sha256").write_text(
        json.dumps({"latest": hashlib.sha256(data).hexdigest(), "previous": None})
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fake_cifar10):
    run = tmp_path_factory.mktemp("runs") / "ce"
    Trainer(load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1)), run, log=quiet).fit()
    return run


def poisoned_copy(source, dest, marker):
    import shutil

    shutil.copytree(source, dest)
    state = load_checkpoint(dest / "checkpoint.pt")
    state["note"] = Payload(marker)
    write_state(dest / "checkpoint.pt", state)
    (dest / "checkpoint.prev.pt").unlink(missing_ok=True)
    return dest


def one_line_refusal(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize("command", ["eval", "analyze", "resume", "export"])
def test_a_run_directory_with_code_in_its_checkpoint_is_refused(finished_run, fake_cifar10, tmp_path, capsys, command):
    marker = tmp_path / "PWNED"
    run = poisoned_copy(finished_run, tmp_path / "downloaded", marker)
    argv = {
        "eval": ["eval", "--checkpoint", str(run)],
        "analyze": ["analyze", str(run), "--out", str(tmp_path / "a")],
        "resume": ["train", "--out", str(run), "--resume"],
        "export": ["export", str(run), "--out", str(tmp_path / "w.safetensors")],
    }[command]
    err = one_line_refusal(
        capsys, cli.main(argv + (["--set", f"data.root={fake_cifar10}"] if command != "export" else []))
    )
    assert "may contain code and was not loaded" in err and "system" in err
    assert not marker.exists()  # the payload never ran
    torch.load(run / "checkpoint.pt", weights_only=False)  # the premise: the full unpickler runs it
    assert marker.exists()


def test_trust_lasts_one_command(finished_run, fake_cifar10, tmp_path, capsys, monkeypatch):
    """``--trust-checkpoint`` of one ``cli.main`` call (a notebook, a script) does not carry
    over to the next, whether the command succeeded, failed or raised: a poisoned run read
    afterwards is refused, its payload never runs. Overlapping blocks (threads) end trust only
    when the last one closes."""
    import shutil

    from dbm_ltr.serialization import trusted, trusting_checkpoints

    earlier = tmp_path / "earlier"
    shutil.copytree(finished_run, earlier)
    as_earlier_version(earlier / "checkpoint.pt")  # needs the full unpickler: trust is in effect
    argv = ["eval", "--checkpoint", str(earlier), "--set", f"data.root={fake_cifar10}"]
    assert cli.main(argv) == 2
    assert cli.main([*argv, "--trust-checkpoint"]) == 0
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing"), "--trust-checkpoint"]) == 2  # a failure
    assert not trusted()

    def broken(args):
        assert trusted()
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_dispatch", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main([*argv, "--trust-checkpoint"])
    monkeypatch.undo()
    assert not trusted()
    first, second = trusting_checkpoints(), trusting_checkpoints()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert trusted()  # the other block is still open
    second.__exit__(None, None, None)
    assert not trusted()
    capsys.readouterr()
    marker = tmp_path / "PWNED"
    run = poisoned_copy(finished_run, tmp_path / "downloaded", marker)
    err = one_line_refusal(capsys, cli.main(["eval", "--checkpoint", str(run), "--set", f"data.root={fake_cifar10}"]))
    assert "may contain code and was not loaded" in err and not marker.exists()


def test_a_teacher_with_code_is_refused(finished_run, fake_cifar10, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    teacher = poisoned_copy(finished_run, tmp_path / "teacher", marker)
    code = cli.main(
        [
            "train",
            "--config",
            "cifar10_lt/gml",
            "--out",
            str(tmp_path / "student"),
            "--set",
            *tiny_overrides(fake_cifar10, epochs=1),
            f"method.teacher={teacher}",
        ]
    )
    err = one_line_refusal(capsys, code)
    assert err.startswith("dbm-ltr train: error: method.teacher: ") and "may contain code" in err
    assert not marker.exists()


def test_pretrained_weights_with_code_are_refused(fake_cifar10, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    weights = tmp_path / "r32.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 3, 3), "extra": Payload(marker)}, weights)
    code = cli.main(
        [
            "train",
            "--config",
            "cifar10_lt/ce",
            "--out",
            str(tmp_path / "run"),
            "--set",
            *tiny_overrides(fake_cifar10, epochs=1),
            f"model.pretrained={weights}",
        ]
    )
    err = one_line_refusal(capsys, code)
    assert "pretrained weights" in err and "may contain code and was not loaded" in err
    assert not marker.exists()


def as_earlier_version(path) -> None:
    """Rewrite a checkpoint as dbm-ltr wrote it before format 3: NumPy's random state as the
    tuple np.random.get_state() returns (an array: NumPy globals in the pickle)."""
    state = load_checkpoint(path)
    rng = state["rng"]["numpy"]
    state["rng"]["numpy"] = (
        rng["name"],
        rng["keys"].numpy().astype(np.uint32),
        rng["pos"],
        rng["has_gauss"],
        rng["cached_gaussian"],
    )
    state["format_version"] = 2
    write_state(path, state)
    path.with_name("checkpoint.prev.pt").unlink(missing_ok=True)  # its digest is no longer on record


def test_an_earlier_checkpoint_needs_the_opt_in_and_then_resumes_exactly(fake_cifar10, tmp_path, capsys):
    overrides = tiny_overrides(fake_cifar10, epochs=2) + ["train.deterministic=true", "data.limit=60"]
    straight = Trainer(load_config("cifar10_lt/ce", overrides), tmp_path / "a", log=quiet)
    straight.fit()
    run = tmp_path / "b"
    interrupted = Trainer(load_config("cifar10_lt/ce", overrides), run, log=quiet)
    original = interrupted.train_one_epoch

    def stop_after_first(epoch):
        if epoch >= 1:
            raise KeyboardInterrupt
        return original(epoch)

    interrupted.train_one_epoch = stop_after_first
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    (run / "checkpoint.prev.pt").unlink(missing_ok=True)
    as_earlier_version(run / "checkpoint.pt")

    err = one_line_refusal(capsys, cli.main(["train", "--out", str(run), "--resume"]))
    assert "was written by an earlier dbm-ltr" in err and "--trust-checkpoint" in err and "numpy" in err
    assert cli.main(["train", "--out", str(run), "--resume", "--trust-checkpoint"]) == 0
    capsys.readouterr()
    resumed = load_checkpoint(run / "checkpoint.pt")  # rewritten: the safe loader reads it
    assert resumed["format_version"] == 3 and resumed["epoch"] == 2
    final = straight.method.state_dict()
    assert all(torch.equal(final[k], resumed["method"][k]) for k in final)


def test_exported_weights_evaluate_as_the_checkpoint_and_carry_no_pickle(finished_run, fake_cifar10, tmp_path, capsys):
    from safetensors import safe_open

    weights = tmp_path / "ce.safetensors"
    assert cli.main(["export", str(finished_run), "--out", str(weights)]) == 0
    assert "written: " in capsys.readouterr().out
    with safe_open(str(weights), framework="pt") as f:
        meta = json.loads(f.metadata()["dbm_ltr"])
        keys = set(f.keys())
    assert meta["format"] == "dbm-ltr weights" and meta["epoch"] == 1 and len(meta["cls_num_list"]) == 10
    assert keys == set(load_checkpoint(finished_run / "checkpoint.pt")["method"])
    outs = {}
    for name, source in (("pt", finished_run), ("st", weights)):
        out = tmp_path / f"{name}.json"
        assert (
            cli.main(["eval", "--checkpoint", str(source), "--out", str(out), "--set", f"data.root={fake_cifar10}"])
            == 0
        )
        outs[name] = json.loads(out.read_text())
    capsys.readouterr()
    assert outs["pt"]["top1"] == outs["st"]["top1"] and outs["pt"]["per_class"] == outs["st"]["per_class"]
    assert outs["st"]["reported"] == "exported weights after epoch 1"


def test_export_and_weights_errors_are_one_line(finished_run, tmp_path, capsys):
    from safetensors.torch import save_file

    one_line_refusal(capsys, cli.main(["export", str(finished_run), "--out", str(tmp_path / "w.pt")]))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    err = one_line_refusal(capsys, cli.main(["eval", "--checkpoint", str(foreign)]))
    assert "holds no dbm-ltr metadata; write one with dbm-ltr export RUN" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    assert "not a readable safetensors file" in one_line_refusal(capsys, cli.main(["eval", "--checkpoint", str(junk)]))
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    for command in (["export", str(finished_run)], ["eval", "--checkpoint", str(finished_run)]):
        err = one_line_refusal(capsys, cli.main([*command, "--out", str(folder)]))
        assert f"--out {folder} is a folder; name a file in it" in err  # said before any evaluation
    err = one_line_refusal(capsys, cli.main(["export", str(finished_run), "--out", "/proc/w.safetensors"]))
    assert "No such file or directory" in err
    nested = tmp_path / "new" / "deeper" / "w.safetensors"  # a missing folder is made
    assert cli.main(["export", str(finished_run), "--out", str(nested)]) == 0 and nested.is_file()


def test_reproduce_passes_the_opt_in_to_its_runs(tmp_path):
    from pathlib import Path

    from dbm_ltr.experiments.reproduce import ReproRun, _command
    from dbm_ltr.serialization import trusting_checkpoints

    run = ReproRun("ce", 0, "cifar10_lt/ce", Path(tmp_path / "ce_seed0"), [])
    with trusting_checkpoints():
        assert "--trust-checkpoint" in _command(run)
    assert "--trust-checkpoint" not in _command(run)


def test_upgrade_checkpoints_rewrites_an_earlier_run_for_the_safe_loader(finished_run, tmp_path, capsys):
    import importlib.util
    import shutil
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "upgrade_checkpoints.py"
    spec = importlib.util.spec_from_file_location("upgrade_checkpoints", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    run = tmp_path / "old"
    shutil.copytree(finished_run, run)
    before = load_checkpoint(run / "checkpoint.pt")
    as_earlier_version(run / "checkpoint.pt")
    with pytest.raises(Exception, match="written by an earlier dbm-ltr"):
        load_checkpoint(run / "checkpoint.pt")
    assert module.main([str(run)]) == 0
    assert "rewritten (format 3)" in capsys.readouterr().out
    after = load_checkpoint(run / "checkpoint.pt")  # safe loader, digest checked
    assert after["format_version"] == 3 and torch.equal(after["rng"]["numpy"]["keys"], before["rng"]["numpy"]["keys"])
    assert all(torch.equal(before["method"][k], after["method"][k]) for k in before["method"])
    assert module.main([str(run)]) == 0 and "already current" in capsys.readouterr().out
    assert json.loads((run / "checkpoint.sha256").read_text()).keys() == {"latest", "previous"}  # no "upgrading" left

    # killed after recording the new digest, before the file was replaced: the old file still verifies
    as_earlier_version(run / "checkpoint.pt")
    real = module.atomic_write

    def killed_at_the_file(path, data):
        if path.name == "checkpoint.pt":
            raise KeyboardInterrupt
        real(path, data)

    module.atomic_write = killed_at_the_file
    with pytest.raises(KeyboardInterrupt):
        module.main([str(run)])
    module.atomic_write = real
    with pytest.raises(Exception, match="written by an earlier dbm-ltr"):  # read, not refused as damaged
        load_checkpoint(run / "checkpoint.pt")
    assert module.main([str(run)]) == 0 and load_checkpoint(run / "checkpoint.pt")["format_version"] == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    assert module.main([str(empty)]) == 2 and f"no checkpoint.pt in {empty}" in capsys.readouterr().err
