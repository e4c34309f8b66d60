import csv
import json
import shutil

import pytest
import torch

from dbm_ltr import cli
from dbm_ltr.analysis import (
    RunError,
    analyze_runs,
    extract_features,
    load_run_method,
    run_features,
)
from dbm_ltr.engine import CheckpointError
from dbm_ltr.metrics import class_vector_cosines


def test_analyze_two_runs_writes_every_table_and_plot(tiny_runs, tmp_path, capsys):
    out = tmp_path / "compare"
    assert cli.main(["analyze", str(tiny_runs["ce"]), str(tiny_runs["dbm_ce"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in (
        "analysis.md",
        "angles.csv",
        "fisher.csv",
        "fisher_per_class.csv",
        "per_class_accuracy.csv",
        "analysis.json",
        "angles.png",
        "accuracy_vs_count.png",
        "confusion_ce.png",
        "confusion_dbm_ce.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert f"plot: {out / name}" in printed
    # markdown tables, runs side by side
    assert "| group | samples | ce | dbm_ce |" in printed
    assert "| group | ce | dbm_ce |" in printed
    assert (out / "analysis.md").read_text().count("| medium |") == 2

    data = json.loads((out / "analysis.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["ce", "dbm_ce"]
    for r in data["runs"]:
        metrics = json.loads((tiny_runs[r["label"]] / "metrics.json").read_text())
        # the features were extracted from the final checkpoint: same predictions as training's eval
        assert r["top1"] == pytest.approx(metrics["top1"], abs=1e-9)
        assert r["per_class_accuracy"] == pytest.approx(metrics["per_class"], abs=1e-9)
        assert r["angles"]["all"]["count"] == 100 and r["angles"]["many"]["count"] == 0
        assert r["angles"]["many"]["mean"] is None  # no class above 100 images on the fake set
        assert r["fisher"]["classes_used"] == 10 and r["fisher"]["all"] > 0
        assert len(r["confusion"]) == 10 and sum(map(sum, r["confusion"])) == 100
        # 10 test images a class: S_i + S_j has rank 18 at most, so auto projects to 18 dimensions
        assert r["fisher"]["dims"] == 18
        assert any("top 18 principal components of the 64-d features" in n and "rank 18" in n for n in r["notes"])
        _, method, _ = load_run_method(tiny_runs[r["label"]])
        assert r["class_vectors"] == pytest.approx(class_vector_cosines(method.class_weights()), abs=1e-6)
    assert "class-vector cosine mean / max" in printed

    rows = list(csv.DictReader(open(out / "angles.csv")))
    assert [(r["run"], r["group"]) for r in rows[:4]] == [("ce", g) for g in ("many", "medium", "few", "all")]
    per_class = list(csv.DictReader(open(out / "fisher_per_class.csv")))
    assert len(per_class) == 10 and per_class[0]["train_count"] == "40" and per_class[0]["group"] == "medium"
    assert float(per_class[0]["ce"]) > 0


def test_cosine_run_angles_match_its_predicted_cosines(tiny_runs):
    """For the cosine head the prediction is the raw cosine, so cos(angle) = score of the label."""
    feats = run_features(tiny_runs["dbm_ce"])
    config, method, _ = load_run_method(tiny_runs["dbm_ce"])
    from dbm_ltr.engine.build import load_datasets

    _, test_set = load_datasets(config, ("regular",), train=False)
    images = torch.stack([test_set[i][0] for i in range(len(test_set))])
    with torch.no_grad():
        cosines = method.predict(images)
    from dbm_ltr.metrics import feature_angles

    angles = feature_angles(feats.features, feats.weights, feats.labels)
    expected = torch.rad2deg(torch.arccos(cosines[torch.arange(100), feats.labels].double().clamp(-1, 1)))
    assert torch.allclose(angles, expected, atol=1e-3)
    assert torch.equal(feats.predictions, cosines.argmax(dim=1))
    assert feats.features.shape == (100, 64) and feats.features.dtype == torch.float32
    assert feats.weights.shape == (10, 64) and feats.epoch == 1 and feats.cls_num_list[0] == 40


def test_two_call_path_equals_the_shared_trunk_path(tiny_runs):
    """A method whose predict is not head(features) is run twice per batch; same results."""
    from dbm_ltr.engine.build import load_datasets

    config, method, _ = load_run_method(tiny_runs["ce"])
    _, test_set = load_datasets(config, ("regular",), train=False)

    class Wrapped(type(method)):
        def predict(self, images):  # same scores, but not the StandardMethod implementation
            return self.model(images)

    method.__class__ = Wrapped
    f2, y2, p2 = extract_features(method, test_set, batch_size=32)
    method.__class__ = Wrapped.__mro__[1]
    f1, y1, p1 = extract_features(method, test_set, batch_size=64)
    assert torch.allclose(f1, f2, atol=1e-5) and torch.equal(y1, y2) and torch.equal(p1, p2)
    assert not method.training


def test_default_output_folder_is_inside_the_first_run(tiny_runs, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(tiny_runs["ce"], run)
    assert cli.main(["analyze", str(run), "--split", "train", "--fisher-features", "l2"]) == 0
    data = json.loads((run / "analysis" / "analysis.json").read_text())
    assert data["options"]["split"] == "train" and data["options"]["fisher_normalization"] == "l2"
    assert data["runs"][0]["angles"]["all"]["count"] == 159  # the long-tailed training set
    assert "| copy |" in capsys.readouterr().out


def _one_error_line(capsys, command="analyze"):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"dbm-ltr {command}: error: ")
    return err[0]


def test_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["analyze", str(tmp_path / "nope")]) == 2
    line = _one_error_line(capsys)
    assert "no such run directory" in line and str(tmp_path / "nope") in line
    with pytest.raises(RunError, match="no such run directory"):
        analyze_runs([tmp_path / "nope"])


def test_foreign_directory_is_a_clear_error(tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    assert cli.main(["analyze", str(foreign)]) == 2
    line = _one_error_line(capsys)
    assert "is not a run directory" in line and str(foreign) in line
    afile = tmp_path / "notes.txt"
    afile.write_text("hi")
    assert cli.main(["analyze", str(afile)]) == 2
    assert "is not a directory" in _one_error_line(capsys)


def test_run_without_checkpoint_and_corrupted_checkpoint(tiny_runs, tmp_path, capsys):
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(tiny_runs["ce"], no_ckpt)
    (no_ckpt / "checkpoint.pt").unlink()
    assert cli.main(["analyze", str(no_ckpt)]) == 2
    assert "has no checkpoint.pt" in _one_error_line(capsys)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_runs["ce"], broken)
    data = (broken / "checkpoint.pt").read_bytes()
    (broken / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    assert cli.main(["analyze", str(tiny_runs["ce"]), str(broken)]) == 2
    line = _one_error_line(capsys)
    assert "is damaged or truncated" in line and "broken" in line
    with pytest.raises(CheckpointError):
        load_run_method(broken)
    assert not (tiny_runs["ce"] / "analysis").exists()  # nothing written for a failed analysis


def test_fisher_dims_projects_the_features_and_says_so(tiny_runs, tmp_path, capsys):
    """--fisher-dims N: the criterion on the top N principal components, named in the table, the
    CSV and a note; full: every dimension, with the note that the ridge sets J where the classes
    have too few samples; bad values are one line each."""
    out = tmp_path / "pca"
    assert cli.main(["analyze", str(tiny_runs["dbm_ce"]), "--out", str(out), "--fisher-dims", "5"]) == 0
    printed = capsys.readouterr()
    assert "| dimensions | 5 |" in printed.out
    assert "top 5 principal components of the 64-d features" in printed.err
    (row,) = csv.DictReader(open(out / "fisher.csv"))
    assert row["dims"] == "5" and float(row["all"]) > 0
    data = json.loads((out / "analysis.json").read_text())
    assert data["options"]["fisher_dims"] == 5 and data["runs"][0]["fisher"]["dims"] == 5

    assert (
        cli.main(["analyze", str(tiny_runs["dbm_ce"]), "--out", str(tmp_path / "full"), "--fisher-dims", "full"]) == 0
    )
    printed = capsys.readouterr()
    assert "| dimensions | 64 |" in printed.out and "principal components" not in printed.err
    assert "fewer than the 64 feature dimensions" in printed.err  # the ridge sets J: said so
    assert cli.main(["analyze", str(tiny_runs["dbm_ce"]), "--out", str(tmp_path / "x"), "--fisher-dims", "65"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # known once the features are extracted
    assert err[0].startswith("extracting test features") and len(err) == 2
    assert err[1].startswith("dbm-ltr analyze: error: --fisher-dims 65:") and "have 64 dimensions" in err[1]
    for bad in ("0", "many"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["analyze", str(tiny_runs["dbm_ce"]), "--fisher-dims", bad])
        assert exit_info.value.code == 2
        assert "expected auto, full or a positive number of dimensions" in capsys.readouterr().err


def test_analyze_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Fisher separability" in text and "--set" in text and "RUN_DIR" in text


def test_runs_with_different_class_sets_get_per_run_class_tables(tmp_path):
    from types import SimpleNamespace

    from dbm_ltr.analysis import RunFeatures, analyze_features, write_analysis

    def fake(c, n_per_class, counts):
        g = torch.Generator().manual_seed(c)
        labels = torch.arange(c).repeat_interleave(n_per_class)
        weights = torch.randn(c, 8, generator=g)
        feats = weights[labels] + 0.5 * torch.randn(len(labels), 8, generator=g)
        return RunFeatures(
            run_dir=tmp_path / f"r{c}",
            config=SimpleNamespace(name=f"fake{c}"),
            epoch=3,
            cls_num_list=counts,
            classes=[str(i) for i in range(c)],
            split="test",
            features=feats,
            labels=labels,
            predictions=(feats @ weights.T).argmax(1),
            weights=weights,
        )

    results = [
        analyze_features("three", fake(3, 20, [500, 50, 5])),
        analyze_features("four", fake(4, 20, [300, 120, 30, 8])),
    ]
    files = write_analysis(
        results, tmp_path / "out", {"split": "test", "fisher_ridge": 1e-6, "fisher_normalization": "raw"}
    )
    for label in ("three", "four"):
        assert files[f"fisher_per_class_csv:{label}"].is_file()
        assert files[f"per_class_accuracy_csv:{label}"].is_file()
        assert files[f"confusion_png:{label}"].is_file()
    assert results[1].angle_stats["many"]["count"] == 40 and results[0].angle_stats["few"]["count"] == 20
    assert results[0].top1 > 50 and results[0].notes == []
    # Table 6's groups follow the training counts (300, 120 | 30 | 8), not the 20 test images
    # each class has here (all of which would be medium)
    fisher = results[1].fisher
    s_i = fisher["per_class"]
    assert fisher["many"] == pytest.approx((s_i[0] + s_i[1]) / 2)
    assert fisher["medium"] == pytest.approx(s_i[2]) and fisher["few"] == pytest.approx(s_i[3])
    assert fisher["all"] == pytest.approx(sum(s_i) / 4)
    # --fisher-features l2: the criterion of the unit-norm feature rows, not of the raw ones
    run = fake(4, 20, [300, 120, 30, 8])
    l2 = analyze_features("four", run, fisher_normalization="l2").fisher
    unit = fake(4, 20, [300, 120, 30, 8])
    unit.features = torch.nn.functional.normalize(unit.features, dim=1)
    assert l2["per_class"] == pytest.approx(analyze_features("four", unit).fisher["per_class"])
    assert l2["all"] != pytest.approx(fisher["all"])


@pytest.mark.parametrize("decode,used", [("cpu", None), ("pil", None), ("device", "cpu")])
def test_features_decode_as_the_run_except_on_the_gpu(tiny_runs, monkeypatch, decode, used):
    """analyze reads images as the run did (data.decode=pil: the exact full-size decode); only
    GPU decoding becomes the CPU's. (A split-file run's setting, set here on a CIFAR run's config.)"""
    from dbm_ltr.analysis import features
    from dbm_ltr.engine import build

    real = features.load_run_method

    def with_decode(*args, **kwargs):
        config, method, state = real(*args, **kwargs)
        config.data.decode = decode
        return config, method, state

    class Seen(Exception):
        pass

    def spy(config, train, transform, **kwargs):
        raise Seen(kwargs.get("decode"))

    monkeypatch.setattr(features, "load_run_method", with_decode)
    monkeypatch.setattr(build, "build_dataset", spy)
    with pytest.raises(Seen) as seen:
        run_features(tiny_runs["ce"])
    assert seen.value.args == (used,)


def test_run_labels_tell_runs_apart(tmp_path):
    """The folder name; as many parent folders (for every run) as two runs sharing a name
    need; #1, #2 for one folder given twice."""
    from dbm_ltr.analysis.runs import run_labels

    a, b = tmp_path / "seed0" / "run", tmp_path / "seed1" / "run"
    assert run_labels([tmp_path / "ce", tmp_path / "dbm_ce"]) == ["ce", "dbm_ce"]
    assert run_labels([a, b, tmp_path / "other"]) == ["seed0/run", "seed1/run", f"{tmp_path.name}/other"]
    deep = [tmp_path / "x" / "seed0" / "run", tmp_path / "y" / "seed0" / "run"]
    assert run_labels(deep) == ["x/seed0/run", "y/seed0/run"]
    labels = run_labels([a, a])
    assert labels[0] != labels[1] and labels[0].endswith("#1") and labels[1].endswith("#2")
