"""Training images per second of every method relative to plain CE, through the engine.

    python benchmarks/methods_throughput.py --root ../shared/data [--images 1280] [--workers 2]

Each method trains ``--images`` images (``--images / --batch-size`` steps) of CIFAR-10-LT IF 100
(same batch size for all, default 64, full augmentation of each method's views) after a short
warm-up; the order is repeated ``--rounds`` times and the median kept. Multi-view methods
count an image once, however many views of it they forward. GML and DBM-GML distil a ResNet-56
teacher (a one-step teacher run made here: its weights do not change the speed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from dbm_ltr.engine import Trainer, load_config

PRESETS = ["ce", "dbm_ce", "bcl", "dbm_bcl", "gml", "dbm_gml", "ncl", "dbm_ncl"]


def common_overrides(args) -> list[str]:
    return [
        f"data.root={args.root}",
        f"data.workers={args.workers}",
        "train.progress=false",
        f"optim.batch_size={args.batch_size}",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "train.drop_last=false",
        f"data.pipeline={args.pipeline}",
    ]


def make_teacher(args, tmp: str) -> str:
    """A GML teacher run that counts as finished: one step of a 1-epoch gml_teacher run (its
    weights do not matter for speed)."""
    trainer = Trainer(
        load_config("cifar10_lt/gml_teacher", common_overrides(args)), f"{tmp}/teacher", log=lambda m: None
    )
    trainer.train_one_epoch(0, max_steps=1)
    trainer._save(1)
    return f"{tmp}/teacher"


def images_per_second(preset: str, args, tmp: str, teacher: str) -> float:
    overrides = common_overrides(args) + ([f"method.teacher={teacher}"] if preset.endswith("gml") else [])
    trainer = Trainer(load_config(f"cifar10_lt/{preset}", overrides), f"{tmp}/{preset}", log=lambda m: None)
    trainer.train_one_epoch(0, max_steps=2)  # warm-up: allocations, worker start-up
    return trainer.train_one_epoch(0, max_steps=max(1, args.images // args.batch_size))["images_per_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--pipeline", default="auto", help="data.pipeline of every run (auto, loader, device)")
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers, "
        f"batch {args.batch_size}, {args.images} images a pass"
    )
    rates: dict[str, list[float]] = {p: [] for p in args.presets}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = make_teacher(args, tmp) if any(p.endswith("gml") for p in args.presets) else ""
        for r in range(args.rounds):
            for preset in args.presets:
                rates[preset].append(images_per_second(preset, args, f"{tmp}/{r}", teacher))
                print(f"  round {r + 1}: {preset:8s} {rates[preset][-1]:7.1f} img/s", flush=True)
    base = statistics.median(rates[args.presets[0]])
    print(f"\n{'method':8s} {'img/s':>8s} {'vs ' + args.presets[0]:>8s}")
    for preset in args.presets:
        rate = statistics.median(rates[preset])
        print(f"{preset:8s} {rate:8.1f} {rate / base:8.2f}")


if __name__ == "__main__":
    main()
