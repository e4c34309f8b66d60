"""Images/s per CPU core of the JPEG input pipeline: torchvision's ``ImageFolder`` + PIL +
torchvision transforms (the usual baseline) vs the split-file data set with its fast path
(reduced-size decoding, uint8 tensor crops; :mod:`dbm_ltr.data.fastjpeg`), for the training
transform (RandomResizedCrop(224) + flip + normalise) and the evaluation transform
(Resize(256) + CenterCrop(224) + normalise).

Columns: the baseline; ``ours`` as the training engine runs it (uint8 images collated into
batches, each batch normalised by the consuming process: on a GPU machine that step runs on
the GPU, here it is counted on the CPU); ``ours, loader alone``: the same without that
normalisation, i.e. the work left on the loader's cores where the batches are normalised on
a GPU; ``ours, normalised per image`` (the recipe's default, float32 images from the loader);
``ours decode=pil`` (PIL decoding, as the engine with ``data.decode=pil``). Every column runs
through a ``DataLoader`` with batches of 32. The speed-ups are ``ours`` and ``ours, loader
alone`` against the baseline. Where CUDA is present, one more line per transform measures
``data.decode=device`` as the engine runs it: the loader reads the files, each batch is
decoded by nvJPEG and transformed on the GPU, then normalised there (images/s end to end, not
per core; an error is printed instead of a number, so the line doubles as a check of that path
on a new GPU machine).

    python benchmarks/jpeg_input.py                       # 400 JPEGs cut from real photos
    python benchmarks/jpeg_input.py --source cifar        # upscaled CIFAR-10 images
    python benchmarks/jpeg_input.py --images DIR          # your own JPEGs (any folder tree)
    python benchmarks/jpeg_input.py --workers 2           # DataLoader with 2 worker processes

Generated images: ``--count`` JPEGs (quality ``--quality``) of random sizes ``--min-size`` to
``--max-size`` px per side (ImageNet-like by default: 300-500), cut from the photographs
shipped with matplotlib / scikit-learn (random crops of at least half of each side, resized,
randomly mirrored) or, with ``--source cifar``, upscaled (bicubic) from
``../shared/data/cifar10_train.npz`` (smooth images: decode faster than photographs).

Per core: with ``--workers 0`` everything runs in this process on one thread (images/s = per
core); with ``--workers N`` the throughput of N loader processes divided by N. Each setting
runs ``--repeats`` passes over all images after one warm-up pass (files in the page cache);
the best pass counts.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dbm_ltr.data import IMAGENET_MEAN, IMAGENET_STD, batch_normalizer, build_transform, create_dataset  # noqa: E402
from dbm_ltr.data.fastjpeg import EncodedImage  # noqa: E402


def photo_sources() -> list[str]:
    """Real photographs shipped with installed packages (matplotlib, scikit-learn)."""
    found = []
    for module, pattern in (("matplotlib", "mpl-data/sample_data/*.jpg"), ("sklearn", "datasets/images/*.jpg")):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        found += sorted(glob.glob(os.path.join(os.path.dirname(mod.__file__), pattern)))
    return found


def generate(out: Path, count: int, source: str, lo: int, hi: int, quality: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs in ``out/train/c<k>/`` (10 folders, for ImageFolder)."""
    rng = np.random.RandomState(seed)
    if source == "photos":
        photos = [Image.open(p).convert("RGB") for p in photo_sources()]
        if not photos:
            raise SystemExit("no photographs found (matplotlib / scikit-learn sample images); use --source cifar")
    else:
        npz = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_train.npz"
        if not npz.is_file():
            raise SystemExit(f"{npz} not found; use --source photos or --images DIR")
        cifar = np.load(npz)["images"]
    files = []
    for k in range(count):
        w, h = int(rng.randint(lo, hi + 1)), int(rng.randint(lo, hi + 1))
        if source == "photos":
            photo = photos[k % len(photos)]
            pw, ph = photo.size
            cw, ch = int(rng.randint(pw // 2, pw + 1)), int(rng.randint(ph // 2, ph + 1))
            x, y = int(rng.randint(0, pw - cw + 1)), int(rng.randint(0, ph - ch + 1))
            img = photo.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
        else:
            img = Image.fromarray(cifar[rng.randint(len(cifar))]).resize((w, h), Image.Resampling.BICUBIC)
        if rng.rand() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = out / "train" / f"c{k % 10}" / f"img{k:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, "JPEG", quality=quality)
        files.append(path)
    return files


def write_split_files(root: Path, files: list[Path]) -> None:
    lines = "".join(
        f"{p.relative_to(root)} {int(p.parent.name[1:]) if p.parent.name[1:].isdigit() else 0}\n" for p in files
    )
    for split in ("train", "test"):
        (root / f"ImageNet_LT_{split}.txt").write_text(lines)


def folder_tree(images: Path, work: Path) -> tuple[Path, list[Path]]:
    """A tree ImageFolder and the split-file data set both read: symlinks to ``images``."""
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no .jpg / .jpeg files under {images}")
    out = []
    for k, p in enumerate(files):
        link = work / "train" / f"c{k % 10}" / f"img{k:05d}.JPEG"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p.resolve())
        out.append(link)
    return work, out


def baseline_transform(kind: str):
    from torchvision import transforms as T

    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if kind == "train":
        return T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])


