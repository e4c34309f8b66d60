"""Step time of ResNet-50 with a cosine head (DBM-BS loss) at ImageNet size.

    python benchmarks/resnet50_step.py [--batch-size 32] [--size 224] [--steps 5]

Forward + backward + SGD step on a fixed random batch, after a warm-up step: float32 and
bfloat16 autocast (``train.amp``), each with the model in contiguous and in channels-last
memory (``train.channels_last``, the engine's default). Prints milliseconds per step and
images per second.
"""

from __future__ import annotations

import argparse
import time

import torch

from dbm_ltr.losses import create_loss
from dbm_ltr.models import create_model


def step_time(model, loss, x, y, steps: int, amp: bool, device: torch.device) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            value = loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    step()  # warm-up: allocations, autotuning
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    counts = [max(5, int(1280 * 0.004 ** (c / (args.classes - 1)))) for c in range(args.classes)]
    model = create_model("resnet50", args.classes, "cosine").to(device)
    loss = create_loss("dbm", counts, base="bs", scale=30.0).to(device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"ResNet-50 + cosine head, DBM-BS, batch {args.batch_size}, {args.size}x{args.size}, {name}")
    for label, amp in (("float32", False), ("bfloat16 autocast", True)):
        for layout in (torch.contiguous_format, torch.channels_last):
            seconds = step_time(model.to(memory_format=layout), loss, x, y, args.steps, amp, device)
            variant = f"{label}, {'channels-last' if layout == torch.channels_last else 'contiguous'}"
            print(f"  {variant:33s} {1e3 * seconds:8.1f} ms/step  {args.batch_size / seconds:8.1f} img/s")


if __name__ == "__main__":
    main()
