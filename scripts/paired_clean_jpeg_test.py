"""Two CIFAR-10 data roots holding the same 1,000 test images, pixel-exact and JPEG-compressed,
to measure what the compression of ``../shared/data`` costs a trained model at test time:

    python scripts/paired_clean_jpeg_test.py --root ../shared/data --out data/paired
    dbm-ltr eval --checkpoint RUN --out clean.json --set data.root=data/paired/clean
    dbm-ltr eval --checkpoint RUN --out jpeg.json --set data.root=data/paired/jpeg

or, for the paired comparison of one or more trained runs in one go,

    python scripts/paired_clean_jpeg_test.py --root ../shared/data --out data/paired --runs RUN [RUN ...]

which prints, per run, the top-1 on both copies, the images only one copy gets right, and the
clean - JPEG difference with its paired standard error (the difference of two accuracies on
the same images varies far less than either accuracy).

``OUT/clean/cifar10_test.npz`` holds ``cifar10_test_subset_lossless.npz`` (test images 0..999,
pixel-exact); ``OUT/jpeg/cifar10_test.npz`` the JPEG-compressed copy of each from the full
``cifar10_test.npz`` (sorted by class, original order unknown), found as the image of the same
class with the least mean absolute difference. Both link ``cifar10_train.npz`` (the class
counts come from the training split). Prints the match's distinctness and mean / largest
difference in grey levels.

``--train-subset`` measures the training side too: both roots then get a balanced training
split of 3,660 images (366 a class) from the 4,000 pixel-exact training images, the originals
in ``clean/`` and their JPEG copies in ``jpeg/``, so the same recipe trains once on each
(``data.imbalance_factor=1``) and ``--runs`` evaluates every run on both test copies:

    python scripts/paired_clean_jpeg_test.py --root ../shared/data --out data/paired_train --train-subset
    dbm-ltr train --config cifar10_lt/dbm_ce --out runs/q_clean --set data.root=data/paired_train/clean \
        data.imbalance_factor=1 optim.epochs=30
    (the same with jpeg), then --runs runs/q_clean runs/q_jpeg
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def match_jpeg_copies(
    clean: np.ndarray, clean_labels: np.ndarray, full: np.ndarray, full_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each clean image, the index in ``full`` of the same-class image with the least mean
    absolute difference, and that difference."""
    match = np.empty(len(clean), dtype=np.int64)
    error = np.empty(len(clean))
    for c in np.unique(clean_labels):
        candidates = np.flatnonzero(full_labels == c)
        flat = full[candidates].reshape(len(candidates), -1).astype(np.int16)
        for k in np.flatnonzero(clean_labels == c):
            diff = np.abs(flat - clean[k].reshape(1, -1).astype(np.int16)).mean(axis=1)
            match[k], error[k] = candidates[diff.argmin()], diff.min()
    return match, error


def balanced_train_subset(root: Path) -> dict[str, np.ndarray]:
    """The pixel-exact training images 0..3999 (``cifar10_train_subset_lossless.npz``) and their
    JPEG copies (the same positions of ``cifar10_train.npz``, which keeps the original order),
    cut to the same number of images in every class (the first ones of each, in order):
    ``{"clean", "jpeg", "labels"}``."""
    lossless = np.load(root / "cifar10_train_subset_lossless.npz")
    full = np.load(root / "cifar10_train.npz")
    positions = lossless["indices"].astype(np.int64)
    labels = full["labels"][positions].astype(np.int64)
    if not np.array_equal(labels, lossless["all_train_labels"][positions]):
        raise SystemExit(f"{root}: the lossless training subset and cifar10_train.npz disagree on the labels")
    num_classes = len(full["classes"])
    per_class = np.bincount(labels, minlength=num_classes).min()
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]))
    return {"clean": lossless["images"][keep], "jpeg": full["images"][positions[keep]], "labels": labels[keep]}


