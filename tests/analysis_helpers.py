"""Helpers of the analysis tests: tiny real runs on fake CIFAR-10 and hand-made run folders."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from fakes import tiny_overrides as fake_run_overrides


def tiny_overrides(root, epochs=1) -> list[str]:
    """A seconds-long CIFAR-10-LT run on the fake set (see fakes.tiny_overrides), one epoch."""
    return fake_run_overrides(root, epochs)


def write_run(
    path: Path,
    preset: str,
    seed: int,
    top1,
    many=None,
    medium=None,
    few=None,
    imbalance_factor=100,
    paper=None,
    loss=None,
    metrics=True,
    epoch=200,
    best=None,
    eval_every=None,
) -> Path:
    """A run directory written by hand: config.yaml (+ metrics.json; ``best``: the best test
    epoch's metrics, as a run with ``train.eval_every`` records them)."""
    from dbm_ltr.engine import load_config

    config = load_config(
        preset,
        [f"train.seed={seed}", f"data.imbalance_factor={imbalance_factor}"]
        + [f"loss.{k}={v}" for k, v in (loss or {}).items()]
        + ([f"train.eval_every={eval_every}"] if eval_every else []),
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    if metrics:
        (path / "metrics.json").write_text(
            json.dumps(
                {
                    "top1": top1,
                    "many": many,
                    "medium": medium,
                    "few": few,
                    "per_class": [],
                    "epoch": epoch,
                    "reported": "final epoch",
                    "preset": preset,
                    "imbalance_factor": float(imbalance_factor),
                    "cls_num_list": [],
                    "classes": [],
                    "paper": paper,
                    **({"best_epoch": {"epoch": epoch - 10, **best, "note": "test-set selection"}} if best else {}),
                }
            )
        )
    return path
