"""Training throughput of ResNet-32 on CIFAR-10-LT: input pipelines, the train step, packed runs.

    python benchmarks/gpu_throughput.py --root ../shared/data [--steps 150] [--jobs 1,2,4,8]
        [--only pipelines,eager,packed,compiled]

On whatever device is present (CUDA if available, else the CPU), it measures images per
second of

* the loader pipeline alone: a DataLoader with ``--workers`` processes running the PIL recipe
  (crop, flip, AutoAugment, Cutout), no model;
* the device pipeline alone: the same recipe batched on the device (``data.pipeline=device``);
* the full train step through the engine (``Trainer.train_one_epoch``: augmentation, forward,
  backward, SGD step; the steady rate, without the pipeline's start-up): eager fp32 with each
  pipeline, then with the device pipeline eager with AMP (``train.amp``: bfloat16) and, last,
  compiled (``train.compile``) in fp32, with AMP and with CUDA graphs
  (``train.compile_mode=reduce-overhead``);
* the aggregate of ``--jobs`` packed runs: that many engine processes training at once on the
  one device, each ``--steps`` steps after a warm-up, started together (the timed call
  includes the start of each run's input pipeline: the loader's workers, if that pipeline).

``--only`` picks the row groups (pipelines, eager, packed, compiled); the order stays the one
above, the compiled rows last, since compiling takes the longest.

Batch 64 (the Table 2 recipe), CE with a linear head. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dbm_ltr.engine import Trainer, load_config
from dbm_ltr.engine.pipeline import DeviceBatches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer(args, tmp: str, name: str, *extra: str) -> Trainer:
    overrides = [
        f"data.root={args.root}",
        f"data.workers={args.workers}",
        "train.progress=false",
        f"optim.batch_size={args.batch_size}",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        *extra,
    ]
    return Trainer(load_config("cifar10_lt/ce", overrides), f"{tmp}/{name}", log=lambda m: None)


def loader_alone(t: Trainer, args) -> float:
    loader = DataLoader(
        t.train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, persistent_workers=False
    )
    it = iter(loader)
    next(it)  # worker start-up
    start, seen = time.perf_counter(), 0
    for _ in range(args.steps):
        try:
            _, y = next(it)
        except StopIteration:
            it = iter(loader)
            _, y = next(it)
        seen += y.shape[0]
    return seen / (time.perf_counter() - start)


def device_alone(t: Trainer, args) -> float:
    """Batches of the device pipeline, no model; it augments a chunk of batches at a time, so
    whole chunks are timed (at least ``--steps`` batches), after one chunk of warm-up."""
    batches = DeviceBatches(t.train_set, ["cifar"], args.batch_size, t.device)
    g = torch.Generator().manual_seed(0)
    n = len(t.train_set)
    per_epoch = max(1, n // args.batch_size)
    steps = -(-args.steps // batches.chunk_batches) * batches.chunk_batches

    def epoch(count):
        order, seed = torch.randperm(n, generator=g), int(torch.randint(2**62, (1,), generator=g))
        return batches.batches(order, seed, 0, count)

    for _ in epoch(min(per_epoch, batches.chunk_batches)):  # warm-up: one chunk
        pass
    _sync(t.device)
    start, seen = time.perf_counter(), 0
    while steps > 0:
        for _, y in epoch(min(per_epoch, steps)):
            seen += y.shape[0]
        steps -= min(per_epoch, steps)
    _sync(t.device)
    return seen / (time.perf_counter() - start)


def step_rate(args, tmp: str, name: str, *extra: str) -> float:
    """Images/s of the steady train step: each call of ``train_one_epoch`` starts its input
    pipeline afresh (the loader's worker processes, the device pipeline's first chunk), so the
    rate is that of the ``--steps`` steps by which a longer call outlasts a shorter one."""
    t = trainer(args, tmp, name, *extra)
    t.train_one_epoch(0, max_steps=args.warmup)  # allocations, cuDNN autotuning, compilation
    short = t.train_one_epoch(0, max_steps=args.warmup)
    long = t.train_one_epoch(0, max_steps=args.warmup + args.steps)
    images_short, images_long = (row["images_per_s"] * row["seconds"] for row in (short, long))
    if round(images_long) < (args.warmup + args.steps) * args.batch_size:
        raise RuntimeError(
            f"{name}: --warmup + --steps ({args.warmup + args.steps}) is more than an epoch's full batches "
            "(the last one is smaller, and a compiled step recompiles for it); lower --steps"
        )
    images = images_long - images_short
    seconds = long["seconds"] - short["seconds"]
    if seconds <= 0 or images <= 0:
        raise RuntimeError(f"{name}: {args.steps} more steps took no measurable time ({seconds:.4f} s); raise --steps")
    return images / seconds


def worker(args) -> None:
    """One packed run: warm up, wait for the start signal, train ``--steps`` steps."""
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer(args, tmp, "run", f"data.pipeline={args.pipeline}", *args.extra)
        t.train_one_epoch(0, max_steps=args.warmup)
        Path(args.ready).touch()
        while not Path(args.go).exists():
            time.sleep(0.01)
        start = time.time()
        row = t.train_one_epoch(0, max_steps=args.steps)
        end = time.time()
    print(json.dumps({"start": start, "end": end, "images": row["images_per_s"] * row["seconds"]}))


def packed(args, jobs: int, tmp: str) -> float:
    """Aggregate images/s of ``jobs`` engine processes training at once."""
    flags = [
        "--root",
        args.root,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
        "--pipeline",
        args.pipeline,
    ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // jobs))}
    go = Path(tmp) / f"go{jobs}"
    procs, ready = [], []
    for k in range(jobs):
        ready.append(Path(tmp) / f"ready{jobs}_{k}")
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--ready",
            str(ready[-1]),
            "--go",
            str(go),
            *flags,
            "--extra",
            *args.extra,
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env))
    while not all(r.exists() for r in ready):
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError("a packed run failed to start")
        time.sleep(0.05)
    go.touch()
    rows = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    return sum(r["images"] for r in rows) / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data", help="folder with CIFAR-10")
    parser.add_argument("--steps", type=int, default=100, help="measured steps of each row")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--jobs", default="1,2,4,8", help="packed-run counts (comma-separated)")
    parser.add_argument("--pipeline", default="auto", help="pipeline of the packed runs")
    parser.add_argument(
        "--only",
        default="pipelines,eager,packed,compiled",
        help="row groups to measure, in this order: pipelines (each alone), eager "
        "(train step, fp32 and amp), packed, compiled",
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {name}; torch {torch.__version__}; batch {args.batch_size}; {args.steps} steps a row; "
        f"{args.workers} loader workers; {torch.get_num_threads()} threads",
        flush=True,
    )
    rows = []

    def add(label: str, value: float) -> None:
        rows.append((label, value))
        print(f"  {label:55s} {value:10.0f} img/s", flush=True)

    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = groups - {"pipelines", "eager", "packed", "compiled"}
    if unknown:
        parser.error(
            f"--only: unknown row group(s) {', '.join(sorted(unknown))}; use pipelines, eager, packed, compiled"
        )
    end_to_end = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "pipelines" in groups:
                base = trainer(args, tmp, "base", "data.pipeline=loader")
                add(f"loader pipeline alone ({args.workers} workers)", loader_alone(base, args))
                add("device pipeline alone", device_alone(base, args))
                del base
            if "eager" in groups:
                for pipeline in ("loader", "device"):
                    end_to_end[pipeline] = step_rate(args, tmp, f"e2e_{pipeline}", f"data.pipeline={pipeline}")
                    add(f"train step, {pipeline} pipeline, eager, fp32", end_to_end[pipeline])
                end_to_end["amp"] = step_rate(args, tmp, "eager_amp", "data.pipeline=device", "train.amp=true")
                add("train step, device pipeline, eager, amp", end_to_end["amp"])
            for jobs in [int(j) for j in args.jobs.split(",") if j] if "packed" in groups else []:
                extra = ", " + " ".join(args.extra) if args.extra else ""
                add(f"packed runs x{jobs} ({args.pipeline} pipeline{extra}), aggregate", packed(args, jobs, tmp))
            # last: compiling takes the longest, and a time-boxed run loses these rows first
            if "compiled" in groups:
                for label, extra in [
                    ("compiled, fp32", ["train.compile=true"]),
                    ("compiled, amp", ["train.compile=true", "train.amp=true"]),
                    ("compiled with CUDA graphs, fp32", ["train.compile=true", "train.compile_mode=reduce-overhead"]),
                ]:
                    add(
                        f"train step, device pipeline, {label}",
                        step_rate(
                            args, tmp, label.replace(", ", "_").replace(" ", "_"), "data.pipeline=device", *extra
                        ),
                    )
    except KeyboardInterrupt:
        print("stopped before the end (interrupted or out of time); the rows measured so far:")
    print(f"\n| measurement ({name}) | images/s |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.0f} |")
    if "device" in end_to_end and "loader" in end_to_end:
        ratio = end_to_end["device"] / end_to_end["loader"]
        print(
            f"\nend to end, device pipeline / loader pipeline: {ratio:.3f}"
            + (" (target on the CPU: >= 0.95)" if device.type == "cpu" else "")
        )
    if "amp" in end_to_end:
        print(f"end to end, device pipeline, bfloat16 AMP / fp32: {end_to_end['amp'] / end_to_end['device']:.3f}")


if __name__ == "__main__":
    main()
