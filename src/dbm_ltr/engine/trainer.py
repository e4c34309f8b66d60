"""The training engine: one loop for every method (SPEC 5.2, 6.1).

A run is a directory::

    RUN/config.yaml           the resolved configuration
    RUN/checkpoint.pt         latest epoch (atomic), enough to resume exactly
    RUN/log.jsonl             one line per epoch
    RUN/metrics.json          final-epoch evaluation (and the best epoch, labelled, if tracked)
    RUN/per_class_accuracy.png
    RUN/tb/                   TensorBoard events, when tensorboard is installed
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..analysis.plots import plot_per_class_accuracy
from ..data import DATASET_INFO, MultiView, build_transform, create_dataset
from ..losses import create_loss
from ..methods import Method, create_method, method_views
from ..metrics import ClassAccuracy
from .checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .config import (
    RESUMABLE_DIFFERENCES,
    Config,
    apply_overrides,
    config_from_dict,
    flatten_config,
    save_config,
)
from .distributed import DistInfo, init_distributed, pick_device
from .pipeline import DeviceBatches, EvalBatches, WithIndices, resolve_pipeline, transform_names
from .schedules import learning_rate

__all__ = ["Trainer", "TrainingError", "build_method", "evaluate_method", "restore_method"]

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of everything random in one epoch (order, augmentation, method randomness), so an
    epoch's randomness depends only on (seed, epoch) and a resumed run repeats it exactly."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def view_transform(config: Config, views: tuple[str, ...]):
    """The training transform for a method's views: one transform, or ``MultiView``."""
    transforms = [build_transform(n) for n in transform_names(config, views)]
    return transforms[0] if len(transforms) == 1 else MultiView(transforms)


def load_datasets(config: Config, views: tuple[str, ...], train: bool = True) -> tuple[Dataset | None, Dataset]:
    """(train set with the method's views or ``None``, test set)."""
    d = config.data
    info = DATASET_INFO[d.name]  # the name was checked with the config
    common = dict(imbalance_factor=d.imbalance_factor, download=d.download, seed=d.seed)
    train_set = (
        create_dataset(d.name, d.root, train=True, transform=view_transform(config, views), **common)
        if train else None
    )
    test_set = create_dataset(
        d.name, d.root, train=False, transform=build_transform(info["test_transform"]), **common
    )
    return train_set, test_set


def build_method(config: Config, cls_num_list: list[int], num_classes: int) -> Method:
    if len(cls_num_list) != num_classes:
        raise ValueError(f"{len(cls_num_list)} class counts for {num_classes} classes")
    loss = create_loss(config.loss.name, cls_num_list, **config.loss.params)
    return create_method(
        config.method.name,
        trunk=config.model.name,
        classifier=config.model.classifier,
        num_classes=num_classes,
        cls_num_list=list(cls_num_list),
        loss=loss,
        loss_name=config.loss.name,
        data_name=config.data.name,
        imbalance_factor=config.data.imbalance_factor,
        data_seed=config.data.seed,
        **config.method.params,
    )


def restore_method(
    state: dict, overrides: list[str] | tuple[str, ...] = (), device: str | None = None,
    source: str = "checkpoint",
) -> tuple[Config, Method]:
    """Rebuild the method of a checkpoint ``state`` from its own config (plus ``overrides``,
    e.g. ``data.root=...``), load its weights and move it to ``device`` (default: the
    config's), in eval mode."""
    missing = [k for k in ("config", "method", "cls_num_list", "epoch") if k not in state]
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(missing)}; it was not written by dbm-ltr train")
    config = config_from_dict(apply_overrides(state["config"], list(overrides)))
    counts = [int(n) for n in state["cls_num_list"]]
    method = build_method(config, counts, DATASET_INFO[config.data.name]["num_classes"])
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{source} does not match its own config: {str(err).splitlines()[0][:200]}"
        ) from None
    method.to(pick_device(device or config.train.device))
    method.eval()
    return config, method


