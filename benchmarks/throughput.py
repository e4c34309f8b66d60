"""Training throughput of ResNet-32 on CIFAR-10-LT through the engine vs a bare PyTorch loop.

    python benchmarks/throughput.py --root ../shared/data [--epochs 1] [--workers 2]

Both train CE with a linear head on the same data set object (CIFAR-10-LT IF 100, 12,406
images, full augmentation: crop, flip, AutoAugment, Cutout), batch 64, SGD, the same PIL
loader pipeline with the same number of DataLoader workers and the same memory layout
(``train.channels_last``), alternating epochs so that drift of a shared machine hits both. It
prints images per second of each, their ratio (target: engine >= 0.95 x bare), and where a
step's time goes: the data pipeline alone (iterating the loader, no model) and the model
alone (forward+backward+step on a fixed batch, no loading).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dbm_ltr.engine import Trainer, load_config
from dbm_ltr.engine.build import to_layout
from dbm_ltr.engine.config import TrainConfig
from dbm_ltr.models import create_model


def plain_model(train: TrainConfig) -> torch.nn.Module:
    """ResNet-32 with a linear head, in the engine's memory layout (``train.channels_last``)."""
    return to_layout(create_model("resnet32", 10, "linear"), train)


def bare_epoch(dataset, batch_size: int, workers: int, seed: int, train: TrainConfig) -> float:
    """A plain training loop written out here; returns images per second."""
    torch.manual_seed(seed)
    model = plain_model(train)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    model.train()
    start, seen = time.perf_counter(), 0
    for images, targets in loader:
        loss = F.cross_entropy(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += targets.shape[0]
    return seen / (time.perf_counter() - start)


def engine_epoch(config, run_dir: str) -> float:
    trainer = Trainer(config, run_dir, log=lambda m: None)
    row = trainer.train_one_epoch(0)
    return row["images_per_s"], trainer


def data_only(dataset, batch_size: int, workers: int, batches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start, seen = time.perf_counter(), 0
    for i, (_, targets) in enumerate(loader):
        seen += targets.shape[0]
        if i + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


def compute_only(batch_size: int, steps: int, train: TrainConfig) -> float:
    model = plain_model(train)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data", help="folder with CIFAR-10")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each, alternating")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    overrides = [
        f"data.root={args.root}",
        f"data.workers={args.workers}",
        "train.progress=false",
        f"optim.batch_size={args.batch_size}",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "data.pipeline=loader",  # the bare loop's pipeline (device pipeline: gpu_throughput.py)
    ]
    config = load_config("cifar10_lt/ce", overrides)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers, "
        f"batch {args.batch_size}, {'channels-last' if config.train.channels_last else 'contiguous'} model"
    )
    engine_rates, bare_rates, dataset = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for epoch in range(args.epochs):
            rate, trainer = engine_epoch(config, f"{tmp}/engine{epoch}")
            engine_rates.append(rate)
            dataset = trainer.train_set
            bare_rates.append(bare_epoch(dataset, args.batch_size, args.workers, epoch, config.train))
            print(f"epoch {epoch + 1}: engine {engine_rates[-1]:7.1f} img/s   bare {bare_rates[-1]:7.1f} img/s")
    engine, bare = statistics.median(engine_rates), statistics.median(bare_rates)
    print(f"\n{len(dataset)} images/epoch (CIFAR-10-LT IF 100, full augmentation)")
    print(
        f"engine: {engine:.1f} img/s   bare loop: {bare:.1f} img/s   ratio {engine / bare:.3f} "
        f"(target >= 0.95: {'ok' if engine / bare >= 0.95 else 'MISSED'})"
    )
    loading = data_only(dataset, args.batch_size, args.workers, batches=60)
    loading_main = data_only(dataset, args.batch_size, 0, batches=20)
    compute = compute_only(args.batch_size, steps=20, train=config.train)
    print(
        f"where the time goes: data pipeline alone {loading:.0f} img/s with {args.workers} "
        f"workers ({loading_main:.0f} img/s in the main process, i.e. "
        f"{1e3 * args.batch_size / loading_main:.0f} ms of augmentation per batch); "
        f"model alone {compute:.0f} img/s ({1e3 * args.batch_size / compute:.0f} ms per step)"
    )


if __name__ == "__main__":
    main()
