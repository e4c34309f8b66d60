"""What the Fisher separability of ``dbm-ltr analyze`` costs at the data sets' sizes, exact
and with ``--fisher-dims auto``.

    python benchmarks/fisher_scaling.py [--classes 100 1000] [--dim 64 2048] [--per-class 100 50]
        [--threads 1]

For each (classes, feature dimension, test images a class) case, on synthetic features (class
centres plus noise, after a ReLU as pooled CNN features are): the dimension ``auto`` picks, its
seconds, and the seconds of the exact criterion in every dimension (where ``auto`` is not that:
measured on 15 pairs and scaled to all ``C (C - 1) / 2``), with the memory its ``C``
covariances take. The defaults are CIFAR-100-LT's test set with ResNet-32 features (the
paper's Table 6) and ImageNet-LT's with ResNet-50 features.
"""

from __future__ import annotations

import argparse
import time

import torch

from dbm_ltr.metrics import fisher_pairwise, fisher_separability

EXACT_SAMPLE_CLASSES = 6  # 15 pairs timed for the exact criterion's scaled estimate


def synthetic(classes: int, dim: int, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.randn(classes, dim, generator=g)
    return (centres[labels] + torch.randn(len(labels), dim, generator=g)).relu(), labels


def measure(classes: int, dim: int, per_class: int) -> dict:
    feats, labels = synthetic(classes, dim, per_class)
    pairs = classes * (classes - 1) // 2
    start = time.perf_counter()
    auto = fisher_separability(feats, labels, [per_class] * classes, dims="auto")
    auto_s = time.perf_counter() - start
    if auto["dims"] == dim:  # auto was the exact criterion
        exact_s = auto_s
    else:
        few = min(classes, EXACT_SAMPLE_CLASSES)
        keep = labels < few
        start = time.perf_counter()
        fisher_pairwise(feats[keep], labels[keep], few)
        exact_s = (time.perf_counter() - start) * pairs / (few * (few - 1) // 2)
    return {
        "auto_dims": auto["dims"],
        "auto_s": auto_s,
        "exact_s": exact_s,
        "pairs": pairs,
        "exact_gb": classes * dim * dim * 8 / 1e9,
    }


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.1f} s"
        if seconds < 120
        else f"{seconds / 60:.0f} min"
        if seconds < 7200
        else f"{seconds / 3600:.0f} h"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--dim", type=int, nargs="+", default=[64, 2048])
    parser.add_argument("--per-class", type=int, nargs="+", default=[100, 50])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if not len(args.classes) == len(args.dim) == len(args.per_class):
        parser.error("--classes, --dim and --per-class take one value per case each")
    torch.set_num_threads(args.threads)
    print(f"Fisher separability, {args.threads} thread(s), torch {torch.__version__}")
    print(
        "| classes | dim | images a class | pairs | auto: dims | auto: time | every dim: time (scaled) "
        "| every dim: covariances |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for c, d, n in zip(args.classes, args.dim, args.per_class):
        r = measure(c, d, n)
        print(
            f"| {c} | {d} | {n} | {r['pairs']:,} | {r['auto_dims']} | {_duration(r['auto_s'])} | "
            f"{_duration(r['exact_s'])} | {r['exact_gb']:.2f} GB |"
        )


if __name__ == "__main__":
    main()
