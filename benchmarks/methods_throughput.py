"""Training images per second of every method relative to plain CE, through the engine.

    python benchmarks/methods_throughput.py --root ../shared/data [--images 1280] [--workers 2]

Each method trains one pass over the same first ``--images`` images of CIFAR-10-LT IF 100
(same batch size for all, default 64, full augmentation of each method's views) after a short
warm-up; the order is repeated ``--rounds`` times and the median kept. Multi-view methods
count an image once, however many views of it they forward.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from torch.utils.data import Subset

from dbm_ltr.engine import Trainer, load_config

PRESETS = ["ce", "dbm_ce", "bcl", "dbm_bcl", "ncl", "dbm_ncl"]


def images_per_second(preset: str, args, tmp: str) -> float:
    overrides = [
        f"data.root={args.root}", f"data.workers={args.workers}", "train.progress=false",
        f"optim.batch_size={args.batch_size}", "optim.epochs=1", "optim.warmup_epochs=0",
        "train.drop_last=false",
    ]
    trainer = Trainer(load_config(f"cifar10_lt/{preset}", overrides), f"{tmp}/{preset}", log=lambda m: None)
    full = trainer.train_set
    trainer.train_set = Subset(full, range(2 * args.batch_size))
    trainer.train_one_epoch(0)  # warm-up: allocations, worker start-up
    trainer.train_set = Subset(full, range(min(args.images, len(full))))
    return trainer.train_one_epoch(0)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--images", type=int, default=1280)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers, "
          f"batch {args.batch_size}, {args.images} images a pass")
    rates: dict[str, list[float]] = {p: [] for p in args.presets}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for preset in args.presets:
                rates[preset].append(images_per_second(preset, args, f"{tmp}/{r}"))
                print(f"  round {r + 1}: {preset:8s} {rates[preset][-1]:7.1f} img/s", flush=True)
    base = statistics.median(rates[args.presets[0]])
    print(f"\n{'method':8s} {'img/s':>8s} {'vs ' + args.presets[0]:>8s}")
    for preset in args.presets:
        rate = statistics.median(rates[preset])
        print(f"{preset:8s} {rate:8.1f} {rate / base:8.2f}")


if __name__ == "__main__":
    main()
