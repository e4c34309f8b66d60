"""The training engine: one loop for every method.

:class:`Trainer` trains a validated :class:`~dbm_ltr.engine.config.Config` into a run directory
(files: :mod:`.rundir`). It survives faults: a checkpoint (atomic, checksummed, the previous
one kept) after every epoch and, on SIGINT / SIGTERM, in the middle of one; every random draw of
an epoch derives from (seed, epoch, rank, and for the loader pipeline the batch), so a
run resumed from any checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import DbmLtrError
from ..figures import plot_per_class_accuracy
from ..methods import method_views
from ..metrics import class_vector_cosines
from ..models import pretrained_trunks
from .build import (
    build_method,
    compile_model,
    configure_backends,
    load_datasets,
    parameter_groups,
    to_layout,
    wrap_model,
)
from .checkpoint import CheckpointError, capture_rng, load_latest, previous_path, restore_rng, save_checkpoint
from .config import Config, ConfigError, save_config
from .distributed import available_cores, init_distributed, pick_device
from .evaluation import evaluate_method, format_groups, paper_reference, progress_bar
from .pipeline import build_pipeline, epoch_seed
from .precision import amp_dtype, autocast
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
from .signals import Interrupted, StopSignals

__all__ = ["Interrupted", "Trainer", "TrainingError", "seed_everything"]

#: Mean cosine between two classes' vectors above which the classifier counts as collapsed
#: (trained heads of the CIFAR runs: linear about -0.1, cosine 0.2-0.88 (DBM at IF 10: 0.84-0.88);
#: collapsed DBM runs on balanced data: 0.95-1.0).
COLLAPSED_CLASS_COSINE = 0.95


class TrainingError(DbmLtrError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
            torch.set_num_threads(t.threads or cores)  # each take every core of it
        self.device = pick_device(t.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device)
        configure_backends(t.deterministic, self.device)
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
        config, t, o = self.config, self.config.train, self.config.optim
        state = self._read_state(resume)
        seed_everything(t.seed)
        views = method_views(config.method.name)
        self.train_set, self.test_set = load_datasets(config, views, defer_normalize=True)
        self.cls_num_list = [int(n) for n in self.train_set.cls_num_list]
        self.num_classes = len(self.cls_num_list)  # from the training split (a split file may define it)
        # pretrained weights for a new run only (a resumed one restores its own)
        with pretrained_trunks(config.model.pretrained if state is None else "", config.model.name):
            self.method = to_layout(build_method(config, self.cls_num_list, self.num_classes).to(self.device), t)
        self.pipeline = build_pipeline(
            config, views, self.train_set, self.test_set, self.device, self.dist, with_indices=self.method.uses_indices
        )
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.method, o.weight_decay),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
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
        self.model = wrap_model(self.method, self.dist, self.device, t.sync_bn)
        if t.compile:
            self.model = compile_model(self.model, self.device, self.log, t.compile_mode)
        self._writer = None
        self._stop = StopSignals(enabled=not self.dist.enabled)

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
                    f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
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
            self.log(
                f"note: {self.run_dir} was started before its preset's recipe was revised; it "
                f"continues with its own: {shown}"
            )
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
            self.log(
                f"warning: the checkpoint was written in epoch {partial['epoch'] + 1} by one "
                f"process; with {self.dist.world_size} that epoch restarts from its beginning"
            )
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
        self._save(
            epoch,
            partial={
                "epoch": epoch,
                "step": step,
                "rng": capture_rng(),
                "sums": sums.tolist(),
                "seconds": seconds,
                "skipped": skipped,
            },
        )

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
                self.train_set,
                self.dist.world_size,
                self.dist.rank,
                shuffle=True,
                seed=self.config.train.seed,
                drop_last=self.config.train.drop_last,
            )
            sampler.set_epoch(epoch)
            return torch.tensor(list(sampler), dtype=torch.long)
        return torch.randperm(len(self.train_set), generator=generator)

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
        partial, self._partial = (
            (self._partial, None) if self._partial and self._partial["epoch"] == epoch else (None, self._partial)
        )
        if partial is not None:
            start, seconds_before, skipped = partial["step"], partial["seconds"], partial["skipped"]
            restore_rng(partial["rng"])
            sums = torch.tensor(partial["sums"], dtype=torch.float64, device=self.device)
        size = self.pipeline.batch_size
        count = len(order) // size if t.drop_last else -(-len(order) // size)
        stream = self.pipeline.train_batches(epoch, order, start, count)
        batches, total = stream, count - start
        if max_steps is not None:
            batches, total = itertools.islice(batches, max_steps), min(total, max_steps)
        self.method.train()
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        bar = progress_bar(
            batches, total=total, desc=f"epoch {epoch + 1}/{o.epochs}", disable=not (t.progress and self.dist.is_main)
        )
        begin = shown = time.perf_counter()
        step = start
        try:
            for step, (images, targets, *indices) in enumerate(bar, start + 1):
                extra = {"indices": indices[0]} if indices else {}
                with autocast(self.device, self.amp):
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
                        bar.set_postfix(
                            loss=f"{loss_sum / max(seen, 1):.3f}",
                            acc=f"{100 * correct / max(seen, 1):.1f}%",
                            refresh=False,
                        )  # drawn with the next update, at the bar's pace
                signum = self._stop.signum
                if signum:
                    seconds = seconds_before + time.perf_counter() - begin
                    self._check_finite(first_bad, epoch, total + start)
                    self._save_partial(epoch, step, sums, seconds, skipped)
                    raise Interrupted(
                        signum, self.run_dir, f"in epoch {epoch + 1} after step {step} of {total + start}"
                    )
        finally:
            bar.close()
            stream.close()  # ends the loader's worker processes too
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
            self.method,
            self.pipeline.eval_batches(),
            self.cls_num_list,
            self.num_classes,
            self.device,
            self.amp,
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
                self.log(
                    f"{self.run_dir} is already finished (epoch {self.start_epoch}/"
                    f"{self.config.optim.epochs}); its metrics: {self.run_dir / METRICS}"
                )
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
            where = (
                f"in epoch {self._partial['epoch'] + 1} after step {self._partial['step']}"
                if self._partial
                else f"after epoch {self.start_epoch}/{o.epochs}"
            )
            self.log(f"resuming {self.run_dir} {where}")
        self.log(
            f"{c.name or 'run'}: {c.method.name}/{c.loss.name} on {c.data.name} ("
            + (f"IF {c.data.imbalance_factor:g}, " if hasattr(self.train_set, "imbalance_factor") else "")
            + f"{len(self.train_set)} train images), "
            f"{c.model.name}+{c.model.classifier}, {o.epochs} epochs, device {self.device}"
            + (f" x{self.dist.world_size}" if self.dist.enabled else "")
            + f", {self.pipeline.name} pipeline"
            + (", amp " + str(amp_dtype(self.device)).split(".")[1] if self.amp else "")
            + (", channels-last" if c.train.channels_last else "")
        )
        if o.warmup_epochs > o.epochs and o.schedule != "cosine_shifted":
            self.log(
                f"note: optim.warmup_epochs={o.warmup_epochs} is longer than the run ({o.epochs} "
                f"epochs); the warm-up spans the whole run"
            )
        if c.data.limit:
            self.log(
                f"note: data.limit={c.data.limit}: training on {len(self.train_set)} images of the "
                "training split (a smoke test; not comparable with full runs)"
            )
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
            "pipeline": self.pipeline.name,
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
                result["per_class"],
                self.cls_num_list,
                self.run_dir / PER_CLASS_PLOT,
                title=f"{c.name or c.method.name}: final epoch, top-1 {result['top1']:.2f}%",
                class_names=metrics["classes"],
            )
            write_json(self.run_dir / METRICS, metrics)  # the run is finished once this exists
            self._save(metrics["epoch"], final=True)
            if self._writer:
                self._writer.close()
        self.log(format_groups(metrics))
        return metrics
