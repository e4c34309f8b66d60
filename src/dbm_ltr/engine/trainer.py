"""The training engine: one loop for every method.

:class:`Trainer` trains a validated :class:`~dbm_ltr.engine.config.Config` into a run directory
(files: :mod:`.rundir`). It survives faults: a checkpoint (atomic, checksummed, the previous
one kept) after every epoch and, on SIGINT / SIGTERM, in the middle of one; every random draw of
an epoch derives from (seed, epoch, rank, and for the loader pipeline the batch), so a
run resumed from any checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data import (
    DATASET_INFO,
    DATASETS,
    TRANSFORMS,
    EncodedBatch,
    LimitedDataset,
    MultiView,
    batch_normalizer,
    build_transform,
    create_dataset,
    limit_indices,
)
from ..errors import DbmLtrError
from ..figures import plot_per_class_accuracy
from ..losses import create_loss
from ..methods import Method, create_method, method_views
from ..models import pretrained_trunks
from ..metrics import ClassAccuracy, class_vector_cosines
from .checkpoint import (
    CheckpointError,
    capture_rng,
    load_latest,
    previous_path,
    restore_rng,
    save_checkpoint,
)
from .config import (Config, ConfigError, DataConfig, TrainConfig, apply_overrides, config_from_dict,
                     save_config, saved_config)
from .distributed import DistInfo, available_cores, init_distributed, loader_workers, pick_device
from .pipeline import DeviceBatches, EvalBatches, SeededSamples, resolve_pipeline, to_device, transform_names
from .rundir import (
    CHECKPOINT,
    CONFIG,
    LOG,
    METRICS,
    PER_CLASS_PLOT,
    TENSORBOARD,
    RunLock,
    config_differences,
    environment,
    foreign_files,
    is_run_dir,
    recipe_revisions,
    write_json,
    write_log,
)
from .schedules import learning_rate

__all__ = [
    "Interrupted",
    "Trainer",
    "TrainingError",
    "build_method",
    "evaluate_method",
    "restore_method",
]

#: Mean cosine between two classes' vectors above which the classifier counts as collapsed
#: (trained heads of the CIFAR runs: linear about -0.1, cosine 0.2-0.88 (DBM at IF 10: 0.84-0.88);
#: collapsed DBM runs on balanced data: 0.95-1.0).
COLLAPSED_CLASS_COSINE = 0.95


class TrainingError(DbmLtrError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


class Interrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, run_dir: Path, where: str) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} {where}; checkpoint written; continue with: "
            f"dbm-ltr train --out {run_dir} --resume"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of everything random in one epoch (order, augmentation, method randomness), so an
    epoch's randomness depends only on (seed, epoch) and a resumed run repeats it exactly."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def transform(config: Config, name: str, defer_normalize: bool = False):
    """The transform registered as ``name``, at ``data.image_size`` when that is set (for the
    large-scale recipes: crop ``size``; the test recipe resizes to ``size * 256 / 224`` first);
    ``defer_normalize``: recipes that can leave their normalisation to the batch
    (:func:`~dbm_ltr.data.batch_normalizer`) do."""
    size = config.data.image_size
    accepted = factory_parameters(TRANSFORMS.lookup(name))
    options = {"defer_normalize": True} if defer_normalize and "defer_normalize" in accepted else {}
    if "autoaugment" in accepted:
        options["autoaugment"] = config.data.autoaugment
    if not size:
        return build_transform(name, **options)
    sizes = {k: v for k, v in (("size", size), ("crop", size), ("resize", round(size * 256 / 224)))
             if k in accepted}
    if not sizes:
        raise ConfigError(f"data.image_size: the transform {name!r} of {config.data.name} has a fixed size; "
                          "leave data.image_size at 0")
    return build_transform(name, **options, **sizes)


def factory_parameters(factory) -> Mapping[str, inspect.Parameter]:
    """The keyword parameters a registered transform or batch-recipe factory accepts."""
    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a registered factory without an inspectable signature
        return {}


def view_transform(config: Config, views: tuple[str, ...], defer_normalize: bool = False):
    """The training transform for a method's views: one transform, or ``MultiView``."""
    names = transform_names(config, views)
    if config.data.autoaugment != DataConfig.autoaugment and not any(
            "autoaugment" in factory_parameters(TRANSFORMS.lookup(n)) for n in names):
        raise ConfigError(f"data.autoaugment: the training transform(s) {', '.join(names)} of "
                          f"{config.data.name} have no AutoAugment; leave data.autoaugment at "
                          f"{DataConfig.autoaugment}")
    transforms = [transform(config, n, defer_normalize) for n in names]
    return transforms[0] if len(transforms) == 1 else MultiView(transforms)


