"""scripts/paired_clean_jpeg_test.py: each clean image finds its own noisy copy."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "paired_clean_jpeg_test.py"


def load():
    spec = importlib.util.spec_from_file_location("paired", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_clean_image_is_matched_to_its_noisy_copy_of_the_same_class(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    order = rng.permutation(12)
    noisy = np.clip(clean.astype(int) + rng.integers(-3, 4, clean.shape), 0, 255).astype(np.uint8)
    full, full_labels = noisy[order], labels[order]
    match, error = load().match_jpeg_copies(clean, labels, full, full_labels)
    np.testing.assert_array_equal(order[match], np.arange(12))
    assert (full_labels[match] == labels).all() and (error <= 3).all()


def test_writes_two_data_roots(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    classes = np.array(["a", "b", "c"])
    np.savez(tmp_path / "cifar10_test_subset_lossless.npz", images=images, labels=labels, classes=classes)
    np.savez(tmp_path / "cifar10_test.npz", images=images[::-1], labels=labels[::-1], classes=classes)
    np.savez(tmp_path / "cifar10_train.npz", images=images, labels=labels, classes=classes)
    assert load().main(["--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    clean = np.load(tmp_path / "out" / "clean" / "cifar10_test.npz")
    jpeg = np.load(tmp_path / "out" / "jpeg" / "cifar10_test.npz")
    np.testing.assert_array_equal(clean["images"], jpeg["images"])
    np.testing.assert_array_equal(clean["labels"], labels)
    assert (tmp_path / "out" / "jpeg" / "cifar10_train.npz").is_file()


def test_paired_difference_against_a_naive_reference():
    rng = np.random.default_rng(2)
    clean, jpeg = rng.random(200) < 0.8, rng.random(200) < 0.75
    r = load().paired_difference(clean, jpeg)
    d = clean.astype(float) - jpeg.astype(float)  # per image: +1, 0 or -1
    assert r["images"] == 200 and r["clean"] == 100 * clean.mean() and r["jpeg"] == 100 * jpeg.mean()
    assert r["only_clean"] == int((d == 1).sum()) and r["only_jpeg"] == int((d == -1).sum())
    assert np.isclose(r["difference"], 100 * d.mean())
    assert np.isclose(r["std_error"], 100 * d.std(ddof=1) / np.sqrt(len(d)))
    same = load().paired_difference(clean, clean)  # identical copies: no difference, no spread
    assert same["difference"] == 0 and same["std_error"] == 0 and same["only_clean"] == same["only_jpeg"] == 0


def test_compares_trained_runs_on_both_copies(tmp_path, fake_cifar10, capsys):
    """--runs: one trained run evaluated on both roots; its accuracy on the clean copy equals
    what `dbm-ltr eval` reports there, and the table row adds up."""
    from fakes import tiny_overrides

    from dbm_ltr.cli import main as cli
    from dbm_ltr.engine import Trainer, load_config

    test = np.load(fake_cifar10 / "cifar10_test.npz")
    rng = np.random.default_rng(3)
    root = tmp_path / "root"
    root.mkdir()
    np.savez(
        root / "cifar10_test_subset_lossless.npz",
        images=test["images"][:30],
        labels=test["labels"][:30],
        classes=test["classes"],
    )
    noisy = np.clip(test["images"].astype(int) + rng.integers(-20, 21, test["images"].shape), 0, 255)
    np.savez(root / "cifar10_test.npz", images=noisy.astype(np.uint8), labels=test["labels"], classes=test["classes"])
    (root / "cifar10_train.npz").symlink_to(fake_cifar10 / "cifar10_train.npz")
    run = tmp_path / "run"
    Trainer(load_config("cifar10_lt/dbm_ce", tiny_overrides(root, epochs=1)), run, log=lambda m: None).fit()
    script = load()
    assert script.main(["--root", str(root), "--out", str(tmp_path / "out"), "--runs", str(run)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    clean, jpeg, only_clean, only_jpeg = float(row[2]), float(row[3]), int(row[4]), int(row[5])
    for name, top1 in (("clean", clean), ("jpeg", jpeg)):
        out = tmp_path / f"{name}.json"
        cli(["eval", "--checkpoint", str(run), "--out", str(out), "--set", f"data.root={tmp_path / 'out' / name}"])
        assert abs(json.loads(out.read_text())["top1"] - top1) <= 0.005  # printed to 2 decimals
    assert abs(clean - jpeg - 100 * (only_clean - only_jpeg) / 30) <= 0.01


def test_train_subset_is_balanced_and_the_same_images_in_both_roots(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.array([0, 1, 1, 2, 0, 2, 1, 0, 2, 2] * 2)  # class counts 6, 6, 8
    originals = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    copies = np.clip(originals.astype(int) + rng.integers(-4, 5, originals.shape), 0, 255).astype(np.uint8)
    classes = np.array(["a", "b", "c"])
    all_labels = np.concatenate([labels, np.zeros(5, dtype=np.int64)])
    np.savez(
        tmp_path / "cifar10_train_subset_lossless.npz",
        images=originals,
        labels=labels,
        indices=np.arange(20),
        classes=classes,
        all_train_labels=all_labels,
    )
    np.savez(
        tmp_path / "cifar10_train.npz",
        images=np.concatenate([copies, np.zeros((5, 32, 32, 3), np.uint8)]),
        labels=all_labels,
        classes=classes,
    )
    subset = load().balanced_train_subset(tmp_path)
    assert np.bincount(subset["labels"]).tolist() == [6, 6, 6]
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:6] for c in range(3)]))  # first 6 of each class
    np.testing.assert_array_equal(subset["clean"], originals[keep])
    np.testing.assert_array_equal(subset["jpeg"], copies[keep])
    np.testing.assert_array_equal(subset["labels"], labels[keep])
    all_labels[3] = 1  # the two archives disagree
    np.savez(
        tmp_path / "cifar10_train.npz",
        images=np.concatenate([copies, np.zeros((5, 32, 32, 3), np.uint8)]),
        labels=all_labels,
        classes=classes,
    )
    with pytest.raises(SystemExit, match="disagree on the labels"):
        load().balanced_train_subset(tmp_path)
