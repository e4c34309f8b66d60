"""Evaluating a method: top-1 and Many / Medium / Few over a pipeline's evaluation batches,
a checkpoint on its test set, the paper's numbers beside ours, and how they are printed."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ..methods import Method
from ..metrics import ClassAccuracy
from .build import load_datasets, restore_method
from .config import Config, ConfigError
from .pipeline import build_pipeline, to_device
from .precision import autocast
from .rundir import METRICS

__all__ = [
    "final_metrics",
    "LOG_BAR_SECONDS",
    "check_same_classes",
    "evaluate_checkpoint",
    "evaluate_method",
    "format_groups",
    "paper_reference",
    "progress_bar",
]


LOG_BAR_SECONDS = 30.0  # a progress bar written to a file or pipe is redrawn this often


def progress_bar(iterable, disable: bool, **kwargs) -> tqdm:
    """A tqdm bar that does not flood a log: on a terminal or in a notebook it redraws as tqdm
    does (every 0.1 s at most); where stderr goes to a file or a pipe (``nohup``, a cluster's
    job log) every :data:`LOG_BAR_SECONDS`, since each redraw there is another line of text."""
    stream = sys.stderr
    interactive = "ipykernel" in sys.modules or bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(
        iterable,
        leave=False,
        dynamic_ncols=True,
        disable=disable,
        file=stream,
        mininterval=0.1 if interactive else LOG_BAR_SECONDS,
        **kwargs,
    )


@torch.no_grad()
def evaluate_method(
    method: Method,
    batches,
    cls_num_list: list[int],
    num_classes: int,
    device: torch.device,
    amp: bool = False,
    progress: bool = False,
    total: int | None = None,
) -> dict:
    """Top-1, Many/Medium/Few and per-class accuracy (percent) of ``method`` on ``batches``
    (a pipeline's :meth:`~dbm_ltr.engine.pipeline.InputPipeline.eval_batches`, or any iterable of
    ``(images, targets)``; ``total``: how many, for the progress bar); summed over processes
    under torchrun."""
    was_training = method.training
    method.eval()
    acc = ClassAccuracy(num_classes, device)
    for images, targets in progress_bar(batches, desc="evaluating", disable=not progress, total=total):
        images, targets = to_device(images, device), targets.to(device)
        with autocast(device, amp):
            scores = method.predict(images)
        acc.update(scores.argmax(dim=1), targets)
    acc.sync()
    method.train(was_training)
    return acc.summary(cls_num_list)


def evaluate_checkpoint(
    state: dict,
    overrides: Sequence[str] = (),
    source: str = "checkpoint",
    run_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[dict, Config]:
    """``(result, config)``: the method of a checkpoint state (or of exported weights) rebuilt
    from its own config plus ``overrides`` (e.g. ``data.root=...``) and evaluated on its test
    set through the pipeline its config names; ``result`` as :func:`evaluate_method`, with the
    checkpoint's ``epoch``."""
    config, method = restore_method(state, overrides, source=source, run_dir=run_dir)
    _, test_set = load_datasets(config, ("regular",), train=False, defer_normalize=True)
    counts = [int(n) for n in state["cls_num_list"]]
    check_same_classes(state, test_set, config, source, run_dir)
    device = next(method.parameters()).device
    pipeline = build_pipeline(config, ("regular",), None, test_set, device)
    result = evaluate_method(
        method,
        pipeline.eval_batches(),
        counts,
        len(counts),
        device,
        config.train.amp,
        progress=progress,
        total=pipeline.eval_steps,
    )
    result["epoch"] = state["epoch"]
    d = config.data
    result["data"] = {"name": d.name, "split": "test", "root": str(Path(d.root).resolve()), "images": len(test_set)}
    if d.test_limit:
        result["test_limit"] = d.test_limit
    return result, config


def check_same_classes(state: dict, test_set, config: Config, source: str, run_dir: str | Path | None) -> None:
    """Refuse a test set whose classes are not the checkpoint's (their number, and their names
    where both are known: the checkpoint's own, or its run's ``metrics.json``)."""
    trained = [int(n) for n in state["cls_num_list"]]
    names = list(getattr(test_set, "classes", None) or [])
    saved = state.get("config") or {}
    was = (saved.get("data") or {}).get("name", "?")
    hint = f"evaluate it on {was}, the data set it was trained on (drop the --set that changes data.name or data.root)"
    if names and len(names) != len(trained):
        raise ConfigError(
            f"{source} was trained on {len(trained)} classes ({was}), but {config.data.name} at {config.data.root} has "
            f"{len(names)}; {hint}"
        )
    known = state.get("classes")
    metrics = Path(run_dir) / METRICS if run_dir is not None else None
    if not known and metrics is not None and metrics.is_file():
        try:
            known = json.loads(metrics.read_text()).get("classes")
        except (OSError, ValueError):
            known = None
    if names and known and list(known) != names:
        differ = next(i for i, (a, b) in enumerate(zip(known, names)) if a != b)
        raise ConfigError(
            f"{source} was trained on other classes than those of {config.data.name} at {config.data.root} "
            f"(class {differ}: {known[differ]!r} there, {names[differ]!r} here); {hint}"
        )


def final_metrics(
    config: Config,
    result: dict,
    epoch: int,
    train_set,
    cls_num_list: list[int],
    train_seconds: float,
    pipeline: str,
    environment: dict,
    best: dict | None,
) -> dict:
    """``metrics.json`` of a finished run: the final evaluation ``result`` with what produced it,
    the best test epoch (labelled as test-set selection) and the paper's numbers."""
    metrics = {
        **result,
        "epoch": epoch,
        "reported": "final epoch",
        "preset": config.name,
        "method": config.method.name,
        "loss": config.loss.name,
        "data": config.data.name,
        "imbalance_factor": config.data.imbalance_factor if hasattr(train_set, "imbalance_factor") else None,
        "cls_num_list": cls_num_list,
        "classes": list(getattr(train_set, "classes", [])),
        "train_seconds": train_seconds,
        "pipeline": pipeline,
        "limit": config.data.limit or None,  # a smoke test on part of the training split
        "test_limit": config.data.test_limit or None,  # ... or of the test split
        "environment": environment,
        "paper": paper_reference(config),
    }
    if best is not None:
        metrics["best_epoch"] = {
            **best,
            "note": "best test accuracy over epochs (test-set model selection, as the original code reports); "
            "not the reported result",
        }
    return metrics


def paper_reference(config: Config) -> dict | None:
    """The paper's numbers for this preset at this imbalance factor, if the preset has them."""
    table = config.paper or {}
    key = f"{config.data.imbalance_factor:g}"
    entry = {}
    top1 = table.get("top1")
    groups = table.get("groups") or {}
    if isinstance(top1, (int, float)):  # a data set without an imbalance factor (ImageNet-LT, ...)
        entry["top1"] = top1
    else:
        for k, v in (top1 or {}).items():
            if f"{float(k):g}" == key:
                entry["top1"] = v
    if set(groups) <= {"many", "medium", "few"}:  # plain groups, as top1
        entry.update(groups)
    else:
        for k, v in groups.items():
            if f"{float(k):g}" == key:
                entry.update(v)
    if not entry:
        return None
    entry["source"] = table.get("source", "")
    return entry


def format_groups(metrics: dict) -> str:
    def fmt(v):
        return "  -  " if v is None else f"{v:5.2f}"

    return (
        f"top-1 {fmt(metrics['top1'])}  many {fmt(metrics['many'])}  medium "
        f"{fmt(metrics['medium'])}  few {fmt(metrics['few'])}  ({metrics['reported']})"
    )
