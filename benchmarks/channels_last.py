"""``train.channels_last``: speed and BatchNorm accuracy of the channels-last model layout
against the contiguous one, on whatever device is present.

    python benchmarks/channels_last.py --root ../shared/data [--presets cifar10_lt/dbm_ce demo/dbm_bs]
        [--steps 30] [--set train.amp=true ...]

For each preset, through the engine: images/s of ``--steps`` training steps (after 3) and the
seconds of one evaluation of the test set, with ``train.channels_last`` true and false,
alternating, best of two; then the ratio channels-last / contiguous. Last, the error of
BatchNorm2d's training-mode output against float64 in each layout (unit-normal input, and
input with mean 30 standard deviations), where the channels-last kernel may be less exact.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from dbm_ltr.engine import Trainer, load_config


def engine_rates(preset: str, flag: bool, steps: int, overrides: list[str]) -> tuple[float, float]:
    """(training images/s, evaluation seconds) of ``preset`` with ``train.channels_last=flag``."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            load_config(preset, [*overrides, f"train.channels_last={str(flag).lower()}"]),
            f"{tmp}/run",
            log=lambda m: None,
        )
        trainer.train_one_epoch(0, max_steps=3)
        rate = trainer.train_one_epoch(0, max_steps=steps)["images_per_s"]
        start = time.perf_counter()
        trainer.evaluate()
        seconds = time.perf_counter() - start
        trainer.close()
    return rate, seconds


def batchnorm_error(offset: float, channels_last: bool) -> float:
    """Relative error of BatchNorm2d's output (training mode) against float64."""
    torch.manual_seed(0)
    x = torch.randn(64, 16, 32, 32) * 0.1 + offset if offset else torch.randn(64, 16, 32, 32)
    bn = torch.nn.BatchNorm2d(16)
    want = copy.deepcopy(bn).double()(x.double())
    if channels_last:
        bn, x = bn.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return ((bn(x).double() - want).norm() / want.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data", help="folder with CIFAR-10")
    parser.add_argument("--presets", nargs="+", default=["cifar10_lt/dbm_ce", "demo/dbm_bs"])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="more config overrides")
    args = parser.parse_args()
    base = [f"data.root={args.root}", "train.progress=false", "optim.epochs=1", "optim.warmup_epochs=0"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, overrides: {' '.join(args.overrides) or 'none'}"
    )
    for preset in args.presets:
        overrides = base + args.overrides if preset.startswith("cifar") else ["train.progress=false", *args.overrides]
        runs = {True: [], False: []}
        for _ in range(2):
            for flag in (False, True):
                runs[flag].append(engine_rates(preset, flag, args.steps, overrides))
        best = {flag: (max(r for r, _ in v), min(s for _, s in v)) for flag, v in runs.items()}
        print(
            f"{preset}: train {best[False][0]:.0f} -> {best[True][0]:.0f} img/s "
            f"({best[True][0] / best[False][0]:.2f}x), "
            f"evaluation {best[False][1]:.2f} -> {best[True][1]:.2f} s ({best[False][1] / best[True][1]:.2f}x)"
        )
    for offset in (0.0, 3.0):
        print(
            f"BatchNorm2d output error vs float64, input {'N(3, 0.1)' if offset else 'N(0, 1)'}: "
            f"contiguous {batchnorm_error(offset, False):.1e}, channels-last {batchnorm_error(offset, True):.1e}"
        )


if __name__ == "__main__":
    main()
