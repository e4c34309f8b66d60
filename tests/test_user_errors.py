"""A new user's mistakes end in one line with a non-zero exit and nothing written where it
should not be: evaluating on another data set, downloading offline, an unwritable --out, a
sweep over missing data, a torchvision that does not fit torch; and the smaller corners of the
command line (presets, help texts, the test-split limit, reports of nested folders)."""

import json
import os
import urllib.error

import numpy as np
import pytest
import torch
from fakes import tiny_settings, write_fake_cifar_npz

from dbm_ltr.cli import main

TINY = tiny_settings(epochs=1)


def one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {
        "cifar10_lt": write_fake_cifar_npz(base / "c10", 10, 40, 10),
        "cifar100_lt": write_fake_cifar_npz(base / "c100", 100, 20, 2),
    }


@pytest.fixture(scope="module")
def runs(roots, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, root in roots.items():
        run = base / name
        assert main(["train", "--config", f"{name}/ce", "--out", str(run), "--set", f"data.root={root}", *TINY]) == 0
        out[name] = run
    return out


@pytest.mark.parametrize("trained,other", [("cifar100_lt", "cifar10_lt"), ("cifar10_lt", "cifar100_lt")])
def test_eval_refuses_another_data_set_both_ways(runs, roots, tmp_path, capsys, trained, other):
    capsys.readouterr()
    out = tmp_path / "eval.json"
    err = one_line_error(
        capsys,
        [
            "eval",
            "--checkpoint",
            str(runs[trained]),
            "--out",
            str(out),
            "--set",
            f"data.name={other}",
            f"data.root={roots[other]}",
        ],
        "was trained on",
    )
    assert f"evaluate it on {trained}" in err and not out.exists()


def test_eval_refuses_classes_of_other_names_and_records_its_data(runs, roots, tmp_path, capsys):
    capsys.readouterr()
    renamed = tmp_path / "renamed"
    write_fake_cifar_npz(renamed, 10, 40, 10)
    with np.load(renamed / "cifar10_test.npz") as a:
        parts = {k: a[k] for k in a.files}
    parts["classes"] = np.array([f"other{c}" for c in range(10)])
    np.savez(renamed / "cifar10_test.npz", **parts)
    one_line_error(
        capsys,
        [
            "eval",
            "--checkpoint",
            str(runs["cifar10_lt"]),
            "--out",
            str(tmp_path / "x.json"),
            "--set",
            f"data.root={renamed}",
        ],
        "other classes than those of cifar10_lt",
    )
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(runs["cifar10_lt"]), "--out", str(out)]) == 0
    data = json.loads(out.read_text())["data"]
    assert data == {"name": "cifar10_lt", "split": "test", "root": str(roots["cifar10_lt"].resolve()), "images": 100}


