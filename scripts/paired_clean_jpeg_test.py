"""Two CIFAR-10 data roots holding the same 1,000 test images, pixel-exact and JPEG-compressed,
to measure what the compression of ``../shared/data`` costs a trained model at test time:

    python scripts/paired_clean_jpeg_test.py --root ../shared/data --out data/paired
    dbm-ltr eval --checkpoint RUN --out clean.json --set data.root=data/paired/clean
    dbm-ltr eval --checkpoint RUN --out jpeg.json --set data.root=data/paired/jpeg

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data", help="folder with the CIFAR-10 archives")
    p.add_argument("--out", required=True, help="folder for the two data roots")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
