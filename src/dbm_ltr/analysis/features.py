"""Features of a trained run: rebuild the method from its checkpoint, run it over a split.

One pass over the data, in batches, under ``torch.no_grad`` in eval mode; every batch's
features, labels and predictions are copied into arrays allocated once for the whole split, so
the split's activations are held once (``N x D`` floats; 10,000 x 64 on CIFAR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .runs import CHECKPOINT, RunError, check_run_dir

__all__ = ["SPLITS", "RunFeatures", "extract_features", "load_run_method", "load_run_state", "run_features"]

#: Splits features can be extracted from (the training split uses the test-time transform).
SPLITS = ("test", "train")


@dataclass
class RunFeatures:
    """What the analyses need from one run, on one split."""

    run_dir: Path
    config: object  # dbm_ltr.engine.Config
    epoch: int  # epochs trained when the checkpoint was written
    cls_num_list: list[int]  # training counts (define Many / Medium / Few)
    classes: list[str]
    split: str
    features: torch.Tensor  # (N, D) float32, pooled features the classifier sees
    labels: torch.Tensor  # (N,) int64
    predictions: torch.Tensor  # (N,) int64, argmax of the method's prediction
    weights: torch.Tensor  # (C, D) float32 classifier weights (linear head: bias ignored)
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.cls_num_list)


def load_run_state(run_dir: str | Path) -> dict:
    """The checkpoint state of a run directory (readable, written by ``dbm-ltr train``)."""
    from ..engine.checkpoint import load_checkpoint

    path = check_run_dir(run_dir, need=(CHECKPOINT,))
    return load_checkpoint(path / CHECKPOINT)


def load_run_method(run_dir: str | Path, overrides: Sequence[str] = (), device: str | None = None):
    """``(config, method on device in eval mode, checkpoint state)`` of a run directory,
    rebuilt from the checkpoint's own config plus ``overrides`` (e.g. ``data.root=...``)."""
    from ..engine.build import restore_method

    state = load_run_state(run_dir)
    config, method = restore_method(state, overrides, device, source=str(Path(run_dir) / CHECKPOINT), run_dir=run_dir)
    return config, method, state


@torch.no_grad()
def extract_features(
    method,
    dataset: Dataset,
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features (N, D) float32, labels (N,), predictions (N,))`` of ``method`` on ``dataset``
    (CPU tensors), in batches, in eval mode; the method's training mode is restored after."""
    if device is None:
        device = next(iter(method.parameters())).device
    device = torch.device(device)
    was_training = method.training
    method.eval()
    n = len(dataset)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda"
    )
    features = labels = predictions = None
    start = 0
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            feats, scores = method.features_and_scores(images)
            b = feats.shape[0]
            if features is None:
                features = torch.empty(n, feats.shape[1], dtype=torch.float32)
                labels = torch.empty(n, dtype=torch.int64)
                predictions = torch.empty(n, dtype=torch.int64)
            features[start : start + b] = feats.float().cpu()
            labels[start : start + b] = torch.as_tensor(targets).long()
            predictions[start : start + b] = scores.argmax(dim=1).cpu()
            start += b
    finally:
        method.train(was_training)
    if features is None:
        raise RunError("the evaluation split is empty")
    if start != n:
        raise RunError(f"the data loader gave {start} samples for a split of {n}")
    return features, labels, predictions


def run_features(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    split: str = "test",
    device: str | None = None,
    batch_size: int | None = None,
) -> RunFeatures:
    """Rebuild a run's method and extract features, labels, predictions and class weights on
    ``split`` (``test`` or ``train``; the training split without augmentation)."""
    from ..data import DATASET_INFO
    from ..engine.build import build_dataset, transform
    from ..engine.distributed import loader_workers
    from ..engine.evaluation import check_same_classes

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    config, method, state = load_run_method(run_dir, overrides, device)
    d = config.data
    decode = {"decode": "cpu"} if d.decode == "device" else {}  # features: no GPU decoding (pil stays exact)
    dataset = build_dataset(
        config, split == "train", transform(config, DATASET_INFO[d.name]["test_transform"]), **decode
    )
    counts = [int(n) for n in state["cls_num_list"]]
    check_same_classes(state, dataset, config, str(Path(run_dir) / CHECKPOINT), run_dir)
    notes = []
    epoch, planned = int(state["epoch"]), config.optim.epochs
    if epoch < planned:
        notes.append(f"unfinished run: checkpoint after epoch {epoch}/{planned}")
    features, labels, predictions = extract_features(
        method,
        dataset,
        batch_size or d.eval_batch_size,
        loader_workers(d.workers),
    )
    if labels.numel() and int(labels.max()) >= len(counts):
        raise RunError(
            f"{run_dir}: the {d.name} data at {d.root} have labels up to {int(labels.max())}, the run "
            f"{len(counts)} classes; analyze it on the data set it was trained on"
        )
    with torch.no_grad():
        weights = method.class_weights().detach().float().cpu().clone()
    if weights.shape != (len(counts), features.shape[1]):
        raise RunError(
            f"{run_dir}: class weights {tuple(weights.shape)} do not match {len(counts)} classes "
            f"x {features.shape[1]} features"
        )
    classes = list(getattr(dataset, "classes", []) or [str(c) for c in range(len(counts))])
    return RunFeatures(
        run_dir=Path(run_dir),
        config=config,
        epoch=epoch,
        cls_num_list=counts,
        classes=classes,
        split=split,
        features=features,
        labels=labels,
        predictions=predictions,
        weights=weights,
        notes=notes,
    )