def dataset_options(config: Config) -> dict:
    """``data.split_dir`` / ``skip_corrupt`` / ``decode`` for the data sets that take them
    (the split-file ones); set to a non-default value for another data set: an error."""
    d = config.data
    accepted = inspect.signature(DATASETS.lookup(d.name)).parameters
    options = {"split_dir": d.split_dir, "skip_corrupt": d.skip_corrupt, "decode": d.decode}
    for key, value in options.items():
        if key not in accepted and value != getattr(DataConfig, key):
            raise ConfigError(f"data.{key} is not an option of data set {d.name!r}")
    return {k: v for k, v in options.items() if k in accepted}


def load_datasets(
    config: Config, views: tuple[str, ...], train: bool = True, defer_normalize: bool = False,
) -> tuple[Dataset | None, Dataset]:
    """(train set with the method's views or ``None``, test set); ``defer_normalize``: the
    large-scale recipes pass uint8 images and leave the normalisation to the batches
    (:func:`~dbm_ltr.data.batch_normalizer`; the engine's batches apply it on the device)."""
    d = config.data
    info = DATASET_INFO[d.name]  # the name was checked with the config
    common = dict(imbalance_factor=d.imbalance_factor, download=d.download, seed=d.seed, **dataset_options(config))
    train_set = (
        create_dataset(d.name, d.root, train=True, transform=view_transform(config, views, defer_normalize), **common)
        if train else None
    )
    if train_set is not None and d.limit:
        train_set = LimitedDataset(train_set, limit_indices(train_set.targets, d.limit, len(train_set.cls_num_list)),
                                   d.limit)
    test_set = create_dataset(
        d.name, d.root, train=False, transform=transform(config, info["test_transform"], defer_normalize), **common
    )
    return train_set, test_set


def build_method(config: Config, cls_num_list: list[int], num_classes: int) -> Method:
    if len(cls_num_list) != num_classes:
        raise ValueError(f"{len(cls_num_list)} class counts for {num_classes} classes")
    try:
        loss = create_loss(config.loss.name, cls_num_list, **config.loss.params)
        return _create_method(config, cls_num_list, num_classes, loss)
    except (ValueError, TypeError) as err:
        if isinstance(err, DbmLtrError):
            raise
        raise ConfigError(str(err)) from None


def _create_method(config: Config, cls_num_list: list[int], num_classes: int, loss) -> Method:
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


def to_layout(method: Method, train: TrainConfig) -> Method:
    """``method`` with its 4-D weights in channels-last memory where ``train.channels_last``
    (the convolutions then run channels-last whatever the layout of their input)."""
    return method.to(memory_format=torch.channels_last) if train.channels_last else method


def restore_method(
    state: dict, overrides: list[str] | tuple[str, ...] = (), device: str | None = None,
    source: str = "checkpoint", run_dir: str | Path | None = None,
) -> tuple[Config, Method]:
    """Rebuild the method of a checkpoint ``state`` from its own config (plus ``overrides``,
    e.g. ``data.root=...``), load its weights and move it to ``device`` (default: the
    config's), in eval mode. A relative ``data.root`` that does not exist from here is looked
    up from ``run_dir`` too."""
    missing = [k for k in ("config", "method", "cls_num_list", "epoch") if k not in state]
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(missing)}; it was not written by dbm-ltr train")
    config = config_from_dict(apply_overrides(saved_config(state["config"]), list(overrides)))
    root = Path(config.data.root)
    if run_dir is not None and not root.is_absolute() and not root.exists() and (Path(run_dir) / root).exists():
        config.data.root = str(Path(run_dir) / root)
    counts = [int(n) for n in state["cls_num_list"]]
    method = build_method(config, counts, len(counts))
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{source} does not match its own config: {str(err).splitlines()[0][:200]}"
        ) from None
    to_layout(method.to(pick_device(device or config.train.device)), config.train)
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


LOG_BAR_SECONDS = 30.0  # a progress bar written to a file or pipe is redrawn this often


