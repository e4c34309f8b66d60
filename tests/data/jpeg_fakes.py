"""Fake ImageNet-LT / iNaturalist 2018 trees of tiny JPEGs in the real layouts, for tests."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
from PIL import Image


def _wnid(c: int) -> str:
    return f"n{1440764 + 1000 * c:08d}"


def write_jpeg(path: Path, rng: np.random.RandomState, colour, size=None, quality: int = 90) -> None:
    """A small JPEG: a smooth gradient around ``colour`` plus a little noise."""
    w, h = size or (int(rng.randint(16, 41)), int(rng.randint(16, 41)))
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (40 * (xx / max(w - 1, 1)) - 20 + 30 * (yy / max(h - 1, 1)) - 15)[..., None]
    img = np.clip(np.asarray(colour)[None, None, :] + ramp + rng.randint(-6, 7, size=(h, w, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path, "JPEG", quality=quality)


def write_imagenet_lt(root, counts=(6, 4, 2), test_per_class=2, val_per_class=1, seed=0, split_dir=None):
    """ImageNet-LT layout: ``train/<wnid>/<wnid>_<k>.JPEG`` (train and val splits),
    ``val/<wnid>/ILSVRC2012_val_<k>.JPEG`` (test split) and ``ImageNet_LT_{train,val,test}.txt``
    in ``root`` (or ``split_dir``). Returns the lists written."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    colours = rng.randint(40, 216, size=(len(counts), 3))
    lists = {"train": [], "val": [], "test": []}
    k = 0
    for c, n in enumerate(counts):
        for i in range(n + val_per_class):
            rel = f"train/{_wnid(c)}/{_wnid(c)}_{i}.JPEG"
            write_jpeg(root / rel, rng, colours[c])
            lists["train" if i < n else "val"].append((rel, c))
        for i in range(test_per_class):
            k += 1
            rel = f"val/{_wnid(c)}/ILSVRC2012_val_{k:08d}.JPEG"
            write_jpeg(root / rel, rng, colours[c])
            lists["test"].append((rel, c))
    where = Path(split_dir) if split_dir else root
    where.mkdir(parents=True, exist_ok=True)
    for split, items in lists.items():
        order = rng.permutation(len(items))
        text = "".join(f"{items[j][0]} {items[j][1]}\n" for j in order)
        (where / f"ImageNet_LT_{split}.txt").write_text(text + "\n")  # a trailing blank line
    return types.SimpleNamespace(
        root=str(root), lists=lists, wnids=[_wnid(c) for c in range(len(counts))], split_dir=str(where)
    )


def write_inat(root, counts=(5, 3, 1, 1), val_per_class=2, seed=0, fmt="txt"):
    """iNaturalist 2018 layout: ``train_val2018/<super>/<id>/<hash>.jpg``, with
    ``iNaturalist18_{train,val}.txt`` (``fmt="txt"``) or ``{train,val}2018.json``."""
    root = Path(root)
    rng = np.random.RandomState(seed)
    colours = rng.randint(40, 216, size=(len(counts), 3))
    supers = ["Plantae", "Aves", "Insecta", "Fungi"]
    lists = {"train": [], "val": []}
    for c, n in enumerate(counts):
        for i in range(n + val_per_class):
            rel = f"train_val2018/{supers[c % 4]}/{c}/{rng.randint(16**8):08x}{i}.jpg"
            write_jpeg(root / rel, rng, colours[c])
            lists["train" if i < n else "val"].append((rel, c))
    if fmt == "txt":
        for split, items in lists.items():
            (root / f"iNaturalist18_{split}.txt").write_text("".join(f"{p} {y}\n" for p, y in items))
    else:
        next_id = 0
        for split, items in lists.items():
            images, anns = [], []
            for rel, y in items:
                images.append({"id": next_id, "file_name": rel, "width": 0, "height": 0})
                anns.append({"id": next_id, "image_id": next_id, "category_id": y})
                next_id += 1
            cats = [{"id": c, "name": f"species_{c}", "supercategory": supers[c % 4]} for c in range(len(counts))]
            (root / f"{split}2018.json").write_text(
                json.dumps({"images": images, "annotations": anns, "categories": cats})
            )
    return types.SimpleNamespace(root=str(root), lists=lists)


def rewrite_listing(path, transform_line):
    """Rewrite a split file line by line: ``transform_line(i, line) -> new line``."""
    lines = Path(path).read_text().splitlines()
    Path(path).write_text("".join(transform_line(i, line) + "\n" for i, line in enumerate(lines)))


def listed_path(root, split_file, line_index=0) -> str:
    line = [ln for ln in Path(split_file).read_text().splitlines() if ln.strip()][line_index]
    return os.path.join(str(root), line.rsplit(None, 1)[0])
