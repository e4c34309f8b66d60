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
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def match_jpeg_copies(clean: np.ndarray, clean_labels: np.ndarray, full: np.ndarray,
                      full_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def predictions(run: str, data_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and labels of a run's checkpoint (its folder or the file) on the test
    split of ``data_root``, in the split's order."""
    import torch

    from dbm_ltr.data import DATASET_INFO
    from dbm_ltr.engine.checkpoint import load_checkpoint
    from dbm_ltr.engine.pipeline import EvalBatches, resolve_pipeline, to_device
    from dbm_ltr.engine.rundir import CHECKPOINT
    from dbm_ltr.engine.trainer import load_datasets, restore_method

    path = Path(run) / CHECKPOINT if Path(run).is_dir() else Path(run)
    config, method = restore_method(load_checkpoint(path), [f"data.root={data_root}"], source=str(path),
                                    run_dir=path.parent)
    _, test_set = load_datasets(config, ("regular",), train=False, defer_normalize=True)
    device = next(method.parameters()).device
    batches = EvalBatches(test_set, DATASET_INFO[config.data.name]["test_transform"], config.data.eval_batch_size,
                          device, resolve_pipeline(config, ("regular",), device))
    predicted, labels = [], []
    with torch.no_grad():
        for images, targets in batches:
            predicted.append(method.predict(to_device(images, device)).argmax(dim=1).cpu())
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
    return {"images": n, "clean": 100 * clean_right.mean(), "jpeg": 100 * jpeg_right.mean(),
            "only_clean": only_clean, "only_jpeg": only_jpeg, "difference": 100 * diff,
            "std_error": 100 * var**0.5}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data", help="folder with the CIFAR-10 archives")
    p.add_argument("--out", required=True, help="folder for the two data roots")
    p.add_argument("--runs", nargs="*", default=[], help="trained runs (folders or checkpoints) to compare on both")
    args = p.parse_args(argv)
    root, out = Path(args.root).resolve(), Path(args.out)
    lossless = np.load(root / "cifar10_test_subset_lossless.npz")
    full = np.load(root / "cifar10_test.npz")
    labels = lossless["labels"].astype(np.int64)
    match, error = match_jpeg_copies(lossless["images"], labels, full["images"], full["labels"])
    print(f"{len(set(match.tolist()))} distinct JPEG copies of {len(match)} images; mean absolute "
          f"difference {error.mean():.2f} grey levels (largest {error.max():.2f})")
    for name, images in (("clean", lossless["images"]), ("jpeg", full["images"][match])):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "cifar10_test.npz", images=images, labels=labels, classes=full["classes"])
        link = folder / "cifar10_train.npz"
        if not link.exists():
            os.symlink(root / "cifar10_train.npz", link)
    if args.runs:
        print("\n| run | top-1 clean | top-1 JPEG | right on clean only | right on JPEG only | clean - JPEG |")
        print("|---|---|---|---|---|---|")
    for run in args.runs:
        (clean, truth), (jpeg, truth_jpeg) = (predictions(run, out.resolve() / k) for k in ("clean", "jpeg"))
        assert np.array_equal(truth, truth_jpeg) and np.array_equal(truth, labels)
        r = paired_difference(clean == truth, jpeg == truth)
        print(f"| {run} | {r['clean']:.2f} | {r['jpeg']:.2f} | {r['only_clean']} | {r['only_jpeg']} | "
              f"{r['difference']:+.2f} +- {r['std_error']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