def one_pass(dataset, workers: int, batch: int = 32, consumer: bool = True) -> float:
    """Images/s of one pass over ``dataset`` in batches, each batch normalised here when the
    data set's transform defers that (as the training engine does) and ``consumer`` is true."""
    from torch.utils.data import DataLoader

    normalize = batch_normalizer(dataset.transform) if consumer else None
    start = time.perf_counter()
    for images, _ in DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False):
        if normalize is not None:
            normalize(images)
    return len(dataset) / (time.perf_counter() - start)


def decode_alone(files: list[Path], repeats: int) -> float:
    """Best images/s of reading and decoding every file at full size (libjpeg-turbo through
    torchvision, as the fast path does), in this process: the share of the time neither
    pipeline can avoid."""
    best = 0.0
    for r in range(repeats + 1):
        start = time.perf_counter()
        for f in files:
            EncodedImage(str(f)).decode(1)
        if r:
            best = max(best, len(files) / (time.perf_counter() - start))
    return best


def device_decode_pass(dataset, workers: int, batch: int = 32) -> float:
    """Images/s of one pass with ``data.decode=device``, as the training engine runs it: the
    loader reads the files, the batch is decoded and transformed on the GPU and normalised there."""
    from torch.utils.data import DataLoader

    normalize = batch_normalizer(dataset.transform)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for images, targets in DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=dataset.collate_fn):
        images, targets = dataset.decode_batch(images, "cuda", targets)
        if normalize is not None:
            normalize(images)
    torch.cuda.synchronize()
    return len(dataset) / (time.perf_counter() - start)


def device_decode_line(root: Path, name: str, workers: int, repeats: int) -> str:
    """The ``decode=device`` measurement of one transform, or the error it raised."""
    try:
        dataset = create_dataset(
            "imagenet_lt", str(root), train=True, transform=build_transform(name, defer_normalize=True), decode="device"
        )
        rates = [device_decode_pass(dataset, workers) for _ in range(repeats + 1)]
        return f"{max(rates[1:]):.0f} images/s end to end (nvJPEG + GPU transform + normalisation)"
    except Exception as err:  # noqa: BLE001 - the benchmark reports whatever broke
        return f"FAILED: {type(err).__name__}: {err}"


def measure(columns, workers: int, repeats: int) -> list[float]:
    """Best images/s of each ``(data set, consumer normalises)`` column over ``repeats``
    passes, the columns interleaved (so that load from other processes hits all alike), after
    one warm-up pass each."""
    best = [0.0] * len(columns)
    for r in range(repeats + 1):
        for k, (dataset, consumer) in enumerate(columns):
            rate = one_pass(dataset, workers, consumer=consumer)
            if r:  # the first pass warms the page cache
                best[k] = max(best[k], rate)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", help="folder of JPEGs to use instead of generated ones")
    p.add_argument("--source", choices=("photos", "cifar"), default="photos")
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--min-size", type=int, default=300)
    p.add_argument("--max-size", type=int, default=500)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: this process)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--keep", help="write the generated images here (kept) instead of a temp folder")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1 (timed passes after the warm-up one), got {args.repeats}")

    torch.set_num_threads(1)
    from torchvision.datasets import ImageFolder

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        if args.images:
            root, files = folder_tree(Path(args.images), work)
            what = f"{len(files)} JPEGs from {args.images}"
        else:
            root, files = work, generate(work, args.count, args.source, args.min_size, args.max_size, args.quality)
            what = (
                f"{len(files)} JPEGs from {args.source}, {args.min_size}-{args.max_size} px a side, "
                f"quality {args.quality}"
            )
        write_split_files(root, files)
        sizes = np.array([Image.open(f).size for f in files])
        cores = max(args.workers, 1)
        print(
            f"{what}; mean size {sizes[:, 0].mean():.0f} x {sizes[:, 1].mean():.0f}, "
            f"{sum(os.path.getsize(f) for f in files) / len(files) / 1024:.0f} KiB a file"
        )
        print(
            f"{'workers: ' + str(args.workers) if args.workers else 'single process, 1 thread'}; "
            f"images/s per core (best of {args.repeats} interleaved passes)\n"
        )
        print(
            f"{'transform':10s} {'ImageFolder+PIL':>16s} {'ours':>6s} {'ours, loader alone':>19s} "
            f"{'ours, normalised per image':>27s} {'ours decode=pil':>16s} {'speed-up (ours)':>16s} "
            f"{'(loader alone)':>15s}"
        )
        for kind, name in (("train", "imagenet_train"), ("test", "imagenet_test")):
            base = ImageFolder(str(root / "train"), transform=baseline_transform(kind))
            ours, per_image, plain = (
                create_dataset("imagenet_lt", str(root), train=True, transform=build_transform(name, defer_normalize=d))
                for d in (True, False, True)
            )
            plain.decode = "pil"
            columns = [(base, True), (ours, True), (ours, False), (per_image, True), (plain, True)]
            rates = [r / cores for r in measure(columns, args.workers, args.repeats)]
            print(
                f"{kind:10s} {rates[0]:16.0f} {rates[1]:6.0f} {rates[2]:19.0f} {rates[3]:27.0f} "
                f"{rates[4]:16.0f} {rates[1] / rates[0]:15.2f}x {rates[2] / rates[0]:14.2f}x"
            )
            if torch.cuda.is_available():
                print(
                    f"{kind:10s} decode=device on {torch.cuda.get_device_name()}: "
                    f"{device_decode_line(root, name, args.workers, args.repeats)}"
                )
        rate = decode_alone(files, args.repeats)
        print(
            f"\nread + full-size decode alone (this process, 1 thread): {rate:.0f} images/s, "
            f"{1000 / rate:.2f} ms an image"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