def progress_bar(iterable, disable: bool, **kwargs) -> tqdm:
    """A tqdm bar that does not flood a log: on a terminal or in a notebook it redraws as tqdm
    does (every 0.1 s at most); where stderr goes to a file or a pipe (``nohup``, a cluster's
    job log) every :data:`LOG_BAR_SECONDS`, since each redraw there is another line of text."""
    stream = sys.stderr
    interactive = "ipykernel" in sys.modules or bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(iterable, leave=False, dynamic_ncols=True, disable=disable, file=stream,
                mininterval=0.1 if interactive else LOG_BAR_SECONDS, **kwargs)


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
    for images, targets in progress_bar(batches, desc="evaluating", disable=not progress):
        images, targets = to_device(images, device), targets.to(device)
        with _autocast(device, amp):
            scores = method.predict(images)
        acc.update(scores.argmax(dim=1), targets)
    acc.sync()
    method.train(was_training)
    return acc.summary(cls_num_list)


class _StopSignals:
    """SIGINT / SIGTERM handlers for the length of a ``with`` block: the first signal asks
    the loop to stop at the next step boundary; a second one stops at once
    (``KeyboardInterrupt``). Nothing is installed outside the main thread, nor under
    torchrun: its agent stops workers with SIGTERM to restart them, and a worker that lingers
    breaks the next rendezvous, so there a worker stops at once and the run resumes from its
    last epoch checkpoint (``train.auto_resume``)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.signum = 0
        self.enabled = enabled
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_StopSignals":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


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
        self.config = config = copy.deepcopy(config)
        if Path(config.data.root).exists():  # the run records where its data is, from anywhere
            config.data.root = str(Path(config.data.root).resolve())
        self.run_dir = Path(run_dir)
        self._log = log
        t = config.train
        cores = available_cores()
        if t.threads or torch.get_num_threads() > cores:  # two jobs on one machine must not
            torch.set_num_threads(t.threads or cores)       # each take every core of it
        self.device = pick_device(t.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device)
        _configure_backends(t.deterministic, self.device)
        if t.sync_bn and self.dist.enabled and self.device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm); on the CPU leave it off")
        if config.optim.batch_size % self.dist.world_size:
            raise ConfigError(
                f"optim.batch_size={config.optim.batch_size} is the global batch and must divide "
                f"evenly over {self.dist.world_size} processes"
            )
        self._lock = RunLock(self.run_dir).acquire() if self.dist.is_main else None
        self.environment = environment()
        try:
            self._setup(resume or t.auto_resume and self._has_checkpoint())
        except BaseException:
            self.close()
            raise

    def _has_checkpoint(self) -> bool:
        path = self.run_dir / CHECKPOINT
        return path.exists() or previous_path(path).exists()

    def _setup(self, resume: bool) -> None:
        config, t, o, d = self.config, self.config.train, self.config.optim, self.config.data
        state = self._read_state(resume)
        seed_everything(t.seed)
        views = method_views(config.method.name)
        self.pipeline = resolve_pipeline(config, views, self.device)
        self.train_set, self.test_set = load_datasets(config, views, defer_normalize=True)
        self.normalize = batch_normalizer(self.train_set.transform) if self.pipeline == "loader" else None
        self.cls_num_list = [int(n) for n in self.train_set.cls_num_list]
        self.num_classes = len(self.cls_num_list)  # from the training split (a split file may define it)
        # pretrained weights for a new run only (a resumed one restores its own)
        with pretrained_trunks(config.model.pretrained if state is None else "", config.model.name):
            self.method = to_layout(build_method(config, self.cls_num_list, self.num_classes).to(self.device), t)
        if self.pipeline == "device":
            self.device_batches = DeviceBatches(
                self.train_set, transform_names(config, views), o.batch_size // self.dist.world_size, self.device,
                with_indices=self.method.uses_indices, autoaugment=d.autoaugment,
            )
        self.eval_batches = EvalBatches(
            self.test_set, DATASET_INFO[d.name]["test_transform"], d.eval_batch_size, self.device,
            self.pipeline, loader_workers(d.workers), self.dist,
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
        self._partial: dict | None = None  # a mid-epoch checkpoint's position, until it is used
        self._collapse_reported = False
        self._final = False  # the checkpoint is the final one (no optimizer state)
        self.finished_metrics: dict | None = None
        if state is not None:
            self._restore(state)
        self.model = _wrap(self.method, self.dist, self.device, t.sync_bn)
        if t.compile:
            self.model = compile_model(self.model, self.device, self.log, t.compile_mode)
        self._writer = None
        self._stop = _StopSignals(enabled=not self.dist.enabled)

    def close(self) -> None:
        """Release the run directory (also done when :meth:`fit` returns or fails)."""
        if self._lock is not None:
            self._lock.release()

    # ------------------------------------------------------------------ checkpoints

    def _read_state(self, resume: bool) -> dict | None:
        path = self.run_dir / CHECKPOINT
        if not resume:
            if self._has_checkpoint():
                raise CheckpointError(
                    f"{self.run_dir} already holds a run; pass --resume to continue it or choose "
                    "another --out"
                )
            other = foreign_files(self.run_dir) if self.dist.is_main and not is_run_dir(self.run_dir) else []
            if other:
                raise CheckpointError(
                    f"{self.run_dir} exists and is not a run directory (it holds {', '.join(other[:3])}"
                    f"{', ...' if len(other) > 3 else ''}); choose another --out (or an empty or new folder)"
                )
            return None
        if not self._has_checkpoint():
            raise CheckpointError(
                f"nothing to resume in {self.run_dir} (no checkpoint); start the run with "
                f"dbm-ltr train --config CONFIG --out {self.run_dir}"
            )
        state, warning = load_latest(path)
        if warning:
            self.log(f"warning: {warning}")
        saved = state.get("config", {})
        diff = config_differences(saved, self.config.to_dict())
        if diff:
            shown = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in diff[:4])
            raise CheckpointError(
                f"the checkpoint in {self.run_dir} was trained with a different config ({shown}); "
                f"resume with the run's own config ({self.run_dir / CONFIG}) or start a new --out"
            )
        revised = recipe_revisions(saved, self.config.to_dict())
        for key, old, _ in revised:  # the run goes on with the recipe it started with
            section, leaf = key.split(".")
            setattr(getattr(self.config, section), leaf, old)
        if revised:
            shown = ", ".join(f"{k} {a!r} (now {b!r})" for k, a, b in revised)
            self.log(f"note: {self.run_dir} was started before its preset's recipe was revised; it "
                     f"continues with its own: {shown}")
        return state

    def _restore(self, state: dict) -> None:
        self._final = bool(state.get("final"))
        try:
            self.method.load_state_dict(state["method"])
            if not self._final:
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
        partial = state.get("partial")
        if partial is not None and self.dist.enabled:
            self.log(f"warning: the checkpoint was written in epoch {partial['epoch'] + 1} by one "
                     f"process; with {self.dist.world_size} that epoch restarts from its beginning")
            partial = None
        self._partial = partial
        if self._final and (self.run_dir / METRICS).is_file():
            self.finished_metrics = json.loads((self.run_dir / METRICS).read_text())

    def _state(self, epochs_done: int, final: bool = False, partial: dict | None = None) -> dict:
        state = {
            "config": self.config.to_dict(),
            "epoch": epochs_done,
            "method": self.method.state_dict(),
            "rng": capture_rng(),
            "history": self.history,
            "best": self.best,
            "elapsed": self.elapsed,
            "cls_num_list": self.cls_num_list,
            "environment": self.environment,
        }
        if final:  # enough for eval and analyze: no optimizer state (half the size)
            state["final"] = True
        else:
            state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict())
        if partial is not None:
            state["partial"] = partial
        return state

    def _save(self, epochs_done: int, final: bool = False, partial: dict | None = None) -> None:
        if self.dist.is_main:
            save_checkpoint(self._state(epochs_done, final, partial), self.run_dir / CHECKPOINT)

    def _save_partial(self, epoch: int, step: int, sums: torch.Tensor, seconds: float, skipped: int) -> None:
        """A mid-epoch checkpoint (one process): ``step`` steps of ``epoch`` done, with the
        random state and the running sums, so training continues exactly where it stopped."""
        self._save(epoch, partial={
            "epoch": epoch, "step": step, "rng": capture_rng(),
            "sums": sums.tolist(), "seconds": seconds, "skipped": skipped,
        })

    # ------------------------------------------------------------------ training

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    def _order(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """This process's sample order in ``epoch``: a seeded permutation (one process) or
        ``DistributedSampler``'s shard."""
        if self.dist.enabled:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(
                self.train_set, self.dist.world_size, self.dist.rank, shuffle=True,
                seed=self.config.train.seed, drop_last=self.config.train.drop_last,
            )
            sampler.set_epoch(epoch)
            return torch.tensor(list(sampler), dtype=torch.long)
        return torch.randperm(len(self.train_set), generator=generator)

    def _batches(self, epoch: int, seed: int, order: torch.Tensor, start: int):
        """``(iterable of batches, number of batches)`` of ``order`` from batch ``start`` on;
        ``seed``: this process's seed of the epoch (the device pipeline's draws)."""
        size = self.config.optim.batch_size // self.dist.world_size
        count = len(order) // size if self.config.train.drop_last else -(-len(order) // size)
        if self.pipeline == "device":
            return self.device_batches.batches(order, seed, start, count), count - start
        chunks = [order[b * size:(b + 1) * size].tolist() for b in range(start, count)]
        samples = SeededSamples(self.train_set, epoch_seed(self.config.train.seed, epoch),
                                self.method.uses_indices)
        loader = DataLoader(samples, batch_sampler=chunks, num_workers=loader_workers(self.config.data.workers),
                            pin_memory=self.device.type == "cuda",
                            collate_fn=getattr(self.train_set, "collate_fn", None))
        return loader, len(chunks)

    def train_one_epoch(self, epoch: int, max_steps: int | None = None) -> dict:
        """Train one epoch (or its first ``max_steps`` steps: benchmarks, smoke tests), from
        where a mid-epoch checkpoint stopped if there is one; returns the epoch's log row."""
        o, t = self.config.optim, self.config.train
        lr = learning_rate(epoch, o.lr, o.epochs, o.schedule, o.warmup_epochs, o.milestones, o.lr_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        seed = epoch_seed(t.seed, epoch) + self.dist.rank  # own stream per process
        seed_everything(seed)
        generator = torch.Generator().manual_seed(seed)
        order = self._order(epoch, generator)
        # running sums stay on the device (nothing in the step waits for it): loss, correct, seen
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        start, seconds_before, skipped = 0, 0.0, 0
        partial, self._partial = (self._partial, None) if self._partial and self._partial["epoch"] == epoch else (None, self._partial)
        if partial is not None:
            start, seconds_before, skipped = partial["step"], partial["seconds"], partial["skipped"]
            restore_rng(partial["rng"])
            sums = torch.tensor(partial["sums"], dtype=torch.float64, device=self.device)
        batches, total = self._batches(epoch, seed, order, start)
        if max_steps is not None:
            batches, total = itertools.islice(batches, max_steps), min(total, max_steps)
        self.method.train()
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        bar = progress_bar(batches, total=total, desc=f"epoch {epoch + 1}/{o.epochs}",
                           disable=not (t.progress and self.dist.is_main))
        begin = shown = time.perf_counter()
        step = start
        try:
            for step, (images, targets, *indices) in enumerate(bar, start + 1):
                if isinstance(images, EncodedBatch):  # data.decode=device: nvJPEG + GPU transforms
                    images, targets, *indices = self.train_set.decode_batch(images, self.device, targets, *indices)
                images, targets = to_device(images, self.device), targets.to(self.device, non_blocking=True)
                if self.normalize is not None:  # uint8 from the loader: normalised here, on the device
                    images = self.normalize(images)
                extra = {"indices": indices[0].to(self.device, non_blocking=True)} if indices else {}
                with _autocast(self.device, self.amp):
                    out = self.model(images, targets, epoch, **extra)
                loss = out.loss.detach()
                if t.nan_policy == "skip" and not self._all_finite(loss):
                    skipped += 1  # one read of the loss per step: the price of skipping
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                n = targets.shape[0]
                sums[0] += loss.double() * n  # in place on the device: no copy from the host
                sums[1] += (out.scores.detach().argmax(dim=1) == targets).sum()
                sums[2] += n
                if t.nan_policy == "stop":
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
                now = time.perf_counter()
                if self.device.type == "cpu" or now - shown > 1.0:  # a read costs nothing on the CPU
                    shown = now
                    self._check_finite(first_bad, epoch, total + start)
                    if not bar.disable:
                        loss_sum, correct, seen = sums.tolist()
                        bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{100 * correct / max(seen, 1):.1f}%",
                                        refresh=False)  # drawn with the next update, at the bar's pace
                signum = self._stop.signum
                if signum:
                    seconds = seconds_before + time.perf_counter() - begin
                    self._check_finite(first_bad, epoch, total + start)
                    self._save_partial(epoch, step, sums, seconds, skipped)
                    raise Interrupted(signum, self.run_dir, f"in epoch {epoch + 1} after step {step} of {total + start}")
        finally:
            bar.close()  # ends the loader's worker processes too
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._check_finite(first_bad, epoch, total + start)
        seconds = seconds_before + time.perf_counter() - begin
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(sums)
        loss_sum, correct, count = sums.tolist()
        if count == 0 and skipped:
            raise TrainingError(
                f"every step of epoch {epoch + 1} had a non-finite loss ({skipped} skipped); lower "
                "optim.lr or check the data; the last good checkpoint is kept"
            )
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum / max(count, 1),
            "train_acc": 100.0 * correct / max(count, 1),
            "seconds": seconds,
            "images_per_s": count / seconds if seconds > 0 else None,
        }
        if t.nan_policy == "skip":
            row["skipped_steps"] = skipped
        return row

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss).float().reshape(1)
        if self.dist.enabled:  # every process skips the same step, or none does
            import torch.distributed as dist

            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def _check_finite(self, first_bad: torch.Tensor, epoch: int, steps: int) -> None:
        bad = int(first_bad.item())
        if bad >= 0:
            raise TrainingError(
                f"the training loss became non-finite (nan or inf) in epoch {epoch + 1} at step "
                f"{bad} of {steps}; lower optim.lr, set train.nan_policy=skip to drop such steps, "
                "or enable train.deterministic to find the batch; the last good checkpoint is kept"
            )

    def evaluate(self) -> dict:
        return evaluate_method(
            self.method, self.eval_batches, self.cls_num_list, self.num_classes, self.device, self.amp,
            progress=self.config.train.progress and self.dist.is_main,
        )

    def _class_vector_check(self, epoch: int) -> dict:
        """``class_cos_mean`` / ``class_cos_max`` of the classifier's class vectors for the log
        row, and a warning (once) when they have collapsed onto one direction."""
        with torch.no_grad():
            cos = class_vector_cosines(self.method.class_weights())
        if cos["mean"] is None:
            return {}
        if cos["mean"] > COLLAPSED_CLASS_COSINE and not self._collapse_reported:
            self._collapse_reported = True
            self.log(
                f"warning: after epoch {epoch + 1} the classifier's class vectors point nearly the "
                f"same way (mean cosine between two classes' vectors {cos['mean']:.3f}): every "
                "class scores alike and accuracy stays near chance. A margin loss does this when "
                "every class gets a large margin (e.g. DBM, whose rarest class gets "
                "loss.max_margin, on balanced data); lower loss.max_margin (docs/method.md, "
                "'Collapsed class vectors')"
            )
        return {"class_cos_mean": cos["mean"], "class_cos_max": cos["max"]}

    def _write_tensorboard(self, row: dict) -> None:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD))
            except ImportError:  # tensorboard not installed
                self._writer = False
        if self._writer:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def fit(self) -> dict:
        """Train the remaining epochs, evaluate the final model, write ``metrics.json``.

        On SIGINT / SIGTERM: stops after the current step, writes a checkpoint and raises
        :class:`Interrupted`. A run that is already finished returns its metrics."""
        try:
            if self.finished_metrics is not None:
                self.log(f"{self.run_dir} is already finished (epoch {self.start_epoch}/"
                         f"{self.config.optim.epochs}); its metrics: {self.run_dir / METRICS}")
                return self.finished_metrics
            with self._stop:
                return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        c, o = self.config, self.config.optim
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.run_dir / CONFIG)
            write_log(self.run_dir, self.history)  # the checkpoint's epochs, each once
        if self.start_epoch or self._partial:
            where = (f"in epoch {self._partial['epoch'] + 1} after step {self._partial['step']}" if self._partial
                     else f"after epoch {self.start_epoch}/{o.epochs}")
            self.log(f"resuming {self.run_dir} {where}")
        self.log(
            f"{c.name or 'run'}: {c.method.name}/{c.loss.name} on {c.data.name} ("
            + (f"IF {c.data.imbalance_factor:g}, " if hasattr(self.train_set, "imbalance_factor") else "")
            + f"{len(self.train_set)} train images), "
            f"{c.model.name}+{c.model.classifier}, {o.epochs} epochs, device {self.device}"
            + (f" x{self.dist.world_size}" if self.dist.enabled else "")
            + f", {self.pipeline} pipeline" + (", amp " + str(amp_dtype(self.device)).split(".")[1] if self.amp else "")
            + (", channels-last" if c.train.channels_last else "")
        )
        if o.warmup_epochs > o.epochs and o.schedule != "cosine_shifted":
            self.log(f"note: optim.warmup_epochs={o.warmup_epochs} is longer than the run ({o.epochs} "
                     f"epochs); the warm-up spans the whole run")
        if c.data.limit:
            self.log(f"note: data.limit={c.data.limit}: training on {len(self.train_set)} images of the "
                     "training split (a smoke test; not comparable with full runs)")
        for epoch in range(self.start_epoch, o.epochs):
            row = self.train_one_epoch(epoch)
            self.elapsed += row["seconds"]
            every = c.train.eval_every
            if every and (epoch + 1) % every == 0:
                result = self.evaluate()
                row.update({f"test_{k}": result[k] for k in ("top1", "many", "medium", "few")})
                row.update(self._class_vector_check(epoch))
                if self.best is None or result["top1"] >= self.best["top1"]:
                    self.best = {"epoch": epoch + 1, **result}
            self.history.append(row)
            self._save(epoch + 1)  # the checkpoint first, then the log line
            if self.dist.is_main:
                with open(self.run_dir / LOG, "a") as f:
                    f.write(json.dumps(row) + "\n")
                self._write_tensorboard(row)
            self.log(
                f"epoch {epoch + 1}/{o.epochs}  lr {row['lr']:.5f}  loss {row['train_loss']:.4f}  "
                f"train acc {row['train_acc']:.2f}%"
                + (f"  test top1 {row['test_top1']:.2f}%" if "test_top1" in row else "")
                + (f"  skipped {row['skipped_steps']} steps" if row.get("skipped_steps") else "")
                + f"  {row['seconds']:.1f}s"
            )
            signum = self._stop.signum
            if signum:
                raise Interrupted(signum, self.run_dir, f"after epoch {epoch + 1}")
        return self.finish()

    def finish(self) -> dict:
        """Evaluate the final model; write ``metrics.json``, the per-class plot and the final
        checkpoint (weights only)."""
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
            "imbalance_factor": c.data.imbalance_factor if hasattr(self.train_set, "imbalance_factor") else None,
            "cls_num_list": self.cls_num_list,
            "classes": list(getattr(self.train_set, "classes", [])),
            "train_seconds": self.elapsed,
            "pipeline": self.pipeline,
            "limit": c.data.limit or None,  # a smoke test on part of the training split
            "environment": self.environment,
            "paper": paper_reference(c),
        }
        if self.best is not None:
            metrics["best_epoch"] = {
                **self.best,
                "note": "best test accuracy over epochs (test-set model selection, as the "
                "original code reports); not the reported result",
            }
        if self.dist.is_main:
            plot_per_class_accuracy(
                result["per_class"], self.cls_num_list, self.run_dir / PER_CLASS_PLOT,
                title=f"{c.name or c.method.name}: final epoch, top-1 {result['top1']:.2f}%",
                class_names=metrics["classes"],
            )
            write_json(self.run_dir / METRICS, metrics)  # the run is finished once this exists
            self._save(metrics["epoch"], final=True)
            if self._writer:
                self._writer.close()
        self.log(format_groups(metrics))
        return metrics


def _configure_backends(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune convolutions for the fixed input size


def _wrap(method: Method, dist_info: DistInfo, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """The module the step calls: ``DistributedDataParallel`` under torchrun, with
    ``SyncBatchNorm`` (statistics of the global batch; the parameters stay the same objects)
    when ``sync_bn``."""
    if not dist_info.enabled:
        return method
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        for name, child in list(method.named_children()):
            setattr(method, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None)


def compile_model(
    model: torch.nn.Module, device: torch.device, log: Callable[[str], None], mode: str = "default"
) -> torch.nn.Module:
    """``model`` compiled with ``torch.compile`` in ``mode`` (in place: parameter names are
    unchanged), or ``model`` itself with a message where the compiler does not work on this
    machine."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(2, device=device))  # the tool chain works
    except Exception as err:  # noqa: BLE001 - any failure of the compiler stack means eager
        log(f"train.compile: the compiler is unavailable here ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}); training in eager mode")
        return model
    model.compile(mode=mode)
    return model


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

