"""What the engine adds to a training step: the engine's step against a bare PyTorch loop's, with
a tiny model, where per-step Python and operator-dispatch costs dominate.

    python benchmarks/step_overhead.py [--steps 300] [--rounds 5] [--batch-size 64]

Both train a tiny model (``--model tiny``: flatten, linear 64 -> 32, ReLU, then the preset's
head; ``small_cnn``: the demo's CNN) on the digits of ``demo/ce`` and ``demo/dbm_ce``, one
fixed batch already in memory, so no data loading is timed: the engine through
``Trainer.train_one_epoch`` (its pipeline replaced by the fixed batch), the bare loop as a user
would write it (forward, loss, ``zero_grad``, ``backward``, SGD ``step``) with the same model,
loss and optimizer settings. Rounds alternate between the two; the table gives the median time
per step of each, their ratio (target: engine <= 1.15x bare) and the operators each step
dispatches (counted with a ``TorchDispatchMode``; the engine's own are the difference).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dbm_ltr.engine import Trainer, load_config
from dbm_ltr.engine.build import parameter_groups
from dbm_ltr.models import TRUNKS, register_trunk


class TinyTrunk(torch.nn.Module):
    """Flatten -> linear 64 -> 32 -> ReLU: a step of a few dozen small operators."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU())
        self.out_features = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched while active (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class FixedBatches:
    """Stands in for the pipeline's ``train_batches``: ``steps`` times the same batch."""

    def __init__(self, batch: tuple) -> None:
        self.batch, self.steps = batch, 0

    def __call__(self, epoch: int, start: int = 0):
        def stream():
            for _ in range(self.steps):
                yield self.batch

        return stream(), self.steps


def engine_and_batch(preset: str, model: str, batch_size: int, tmp: str) -> tuple[Trainer, tuple]:
    overrides = ["optim.epochs=1", "optim.warmup_epochs=0", f"optim.batch_size={batch_size}", "train.progress=false"]
    config = load_config(preset, overrides + [f"model.name={model}"])
    trainer = Trainer(config, f"{tmp}/{preset.replace('/', '_')}", log=lambda m: None)
    images = torch.stack([trainer.train_set[i][0] for i in range(batch_size)])
    targets = torch.tensor([trainer.train_set[i][1] for i in range(batch_size)])
    batch = (images.to(trainer.device), targets.to(trainer.device))
    trainer.pipeline.train_batches = FixedBatches(batch)
    return trainer, batch


def engine_steps(trainer: Trainer, steps: int) -> float:
    trainer.pipeline.train_batches.steps = steps
    begin = time.perf_counter()
    trainer.train_one_epoch(0, max_steps=steps)
    return (time.perf_counter() - begin) / steps


def bare_loop(trainer: Trainer):
    """A user's loop over the same method's model and loss, with the same optimizer settings."""
    o = trainer.config.optim
    model, loss = trainer.method.model, trainer.method.loss
    opt = torch.optim.SGD(
        parameter_groups(trainer.method, o.weight_decay), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )

    def step(images, targets):
        out = loss(model(images), targets, epoch=0)
        opt.zero_grad(set_to_none=True)
        out.backward()
        opt.step()

    return step


def bare_steps(step, batch, steps: int) -> float:
    begin = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    return (time.perf_counter() - begin) / steps


def count_ops(run) -> int:
    with CountOps() as mode:
        run()
    return mode.count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per timed round (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", choices=("tiny", "small_cnn"), default="tiny")
    args = parser.parse_args(argv)
    model = "small_cnn" if args.model == "small_cnn" else "tiny_trunk"
    if model not in TRUNKS:
        register_trunk(model, TinyTrunk)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ("demo/ce", "demo/dbm_ce"):
            trainer, batch = engine_and_batch(preset, model, args.batch_size, tmp)
            step = bare_loop(trainer)
            engine_steps(trainer, 20)  # warm-up: allocations, first dispatches
            bare_steps(step, batch, 20)
            engine, bare = [], []
            for _ in range(args.rounds):
                engine.append(engine_steps(trainer, args.steps))
                bare.append(bare_steps(step, batch, args.steps))
            ops_engine = count_ops(lambda: engine_steps(trainer, 1))
            ops_bare = count_ops(lambda: bare_steps(step, batch, 1))
            ops_model = count_ops(lambda: trainer.method.model(batch[0]).sum().backward())
            trainer.close()
            rows.append((preset, statistics.median(engine), statistics.median(bare), ops_engine, ops_bare, ops_model))
    print(
        f"model {args.model} on 8x8 digits, batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} rounds of {args.steps} steps"
    )
    print()
    print(
        "| preset | engine ms/step | bare loop ms/step | engine / bare | operators/step: engine | bare loop | "
        "engine's own | model fwd+bwd |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset, e, b, oe, ob, om in rows:
        print(f"| {preset} | {1e3 * e:.3f} | {1e3 * b:.3f} | {e / b:.3f} | {oe} | {ob} | {oe - ob} | {om} |")
    worst = max(e / b for _, e, b, *_ in rows)
    print()
    print(f"target: engine <= 1.15x the bare loop; worst here {worst:.3f}x")


if __name__ == "__main__":
    main()
