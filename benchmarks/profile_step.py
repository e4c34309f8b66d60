"""Where one training step's time goes: wall time, kernel time, launches, synchronisations.

    python benchmarks/profile_step.py --root ../shared/data [--config cifar10_lt/dbm_ce]
        [--steps 64] [--set train.compile=true ...]

Trains ``--steps`` steps of the preset through the engine (after a warm-up) under
``torch.profiler`` on whatever device is present, and prints per step: the wall time, the
kernel time on the GPU and its share of the wall time (near 100%: the GPU's arithmetic bounds
the step; far below: the host does, launching kernels or waiting), kernel launches, host-device
copies and explicit synchronisations, then the kernels and host operations that cost the most.
On the CPU only the host side is shown.

Beside the engine's step, the plainest loop for the same network (ResNet-32 + linear head, CE,
SGD, inputs fixed on the device), eager and, on CUDA, captured as one CUDA graph (no launch cost
on the host): the floors the engine's step can be compared with.

Question it answers (an H100, 2026-11-27): one ResNet-32 run at batch 64 trains at about 70
steps/s whether eager or compiled, fp32 or bfloat16, while 8 packed runs under MPS reach about 7x
that: is the step bound by the GPU's kernels or by the host?
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from dbm_ltr.engine import Trainer, load_config

SYNC_CALLS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cuStreamSynchronize",
    "cuCtxSynchronize",
)


def _device_time(event) -> float:
    """Self time of a profiler row on the device, microseconds (the attribute's name changed
    across PyTorch releases)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _is_kernel(event) -> bool:
    kind = getattr(event, "device_type", None)
    return kind is not None and kind.name in ("CUDA", "PrivateUse1") and _device_time(event) > 0


def bare_rate(device: torch.device, batch: int, steps: int, graph: bool = False) -> float:
    """Steps/s of the plainest loop for the same network: ResNet-32 + linear head, CE, SGD
    with momentum, inputs fixed on the device (no augmentation, no bookkeeping), the model in
    channels-last memory as the engine's default; with ``graph`` the whole step (forward,
    backward, SGD) is captured once as a CUDA graph and replayed, which removes the host's launch cost: the floor
    of the step on the GPU."""
    from dbm_ltr.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet32", num_classes=10, classifier="linear").to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as graph capture requires
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)  # backward in the graph then writes fresh gradients
        with torch.cuda.graph(g):
            step()
        run = g.replay
    else:

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            step()

    for _ in range(10):
        run()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data", help="folder with CIFAR-10")
    parser.add_argument("--config", default="cifar10_lt/dbm_ce", help="preset to train")
    parser.add_argument(
        "--steps", type=int, default=64, help="profiled steps (the device pipeline augments 32 batches of 64 at a time)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="steps before (allocations, autotuning, compilation)")
    parser.add_argument("--top", type=int, default=12, help="rows of each table")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="more config overrides")
    args = parser.parse_args(argv)

    overrides = [
        f"data.root={args.root}",
        "train.progress=false",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(load_config(args.config, overrides), f"{tmp}/run", log=lambda m: None)
        device = trainer.device
        cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if cuda else "CPU"
        trainer.train_one_epoch(0, max_steps=args.warmup)
        timed = trainer.train_one_epoch(0, max_steps=args.steps)  # synchronises at its end
        wall_ms = 1e3 * timed["seconds"] / args.steps
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            trainer.train_one_epoch(0, max_steps=args.steps)
            profiled_ms = 1e3 * (time.perf_counter() - start) / args.steps
        trainer.close()

    rows = prof.key_averages()
    per_step = 1.0 / args.steps
    print(
        f"{args.config} on {name} (torch {torch.__version__}), batch {trainer.config.optim.batch_size}, "
        f"{trainer.pipeline.name} pipeline, overrides: {' '.join(args.overrides) or 'none'}"
    )
    print(
        f"  wall time per step:            {wall_ms:8.2f} ms ({1e3 / wall_ms:.0f} steps/s; "
        f"{profiled_ms:.2f} ms under the profiler)"
    )
    host = [r for r in rows if not _is_kernel(r)]
    if cuda:
        kernels = [r for r in rows if _is_kernel(r)]
        kernel_ms = sum(_device_time(r) for r in kernels) / 1e3 * per_step
        launches = sum(r.count for r in host if "LaunchKernel" in r.key) * per_step
        copies = sum(r.count for r in host if "Memcpy" in r.key) * per_step
        syncs = sum(r.count for r in host if r.key in SYNC_CALLS) * per_step
        print(
            f"  kernel time on the GPU:        {kernel_ms:8.2f} ms per step, "
            f"{100 * kernel_ms / profiled_ms:.0f}% of the profiled wall time"
        )
        print(f"  kernel launches per step:      {launches:8.1f}")
        print(f"  memcpy calls per step:         {copies:8.1f}")
        print(f"  synchronising calls per step:  {syncs:8.1f}  ({', '.join(SYNC_CALLS)})")
        print(
            "  verdict: "
            + (
                "the GPU (kernels run back to back)"
                if kernel_ms > 0.8 * profiled_ms
                else "the host (the GPU waits between kernels)"
            )
            + " bounds the step"
        )
        print("\n  top kernels by GPU time (per step):")
        for r in sorted(kernels, key=_device_time, reverse=True)[: args.top]:
            print(f"    {_device_time(r) / 1e3 * per_step:7.3f} ms  x{r.count * per_step:5.1f}  {r.key[:90]}")
    batch = trainer.config.optim.batch_size
    bare = {"bare loop, eager": bare_rate(device, batch, args.steps)}
    if cuda:
        try:
            bare["bare loop, CUDA graph"] = bare_rate(device, batch, args.steps, graph=True)
        except Exception as err:  # noqa: BLE001 - a measurement, not the product
            print(f"  (CUDA graph capture failed: {type(err).__name__}: {err})")
    for label, rate in bare.items():
        print(f"  {label + ' (ResNet-32, CE, SGD):':31s}{1e3 / rate:8.2f} ms per step ({rate:.0f} steps/s)")
    print("\n  top host operations by self CPU time (per step):")
    for r in sorted(host, key=lambda r: r.self_cpu_time_total, reverse=True)[: args.top]:
        print(f"    {r.self_cpu_time_total / 1e3 * per_step:7.3f} ms  x{r.count * per_step:6.1f}  {r.key[:90]}")


if __name__ == "__main__":
    main()
