"""Write CIFAR-10-LT (or CIFAR-100-LT) as JPEG files in the ImageNet-LT layout, so the
split-file pipeline (``data.name=imagenet_lt``, the fast JPEG path, the large-scale recipes)
can be tried end to end on a small data set:

    python scripts/cifar_to_imagenet_layout.py --root ../shared/data --out data/cifar10_lt_jpeg
    dbm-ltr train --config imagenet_lt/ce --set data.root=data/cifar10_lt_jpeg ...

Writes ``OUT/train/<class>/<class>_<k>.JPEG`` (the long-tailed training subset of
``create_dataset(dataset, root, train=True, imbalance_factor=IF)``, in its order),
``OUT/val/<class>/test_<k>.JPEG`` (the balanced test set) and the split files
``OUT/ImageNet_LT_train.txt`` / ``OUT/ImageNet_LT_test.txt`` (``relative/path label``).
``--size N`` upscales the 32x32 images to N x N (bicubic) first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dbm_ltr.data import create_dataset  # noqa: E402


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "class"


def write_split(dataset, out: Path, folder: str, stem: str, size: int, quality: int) -> list[str]:
    """Save every image of ``dataset`` (``.data`` (N, 32, 32, 3) uint8) as a JPEG; returns the
    ``relative/path label`` lines."""
    lines = []
    names = [_safe(c) for c in dataset.classes]
    counters = [0] * len(names)
    for image, label in zip(dataset.data, dataset.targets):
        k = counters[label]
        counters[label] += 1
        rel = f"{folder}/{names[label]}/{stem.format(cls=names[label], k=k)}.JPEG"
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(image)
        if size != img.size[0]:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        img.save(path, "JPEG", quality=quality)
        lines.append(f"{rel} {int(label)}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data", help="CIFAR data (torchvision folder or .npz archives)")
    p.add_argument("--out", required=True, help="output folder (the data.root of imagenet_lt)")
    p.add_argument("--dataset", default="cifar10_lt", choices=("cifar10_lt", "cifar100_lt"))
    p.add_argument("--imbalance-factor", type=float, default=100.0)
    p.add_argument("--size", type=int, default=32, help="side of the written images (32: no upscaling)")
    p.add_argument("--quality", type=int, default=95)
    args = p.parse_args(argv)
    if args.size < 1:
        p.error("--size must be positive")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = create_dataset(args.dataset, args.root, train=True, imbalance_factor=args.imbalance_factor)
    test = create_dataset(args.dataset, args.root, train=False)
    train_lines = write_split(train, out, "train", "{cls}_{k}", args.size, args.quality)
    test_lines = write_split(test, out, "val", "test_{k}", args.size, args.quality)
    (out / "ImageNet_LT_train.txt").write_text("\n".join(train_lines) + "\n")
    (out / "ImageNet_LT_test.txt").write_text("\n".join(test_lines) + "\n")
    print(
        f"{args.dataset} IF {args.imbalance_factor:g}: {len(train_lines)} training images "
        f"(per class {train.cls_num_list}) and {len(test_lines)} test images, {args.size}x{args.size} JPEG "
        f"(quality {args.quality}), in {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
