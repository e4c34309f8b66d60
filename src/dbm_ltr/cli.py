"""Command line: ``dbm-ltr train | eval | demo``.

Errors a user can fix (bad config, missing data set, unusable checkpoint) are printed as one
line and exit with status 2; set ``DBM_LTR_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
        help="override config values, e.g. --set optim.epochs=30 data.root=../data "
        "(a bare key such as max_margin=0.2 works when it names one setting)",
    )


def _overrides(args) -> list[str]:
    return [item for group in args.overrides for item in group]


def cmd_train(args) -> int:
    from .engine import Trainer, load_config

    run = Path(args.out)
    source = args.config
    if source is None:
        if not args.resume:
            raise _UsageError("train needs --config FILE|PRESET (or --resume with an existing --out)")
        source = run / "config.yaml"
        if not source.is_file():
            raise _UsageError(f"--resume without --config needs {source}; it does not exist")
    config = load_config(source, _overrides(args))
    Trainer(config, run, resume=args.resume).fit()
    print(f"run directory: {run}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from .data import DATASET_INFO
    from .engine.checkpoint import load_checkpoint
    from .engine.config import apply_overrides, config_from_dict
    from .engine.distributed import pick_device
    from .engine.trainer import build_method, evaluate_method, format_groups, load_datasets
    from .engine.checkpoint import CheckpointError

    state = load_checkpoint(args.checkpoint)
    config = config_from_dict(apply_overrides(state["config"], _overrides(args)))
    device = pick_device(config.train.device)
    _, test_set = load_datasets(config, ("regular",), train=False)
    counts = list(state["cls_num_list"])
    method = build_method(config, counts, DATASET_INFO[config.data.name]["num_classes"])
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as err:
        raise CheckpointError(f"{args.checkpoint} does not match its own config: {str(err).splitlines()[0]}") from None
    method.to(device)
    result = evaluate_method(
        method, test_set, counts, len(counts), device, config.data.eval_batch_size,
        config.data.workers, config.train.amp,
    )
    result["epoch"] = state["epoch"]
    result["reported"] = f"checkpoint after epoch {state['epoch']}"
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval.json")
    out.write_text(json.dumps(result, indent=2))
    print(format_groups(result))
    print(f"written: {out}")
    del torch
    return 0


DEMO_PRESETS = ("ce", "dbm_ce", "bs", "dbm_bs")


def cmd_demo(args) -> int:
    import shutil
    import statistics

    from .engine import Trainer, load_config

    seeds = list(range(args.seeds))
    results: dict[str, list[dict]] = {p: [] for p in DEMO_PRESETS}
    for preset in DEMO_PRESETS:
        for seed in seeds:
            overrides = [f"train.seed={seed}"] + ([f"optim.epochs={args.epochs}"] if args.epochs else [])
            run = Path(args.out) / f"{preset}_seed{seed}"
            if run.exists():
                shutil.rmtree(run)
            metrics = Trainer(load_config(f"demo/{preset}", overrides), run, log=lambda m: None).fit()
            results[preset].append(metrics)
        seconds = sum(m["train_seconds"] for m in results[preset])
        print(f"  trained {preset:7s} x{len(seeds)} seeds in {seconds:.1f}s", flush=True)

    first = results[DEMO_PRESETS[0]][0]
    print(f"\nLong-tailed digits (scikit-learn 8x8, IF {first['imbalance_factor']:g}, train counts "
          f"{first['cls_num_list']}),\nbalanced test set (50 a class). Final-epoch accuracy (%), "
          f"mean +- std over {len(seeds)} seeds:")
    print(f"  {'method':8s} {'top-1':>13s} {'many':>13s} {'medium':>13s} {'few':>13s}")
    for preset in DEMO_PRESETS:
        cells = []
        for key in ("top1", "many", "medium", "few"):
            values = [m[key] for m in results[preset] if m[key] is not None]
            if not values:
                cells.append(f"{'-':>13s}")
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):>6.2f} +- {std:4.2f}")
        print(f"  {preset.upper().replace('_', '-'):8s} " + " ".join(cells))
    print(f"\nrun directories: {args.out}/<preset>_seed<k>/ (metrics.json, per_class_accuracy.png)")
    return 0


class _UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbm-ltr", description="Difficulty-aware Balancing Margin loss for long-tailed recognition",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a config or preset into a run directory")
    p.add_argument("--config", help="YAML file or preset name (e.g. cifar10_lt/dbm_ce)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_set(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its test set")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="where to write the JSON result (default: eval.json beside it)")
    _add_set(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "demo", help="offline demo: CE, DBM-CE, BS, DBM-BS on long-tailed digits (under a minute)"
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=0, help="override the presets' 30 epochs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DatasetNotFoundError
    from .engine import CheckpointError, ConfigError, TrainingError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, DatasetNotFoundError, TrainingError, ValueError) as err:
        if os.environ.get("DBM_LTR_DEBUG"):
            raise
        print(f"dbm-ltr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f"; continue with: dbm-ltr train --out {out} --resume" if args.command == "train" else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