def predictions(run: str, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and labels of a run's checkpoint (its folder or the file) on the test
    split of ``data_root``, in the split's order."""
    import torch

    from dbm_ltr.engine.build import load_datasets, restore_method
    from dbm_ltr.engine.checkpoint import load_checkpoint
    from dbm_ltr.engine.pipeline import build_pipeline
    from dbm_ltr.engine.rundir import CHECKPOINT

    path = Path(run) / CHECKPOINT if Path(run).is_dir() else Path(run)
    config, method = restore_method(
        load_checkpoint(path), [f"data.root={data_root}"], source=str(path), run_dir=path.parent
    )
    _, test_set = load_datasets(config, ("regular",), train=False, defer_normalize=True)
    device = next(method.parameters()).device
    pipeline = build_pipeline(config, ("regular",), None, test_set, device)
    predicted, labels = [], []
    with torch.no_grad():
        for images, targets in pipeline.eval_batches():
            predicted.append(method.predict(images).argmax(dim=1).cpu())
            labels.append(targets.cpu())
    return torch.cat(predicted).numpy(), torch.cat(labels).numpy()


def paired_difference(clean_right: np.ndarray, jpeg_right: np.ndarray) -> dict:
    """Top-1 (percent) on each copy of the same images, the discordant images (right on one copy
    only) and the clean - JPEG difference with its paired standard error (percentage points)."""
    n = len(clean_right)
    only_clean = int((clean_right & ~jpeg_right).sum())
    only_jpeg = int((jpeg_right & ~clean_right).sum())
    diff = (only_clean - only_jpeg) / n
    var = max(only_clean + only_jpeg - n * diff**2, 0.0) / (n * (n - 1)) if n > 1 else 0.0
    return {
        "images": n,
        "clean": 100 * clean_right.mean(),
        "jpeg": 100 * jpeg_right.mean(),
        "only_clean": only_clean,
        "only_jpeg": only_jpeg,
        "difference": 100 * diff,
        "std_error": 100 * var**0.5,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data", help="folder with the CIFAR-10 archives")
    p.add_argument("--out", required=True, help="folder for the two data roots")
    p.add_argument(
        "--train-subset",
        action="store_true",
        help="also give the two roots a balanced training split, pixel-exact in clean/ and its "
        "JPEG copy in jpeg/ (from the 4,000 lossless training images), to train on each",
    )
    p.add_argument("--runs", nargs="*", default=[], help="trained runs (folders or checkpoints) to compare on both")
    args = p.parse_args(argv)
    root, out = Path(args.root).resolve(), Path(args.out)
    lossless = np.load(root / "cifar10_test_subset_lossless.npz")
    full = np.load(root / "cifar10_test.npz")
    labels = lossless["labels"].astype(np.int64)
    match, error = match_jpeg_copies(lossless["images"], labels, full["images"], full["labels"])
    print(
        f"{len(set(match.tolist()))} distinct JPEG copies of {len(match)} images; mean absolute "
        f"difference {error.mean():.2f} grey levels (largest {error.max():.2f})"
    )
    train = balanced_train_subset(root) if args.train_subset else None
    for name, images in (("clean", lossless["images"]), ("jpeg", full["images"][match])):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "cifar10_test.npz", images=images, labels=labels, classes=full["classes"])
        link = folder / "cifar10_train.npz"
        if train is not None:
            link.unlink(missing_ok=True)
            np.savez(link, images=train[name], labels=train["labels"], classes=full["classes"])
        elif not link.exists():
            os.symlink(root / "cifar10_train.npz", link)
    if train is not None:
        print(
            f"training split: {len(train['labels'])} images ({np.bincount(train['labels']).min()} a class), the same "
            f"in both roots, pixel-exact in clean/, JPEG-compressed in jpeg/ (mean absolute difference "
            f"{np.abs(train['clean'].astype(np.int16) - train['jpeg']).mean():.2f} grey levels)"
        )
    if args.runs:
        print("\n| run | top-1 clean | top-1 JPEG | right on clean only | right on JPEG only | clean - JPEG |")
        print("|---|---|---|---|---|---|")
    for run in args.runs:
        (clean, truth), (jpeg, truth_jpeg) = (predictions(run, out.resolve() / k) for k in ("clean", "jpeg"))
        assert np.array_equal(truth, truth_jpeg) and np.array_equal(truth, labels)
        r = paired_difference(clean == truth, jpeg == truth)
        print(
            f"| {run} | {r['clean']:.2f} | {r['jpeg']:.2f} | {r['only_clean']} | {r['only_jpeg']} | "
            f"{r['difference']:+.2f} +- {r['std_error']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