def parameter_groups(method: Method, weight_decay: float) -> list[dict]:
    """The trainable parameters: one group with ``weight_decay``, and one without for those
    the method names in ``no_weight_decay()`` (e.g. GML's temperature)."""
    exempt = method.no_weight_decay()
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    unknown = exempt - {n for n, _ in named}
    if unknown:
        raise ValueError(f"no_weight_decay names unknown parameters: {', '.join(sorted(unknown))}")
    groups = [{"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay}]
    if exempt:
        groups.append({"params": [p for n, p in named if n in exempt], "weight_decay": 0.0})
    return groups


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 (no loss scaling needed) on the CPU and on GPUs that support it, else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))


def _to_device(images, device: torch.device):
    """Images to ``device``; 4-D image batches in channels-last layout on CUDA (faster
    convolutions with cuDNN), unchanged elsewhere."""
    if isinstance(images, (list, tuple)):
        return [_to_device(x, device) for x in images]
    images = images.to(device, non_blocking=True)
    if device.type == "cuda" and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def evaluate_method(
    method: Method,
    batches,
    cls_num_list: list[int],
    num_classes: int,
    device: torch.device,
    amp: bool = False,
    progress: bool = False,
) -> dict:
    """Top-1, Many/Medium/Few and per-class accuracy (percent) of ``method`` on ``batches``
    (an :class:`~dbm_ltr.engine.pipeline.EvalBatches`, or any iterable of ``(images, targets)``);
    summed over processes under torchrun."""
    was_training = method.training
    method.eval()
    acc = ClassAccuracy(num_classes, device)
    for images, targets in tqdm(batches, desc="evaluating", leave=False, disable=not progress):
        images, targets = _to_device(images, device), targets.to(device)
        with _autocast(device, amp):
            scores = method.predict(images)
        acc.update(scores.argmax(dim=1), targets)
    acc.sync()
    method.train(was_training)
    return acc.summary(cls_num_list)


