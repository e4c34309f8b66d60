"""Fake data sets in the real on-disk formats, for tests that must not touch the network, and
the settings and failure reports of the short runs the tests launch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def write_fake_cifar_npz(
    root: Path,
    num_classes: int = 10,
    train_per_class: int = 40,
    test_per_class: int = 10,
    seed: int = 0,
) -> Path:
    """``root/cifar10_train.npz`` + ``cifar10_test.npz`` (or ``cifar100_*``) in the format of
    ../shared/data: ``images`` (N, 32, 32, 3) uint8, ``labels`` (N,) int64, ``classes``.
    Images are noise around a per-class colour, so a model can learn something."""
    rng = np.random.RandomState(seed)
    prefix = "cifar10" if num_classes == 10 else "cifar100"
    colours = rng.randint(0, 256, size=(num_classes, 3))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(num_classes), per_class)
        rng.shuffle(labels)
        noise = rng.randint(-40, 41, size=(len(labels), 32, 32, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        np.savez(
            root / f"{prefix}_{split}.npz",
            images=images,
            labels=labels.astype(np.int64),
            classes=np.array([f"class{c}" for c in range(num_classes)]),
        )
    return root


def tiny_settings(epochs=2) -> list[str]:
    """The settings of a seconds-long CIFAR-10-LT run, IF 10 (159 images), without the data root."""
    return [
        f"optim.epochs={epochs}",
        "optim.warmup_epochs=1",
        "data.imbalance_factor=10",
        "data.workers=0",
        "optim.batch_size=32",
        "train.progress=false",
        "data.eval_batch_size=100",
    ]


def tiny_overrides(root, epochs=2) -> list[str]:
    """A seconds-long CIFAR-10-LT run on the fake set: IF 10 (159 images), ``epochs`` epochs."""
    return [f"data.root={root}", *tiny_settings(epochs)]


def torchrun_failure(result) -> str:
    """An assertion message for a torchrun that failed: the workers' own last words (a Python
    error, or the C++ ``terminate called ... what(): ...`` before a SIGABRT), which come before
    torchrun's summary and fall outside a plain tail of its stderr, then the tails of both
    streams (how far the run got)."""
    own = [
        line
        for line in result.stderr.splitlines()
        if re.search(r"terminate called|what\(\)|Error|^\[rank\d+\]|^dbm-ltr ", line)
    ]
    return "\n".join(
        ["workers:", *own[-40:], "stdout tail:", result.stdout[-1500:], "stderr tail:", result.stderr[-1500:]]
    )