def test_analyze_refuses_runs_of_different_data_sets(runs, tmp_path, capsys):
    capsys.readouterr()
    one_line_error(
        capsys,
        ["analyze", str(runs["cifar10_lt"]), str(runs["cifar100_lt"]), "--out", str(tmp_path / "a")],
        "analyze compares runs of one data set",
    )
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("trained,other", [("cifar100_lt", "cifar10_lt"), ("cifar10_lt", "cifar100_lt")])
def test_analyze_refuses_another_data_set_both_ways(runs, roots, tmp_path, capsys, trained, other):
    """As eval: features of another data set's images are refused (fewer classes gave tables
    of nothing, more a crash)."""
    capsys.readouterr()
    argv = ["analyze", str(runs[trained]), "--out", str(tmp_path / "a")]
    assert main([*argv, "--set", f"data.name={other}", f"data.root={roots[other]}"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress line
    assert last.startswith("dbm-ltr analyze: error: ") and f"evaluate it on {trained}, the data set" in last, last


def test_eval_with_settings_that_change_the_model_names_them(runs, capsys):
    capsys.readouterr()
    one_line_error(
        capsys,
        ["eval", "--checkpoint", str(runs["cifar10_lt"]), "--set", "model.name=resnet56"],
        "holds another model than --set model.name=resnet56 makes (Missing key(s) in state_dict:",
    )


def test_eval_of_a_run_file_points_at_the_run_directory(runs, capsys):
    capsys.readouterr()
    err = one_line_error(
        capsys,
        ["eval", "--checkpoint", str(runs["cifar10_lt"] / "metrics.json")],
        "is a run's metrics.json, not a checkpoint; give the run directory",
    )
    assert "delete" not in err


def test_download_without_a_network_is_one_line(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    err = one_line_error(
        capsys,
        [
            "train",
            "--config",
            "cifar10_lt/ce",
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"data.root={tmp_path / 'data'}",
            "data.download=true",
            *TINY,
        ],
        "could not be downloaded into",
    )
    assert "no network" in err and "cifar-10-batches-py/" in err and "cifar10_train.npz" in err
    assert not (tmp_path / "run").exists()


def test_a_damaged_torchvision_file_is_named(tmp_path, capsys):
    from dbm_ltr.data import LongTailCIFAR10
    from dbm_ltr.errors import DatasetNotFoundError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ):
        (folder / name).write_bytes(b"not the real file")
    with pytest.raises(
        DatasetNotFoundError,
        match=r"cifar-10-batches-py/data_batch_1, .* fail\(s\) torchvision's md5 "
        r"check .*delete the folder and download it again",
    ):
        LongTailCIFAR10(tmp_path)


@pytest.mark.parametrize("where", ["/proc/nope", "file"])
def test_an_unwritable_out_is_one_line_and_leaves_nothing(roots, tmp_path, capsys, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = "/proc/nope/run" if where == "/proc/nope" else str(blocker / "run")
    one_line_error(
        capsys,
        ["train", "--config", "cifar10_lt/ce", "--out", out, "--set", f"data.root={roots['cifar10_lt']}", *TINY],
        "cannot create the run directory",
    )
    assert blocker.read_text() == "x"


def test_a_failed_start_leaves_no_lock_only_folder(tmp_path, capsys):
    run = tmp_path / "deep" / "run"
    one_line_error(
        capsys,
        ["train", "--config", "cifar10_lt/ce", "--out", str(run), "--set", f"data.root={tmp_path / 'missing'}", *TINY],
        "CIFAR-10 (train split) not found in",
    )
    assert not (tmp_path / "deep").exists()


def test_sweep_dry_run_checks_the_data(tmp_path, capsys):
    out = tmp_path / "sweep"
    one_line_error(
        capsys,
        [
            "sweep",
            "--config",
            "cifar10_lt/dbm_ce",
            "--grid",
            "max_margin=0.1,0.2",
            "--out",
            str(out),
            "--dry-run",
            "--set",
            f"data.root={tmp_path / 'missing'}",
        ],
        "CIFAR-10 (train split) not found in",
    )
    assert not out.exists()


def test_a_torchvision_that_does_not_fit_torch_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    err = one_line_error(
        capsys, ["train", "--config", "cifar10_lt/ce", "--out", str(tmp_path / "run")], "does not fit torch"
    )
    assert "pip install --force-reinstall --no-deps 'torchvision==0." in err
    assert main(["presets", "cifar10_lt/ce"]) == 0  # needs no PyTorch: still works


def test_test_limit_is_balanced_recorded_and_marked(roots, tmp_path, capsys):
    from dbm_ltr.analysis.report import report_markdown, summarize_runs

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                "cifar10_lt/ce",
                "--out",
                str(run),
                "--set",
                f"data.root={roots['cifar10_lt']}",
                *TINY,
                "data.test_limit=30",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_limit"] == 30
    # 3 test images a class: each class's accuracy a multiple of 1/3 (0, 33.3, 66.7 or 100 %)
    assert all(abs(v * 3 / 100 - round(v * 3 / 100)) < 1e-9 for v in metrics["per_class"])
    (row,) = summarize_runs([run])
    assert row.short and "30 test images" in row.epochs_text()
    assert "data.test_limit" in report_markdown([row])
    capsys.readouterr()
    one_line_error(
        capsys,
        [
            "train",
            "--config",
            "cifar10_lt/ce",
            "--out",
            str(tmp_path / "b"),
            "--set",
            f"data.root={roots['cifar10_lt']}",
            *TINY,
            "data.test_limit=5",
        ],
        "data.test_limit=5 cannot keep all 10 classes",
    )


def test_test_limit_selects_the_same_number_from_every_class(roots):
    from dbm_ltr.engine import load_config
    from dbm_ltr.engine.build import load_datasets

    config = load_config("cifar10_lt/ce", [f"data.root={roots['cifar10_lt']}", "data.test_limit=40", *TINY])
    _, test = load_datasets(config, ("regular",))
    assert len(test) == 40 and np.bincount(test.targets).tolist() == [4] * 10
    assert test.data.shape == (40, 32, 32, 3)  # the batched pipeline sees the selection too


def test_presets_are_aligned_instant_and_cut_with_an_ellipsis(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["presets", "cifar10_lt/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {line.index(" paper top-1") if " paper top-1" in line else line.index(" no paper") for line in lines}
    assert len(starts) == 1  # one column
    assert any(line.endswith("…") for line in lines) and all(len(line) <= 120 for line in lines)


@pytest.mark.parametrize("flags", [["--seeds", "0"], ["--epochs", "-1"]])
def test_demo_refuses_no_seeds_and_negative_epochs(tmp_path, capsys, flags):
    one_line_error(capsys, ["demo", "--out", str(tmp_path / "d"), *flags], "demo needs --seeds >= 1 and --epochs >= 0")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", ["eval", "demo"])
def test_eval_and_demo_help_say_what_they_do(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "example: dbm-ltr " + command in out
    if command == "eval":
        assert "optim.epochs" not in out and "not the checkpoint's is refused" in out


def test_report_finds_runs_in_nested_folders(runs, tmp_path, capsys):
    import shutil

    nested = tmp_path / "runs" / "demo"
    shutil.copytree(runs["cifar10_lt"], nested / "ce_seed0")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs")]) == 0
    assert "cifar10_lt/ce" in capsys.readouterr().out


@pytest.mark.parametrize(
    "factor,match",
    [
        ("20", "--imbalance-factor 20: the paper reports cifar10_lt/ce at imbalance factor 10, 50, 100 only"),
        ("0", "data.imbalance_factor must be >= 1, got 0.0"),  # not taken for "not given"
    ],
)
def test_reproduce_refuses_an_imbalance_factor_the_paper_does_not_report(roots, tmp_path, capsys, factor, match):
    one_line_error(
        capsys,
        [
            "reproduce",
            "--data",
            "cifar10_lt",
            "--imbalance-factor",
            factor,
            "--rows",
            "ce",
            "--out",
            str(tmp_path / "r"),
            "--dry-run",
            "--set",
            f"data.root={roots['cifar10_lt']}",
        ],
        match,
    )


def test_one_epoch_is_singular(roots, tmp_path):
    messages = []
    from dbm_ltr.engine import Trainer, load_config

    config = load_config("cifar10_lt/ce", [f"data.root={roots['cifar10_lt']}", *TINY, "data.limit=40"])
    Trainer(config, tmp_path / "run", log=messages.append).fit()
    assert ", 1 epoch, " in messages[0]
    assert any("data.limit=40" in m for m in messages)


def test_plots_mark_classes_at_zero(tmp_path, monkeypatch):
    """A class at 0 % has no visible bar: it gets a cross on the axis and a "0 %" legend entry;
    the bars are the accuracies, coloured by group, the line the training counts."""
    from dbm_ltr import figures

    drawn = []
    real = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or real(fig, path))
    path = figures.plot_per_class_accuracy([0.0, 50.0, 100.0], [300, 50, 2], tmp_path / "p.png", title="x")
    assert path.is_file() and path.stat().st_size > 0
    ax, twin = drawn[0].axes
    assert [b.get_height() for b in ax.patches] == [0.0, 50.0, 100.0]
    assert len({b.get_facecolor() for b in ax.patches}) == 3  # many, medium, few
    (crosses,) = ax.collections
    assert crosses.get_offsets()[:, 0].tolist() == [0.0]  # only the class at 0 %
    assert "0 %" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert list(twin.get_lines()[0].get_ydata()) == [300, 50, 2]
    figures.plot_per_class_accuracy([10.0, 50.0, 100.0], [300, 50, 2], tmp_path / "q.png")
    ax = drawn[1].axes[0]
    assert not ax.collections and "0 %" not in [t.get_text() for t in ax.get_legend().get_texts()]


def test_site_folder_is_ignored():
    root = os.path.join(os.path.dirname(__file__), "..")
    assert "site/" in open(os.path.join(root, ".gitignore")).read().split()


def test_a_negative_tau_is_refused_without_advice_to_lower_it():
    from dbm_ltr import DBMLoss

    with pytest.raises(ValueError, match="tau must be finite and >= 0") as err:
        DBMLoss([50, 5], tau=-1.0)
    assert "lower" not in str(err.value)
    assert torch.isfinite(DBMLoss([50, 5], tau=0.0).class_margin).all()