class Trainer:
    """Trains ``config`` into ``run_dir``; ``resume=True`` continues from its checkpoint.

    Example:
        >>> from dbm_ltr.engine import Trainer, load_config             # doctest: +SKIP
        >>> cfg = load_config("demo/dbm_ce", ["optim.epochs=5"])       # doctest: +SKIP
        >>> metrics = Trainer(cfg, "runs/demo").fit()                  # doctest: +SKIP
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self._log = log
        t = config.train
        self.device = pick_device(t.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if config.optim.batch_size % self.dist.world_size:
            raise ValueError(
                f"optim.batch_size={config.optim.batch_size} is the global batch and must divide "
                f"evenly over {self.dist.world_size} processes"
            )
        checkpoint_path = self.run_dir / CHECKPOINT
        if not resume and checkpoint_path.exists():
            raise CheckpointError(
                f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        state = load_checkpoint(checkpoint_path) if resume else None
        if state is not None:
            self._check_same_run(state)

        seed_everything(t.seed)
        views = method_views(config.method.name)
        self.pipeline = resolve_pipeline(config, views, self.device)
        self.train_set, self.test_set = load_datasets(config, views)
        self.cls_num_list = list(self.train_set.cls_num_list)
        self.num_classes = DATASET_INFO[config.data.name]["num_classes"]
        self.method = build_method(config, self.cls_num_list, self.num_classes).to(self.device)
        if self.device.type == "cuda":
            self.method.to(memory_format=torch.channels_last)
        d, o = config.data, config.optim
        if self.pipeline == "device":
            self.device_batches = DeviceBatches(
                self.train_set, transform_names(config, views), o.batch_size // self.dist.world_size,
                self.device, self.dist, t.drop_last, t.seed, self.method.uses_indices,
            )
        self.eval_batches = EvalBatches(
            self.test_set, DATASET_INFO[d.name]["test_transform"], d.eval_batch_size, self.device,
            self.pipeline, d.workers, self.dist,
        )
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.method, o.weight_decay), lr=o.lr, momentum=o.momentum,
            weight_decay=o.weight_decay, nesterov=o.nesterov,
        )
        self.amp = t.amp
        self.scaler = torch.amp.GradScaler(  # loss scaling for float16 only
            self.device.type, enabled=t.amp and amp_dtype(self.device) == torch.float16
        )
        self.start_epoch = 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.elapsed = 0.0
        if state is not None:
            self._restore(state)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.method, device_ids=ids)
        else:
            self.model = self.method
        if t.compile:
            self.model = compile_model(self.model, self.device, self.log)
        self._writer = None

    # ------------------------------------------------------------------ checkpoints

    def _check_same_run(self, state: dict) -> None:
        saved = flatten_config(state.get("config", {}))
        now = flatten_config(self.config.to_dict())
        diff = sorted(
            k for k in set(saved) | set(now)
            if k not in RESUMABLE_DIFFERENCES and saved.get(k) != now.get(k)
        )
        if diff:
            shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:4])
            raise CheckpointError(
                f"the checkpoint in {self.run_dir} was trained with a different config ({shown}); "
                f"resume with the run's own config ({self.run_dir / 'config.yaml'}) or start a "
                "new --out"
            )

    def _restore(self, state: dict) -> None:
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"the checkpoint in {self.run_dir} does not match this model/optimizer "
                f"({str(err).splitlines()[0][:200]})"
            ) from None
        self.start_epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self.best = state.get("best")
        self.elapsed = float(state.get("elapsed", 0.0))
        restore_rng(state["rng"])

    def _save(self, epoch_done: int) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(
            {
                "config": self.config.to_dict(),
                "epoch": epoch_done,
                "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": capture_rng(),
                "history": self.history,
                "best": self.best,
                "elapsed": self.elapsed,
                "cls_num_list": self.cls_num_list,
            },
            self.run_dir / CHECKPOINT,
        )

    # ------------------------------------------------------------------ training

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    def _batches(self, epoch: int, generator: torch.Generator):
        """``(iterable of (images, targets), number of batches)`` of one training epoch."""
        if self.pipeline == "device":
            return self.device_batches.epoch(generator, epoch), len(self.device_batches)
        o, d, t = self.config.optim, self.config.data, self.config.train
        sampler = None
        if self.dist.enabled:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(
                self.train_set, self.dist.world_size, self.dist.rank, shuffle=True,
                seed=t.seed, drop_last=t.drop_last,
            )
            sampler.set_epoch(epoch)
        loader = DataLoader(
            WithIndices(self.train_set) if self.method.uses_indices else self.train_set,
            batch_size=o.batch_size // self.dist.world_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=d.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=t.drop_last,
            generator=generator,
        )
        return loader, len(loader)

    def train_one_epoch(self, epoch: int, max_steps: int | None = None) -> dict:
        """Train one epoch (or its first ``max_steps`` steps: benchmarks, smoke tests); returns
        the epoch's log row."""
        o, t = self.config.optim, self.config.train
        lr = learning_rate(epoch, o.lr, o.epochs, o.schedule, o.warmup_epochs, o.milestones, o.lr_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        seed = epoch_seed(t.seed, epoch) + self.dist.rank  # own stream per process
        seed_everything(seed)
        batches, total = self._batches(epoch, torch.Generator().manual_seed(seed))
        if max_steps is not None:
            batches, total = itertools.islice(batches, max_steps), min(total, max_steps)
        self.method.train()
        # running sums stay on the device: nothing in the step waits for it
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        bar = tqdm(
            batches, total=total, desc=f"epoch {epoch + 1}/{o.epochs}", leave=False,
            dynamic_ncols=True, disable=not (t.progress and self.dist.is_main),
        )
        start = shown = time.perf_counter()
        for images, targets, *indices in bar:
            images, targets = _to_device(images, self.device), targets.to(self.device, non_blocking=True)
            extra = {"indices": indices[0].to(self.device, non_blocking=True)} if indices else {}
            with _autocast(self.device, self.amp):
                out = self.model(images, targets, epoch, **extra)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = targets.shape[0]
            seen += n
            loss_sum += out.loss.detach().double() * n
            correct += (out.scores.detach().argmax(dim=1) == targets).sum()
            if not bar.disable and time.perf_counter() - shown > 1.0:  # read back once a second
                shown = time.perf_counter()
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}%")
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64, device=self.device)])
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(totals)
        loss_sum, correct, count = totals.tolist()
        train_loss = loss_sum / max(count, 1)
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"the training loss became {train_loss} in epoch {epoch + 1}; lower optim.lr or "
                "enable train.deterministic to find the batch; the last good checkpoint is kept"
            )
        return {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": 100.0 * correct / max(count, 1),
            "seconds": seconds,
            "images_per_s": count / seconds if seconds > 0 else None,
        }

    def evaluate(self) -> dict:
        return evaluate_method(
            self.method, self.eval_batches, self.cls_num_list, self.num_classes, self.device,
            self.amp,
        )

    def _write_log(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard not installed
                self._writer = False
        if self._writer:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def fit(self) -> dict:
        """Train the remaining epochs, evaluate the final model, write ``metrics.json``."""
        c, o = self.config, self.config.optim
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.run_dir / "config.yaml")
            if self.start_epoch == 0:
                (self.run_dir / "log.jsonl").write_text("")
        if self.start_epoch:
            self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}/{o.epochs}")
        self.log(
            f"{c.name or 'run'}: {c.method.name}/{c.loss.name} on {c.data.name} "
            f"(IF {c.data.imbalance_factor:g}, {len(self.train_set)} train images), "
            f"{c.model.name}+{c.model.classifier}, {o.epochs} epochs, device {self.device}"
            + (f" x{self.dist.world_size}" if self.dist.enabled else "")
            + f", {self.pipeline} pipeline" + (", amp " + str(amp_dtype(self.device)).split(".")[1] if self.amp else "")
        )
        for epoch in range(self.start_epoch, o.epochs):
            row = self.train_one_epoch(epoch)
            self.elapsed += row["seconds"]
            every = c.train.eval_every
            if every and (epoch + 1) % every == 0:
                result = self.evaluate()
                row.update({f"test_{k}": result[k] for k in ("top1", "many", "medium", "few")})
                if self.best is None or result["top1"] >= self.best["top1"]:
                    self.best = {"epoch": epoch + 1, **result}
            self.history.append(row)
            self._write_log(row)
            self.log(
                f"epoch {epoch + 1}/{o.epochs}  lr {row['lr']:.5f}  loss {row['train_loss']:.4f}  "
                f"train acc {row['train_acc']:.2f}%"
                + (f"  test top1 {row['test_top1']:.2f}%" if "test_top1" in row else "")
                + f"  {row['seconds']:.1f}s"
            )
            self._save(epoch + 1)
        return self.finish()

    def finish(self) -> dict:
        """Evaluate the final model and write ``metrics.json`` and the per-class plot."""
        c = self.config
        result = self.evaluate()
        metrics = {
            **result,
            "epoch": self.history[-1]["epoch"] if self.history else self.start_epoch,
            "reported": "final epoch",
            "preset": c.name,
            "method": c.method.name,
            "loss": c.loss.name,
            "data": c.data.name,
            "imbalance_factor": c.data.imbalance_factor,
            "cls_num_list": self.cls_num_list,
            "classes": list(getattr(self.train_set, "classes", [])),
            "train_seconds": self.elapsed,
            "pipeline": self.pipeline,
            "paper": paper_reference(c),
        }
        if self.best is not None:
            metrics["best_epoch"] = {
                **self.best,
                "note": "best test accuracy over epochs (test-set model selection, as the "
                "original code reports); not the reported result",
            }
        if self.dist.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
            plot_per_class_accuracy(
                result["per_class"], self.cls_num_list, self.run_dir / "per_class_accuracy.png",
                title=f"{c.name or c.method.name}: final epoch, top-1 {result['top1']:.2f}%",
            )
            if self._writer:
                self._writer.close()
        self.log(format_groups(metrics))
        return metrics


def compile_model(model: torch.nn.Module, device: torch.device, log: Callable[[str], None]) -> torch.nn.Module:
    """``model`` compiled with ``torch.compile`` (in place: parameter names are unchanged), or
    ``model`` itself with a message where the compiler does not work on this machine."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2, device=device))  # the tool chain works
    except Exception as err:  # noqa: BLE001 - any failure of the compiler stack means eager
        log(f"train.compile: the compiler is unavailable here ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}); training in eager mode")
        return model
    model.compile()
    return model


def paper_reference(config: Config) -> dict | None:
    """The paper's numbers for this preset at this imbalance factor, if the preset has them."""
    table = config.paper or {}
    key = f"{config.data.imbalance_factor:g}"
    entry = {}
    top1 = (table.get("top1") or {})
    for k, v in top1.items():
        if f"{float(k):g}" == key:
            entry["top1"] = v
    for k, v in (table.get("groups") or {}).items():
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


def config_from_checkpoint(state: dict) -> Config:
    return config_from_dict(state["config"])
