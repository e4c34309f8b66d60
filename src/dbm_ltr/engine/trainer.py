"""The training engine: one loop for every method.

:class:`Trainer` trains a validated :class:`~dbm_ltr.engine.config.Config` into a run directory
(files: :mod:`.rundir`). It survives faults: a checkpoint (atomic, checksummed, the previous
one kept) after every epoch and, on SIGINT / SIGTERM, in the middle of one; every random draw of
an epoch derives from (seed, epoch, rank, and for the loader pipeline the batch), so a
run resumed from any checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import TrainingError
from ..figures import plot_per_class_accuracy
from ..methods import method_views
from ..models import pretrained_trunks
from .build import (
    build_method,
    compile_model,
    load_datasets,
    parameter_groups,
    prepare_process,
    to_layout,
    wrap_model,
)
from .checkpoint import CheckpointError, capture_rng, restore_rng, save_checkpoint
from .config import Config
from .distributed import sync_buffers
from .evaluation import evaluate_method, final_metrics, format_groups, progress_bar
from .monitor import EpochMonitor, StepTally, describe_run
from .pipeline import build_pipeline, epoch_seed, seed_everything
from .precision import amp_dtype, autocast
from .rundir import (
    CHECKPOINT,
    CONFIG,
    LOG,
    METRICS,
    PER_CLASS_PLOT,
    TENSORBOARD,
    RunLock,
    environment,
    has_checkpoint,
    open_run,
    run_dir_error,
    save_config,
    write_json,
    write_log,
)
from .schedules import learning_rate
from .signals import Interrupted, StopSignals

__all__ = ["Interrupted", "Trainer", "TrainingError"]


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
        self.device, self.dist = prepare_process(config)
        self._lock = RunLock(self.run_dir).acquire() if self.dist.is_main else None
        self.environment = environment()
        try:
            self._setup(resume or t.auto_resume and has_checkpoint(self.run_dir))
        except BaseException:
            self.close()
            raise

    def _setup(self, resume: bool) -> None:
        config, t, o = self.config, self.config.train, self.config.optim
        state = open_run(self.run_dir, self.config, resume, self.dist.is_main, self.log)
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
        self._final = False  # the checkpoint is the final one (no optimizer state)
        self.finished_metrics: dict | None = None
        if state is not None:
            self._restore(state)
        self.model = wrap_model(self.method, self.dist, self.device, t.sync_bn)
        if t.compile:
            self.model = compile_model(self.model, self.device, self.log, t.compile_mode)
        self.monitor = EpochMonitor(self.run_dir / TENSORBOARD, self.log)
        self._stop = StopSignals(enabled=not self.dist.enabled)

    def close(self) -> None:
        """Release the run directory (also done when :meth:`fit` returns or fails)."""
        if self._lock is not None:
            self._lock.release()

    # ------------------------------------------------------------------ checkpoints

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
            "classes": [str(c) for c in getattr(self.train_set, "classes", None) or []],
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

    def _save_partial(self, epoch: int, step: int, sums: list[float], seconds: float, skipped: int) -> None:
        """A mid-epoch checkpoint (one process): ``step`` steps of ``epoch`` done, with the
        random state and the running sums, so training continues exactly where it stopped."""
        self._save(
            epoch,
            partial={
                "epoch": epoch,
                "step": step,
                "rng": capture_rng(),
                "sums": list(sums),
                "seconds": seconds,
                "skipped": skipped,
            },
        )

    # ------------------------------------------------------------------ training

    @contextlib.contextmanager
    def _writing(self, doing: str):
        """A filesystem error while writing the run directory, as one line (:func:`run_dir_error`)."""
        try:
            yield
        except OSError as err:
            raise run_dir_error(self.run_dir, err, doing) from None

    def log(self, message: str) -> None:
        if self.dist.is_main:
            self._log(message)

    def train_one_epoch(self, epoch: int, max_steps: int | None = None) -> dict:
        """Train one epoch (or its first ``max_steps`` steps: benchmarks, smoke tests), from
        where a mid-epoch checkpoint stopped if there is one; returns the epoch's log row."""
        o, t = self.config.optim, self.config.train
        lr = learning_rate(epoch, o.lr, o.epochs, o.schedule, o.warmup_epochs, o.milestones, o.lr_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        seed_everything(epoch_seed(t.seed, epoch) + self.dist.rank)  # own stream per process
        start, seconds_before, skipped, sums = 0, 0.0, 0, None
        partial, self._partial = (
            (self._partial, None) if self._partial and self._partial["epoch"] == epoch else (None, self._partial)
        )
        if partial is not None:
            start, seconds_before, skipped = partial["step"], partial["seconds"], partial["skipped"]
            restore_rng(partial["rng"])
            sums = partial["sums"]
        tally = StepTally(self.device, t.nan_policy == "stop", sums)
        stream, total = self.pipeline.train_batches(epoch, start)
        batches = stream
        if max_steps is not None:
            batches, total = itertools.islice(batches, max_steps), min(total, max_steps)
        self.method.train()
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
                if t.nan_policy == "skip" and not self._all_finite(out.loss.detach()):
                    skipped += 1  # one read of the loss per step: the price of skipping
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                tally.add(step, out.loss, out.scores, targets)
                now = time.perf_counter()
                if tally.on_host or now - shown > 1.0:  # a read costs nothing on the CPU
                    shown = now
                    self._check_finite(tally, epoch, total + start)
                    if not bar.disable:
                        loss_sum, correct, seen = tally.values()
                        bar.set_postfix(
                            loss=f"{loss_sum / max(seen, 1):.3f}",
                            acc=f"{100 * correct / max(seen, 1):.1f}%",
                            refresh=False,
                        )  # drawn with the next update, at the bar's pace
                if self._stop.signum:
                    self._stop_in_epoch(
                        epoch, step, total + start, tally, seconds_before + time.perf_counter() - begin, skipped
                    )
        except RuntimeError as err:
            # the signal reached the loader's workers too (a terminal's Ctrl-C, a scheduler's
            # SIGTERM to the job's processes) and they died before the next step boundary:
            # stop after the last finished step all the same
            if not (self._stop.signum and "DataLoader worker" in str(err)):
                raise
            self._stop_in_epoch(
                epoch, step, total + start, tally, seconds_before + time.perf_counter() - begin, skipped
            )
        finally:
            bar.close()
            stream.close()  # ends the loader's worker processes too
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._check_finite(tally, epoch, total + start)
        seconds = seconds_before + time.perf_counter() - begin
        loss_sum, correct, count = tally.all_reduce() if self.dist.enabled else tally.values()
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

    def _stop_in_epoch(self, epoch: int, step: int, steps: int, tally: StepTally, seconds: float, skipped: int):
        """A stop signal came: checkpoint after ``step`` and end with :class:`Interrupted`."""
        self._check_finite(tally, epoch, steps)
        self._save_partial(epoch, step, tally.values(), seconds, skipped)
        raise Interrupted(self._stop.signum, self.run_dir, f"in epoch {epoch + 1} after step {step} of {steps}")

    def _check_finite(self, tally: StepTally, epoch: int, steps: int) -> None:
        bad = tally.bad_step()
        if bad >= 0:
            raise TrainingError(
                f"the training loss became non-finite (nan or inf) in epoch {epoch + 1} at step "
                f"{bad} of {steps}; lower optim.lr, set train.nan_policy=skip to drop such steps, "
                "or enable train.deterministic to find the batch; the last good checkpoint is kept"
            )

    def evaluate(self) -> dict:
        if self.dist.world_size > 1:  # every shard scored by one model: rank 0's BatchNorm statistics
            sync_buffers(self.method)
        return evaluate_method(
            self.method,
            self.pipeline.eval_batches(),
            self.cls_num_list,
            self.num_classes,
            self.device,
            self.amp,
            progress=self.config.train.progress and self.dist.is_main,
            total=self.pipeline.eval_steps,
        )

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
            with self._writing("write the run's config and log into"):
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
        for line in describe_run(c, self.train_set, self.device, self.dist, self.pipeline.name, self.amp):
            self.log(line)
        for epoch in range(self.start_epoch, o.epochs):
            row = self.train_one_epoch(epoch)
            self.elapsed += row["seconds"]
            every = c.train.eval_every
            if every and (epoch + 1) % every == 0:
                result = self.evaluate()
                row.update({f"test_{k}": result[k] for k in ("top1", "many", "medium", "few")})
                row.update(self.monitor.class_vectors(self.method, epoch))
                if self.best is None or result["top1"] >= self.best["top1"]:
                    self.best = {"epoch": epoch + 1, **result}
            self.history.append(row)
            self._save(epoch + 1)  # the checkpoint first, then the log line
            if self.dist.is_main:
                with self._writing("append to the log in"), open(self.run_dir / LOG, "a") as f:
                    f.write(json.dumps(row) + "\n")
                self.monitor.write(row)
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
        last = self.history[-1]["epoch"] if self.history else self.start_epoch
        if self.best is not None and self.best["epoch"] != last and result["top1"] >= self.best["top1"]:
            self.best = {"epoch": last, **result}  # the final epoch is a candidate, evaluated every N or not
        metrics = final_metrics(
            c,
            result,
            epoch=self.history[-1]["epoch"] if self.history else self.start_epoch,
            train_set=self.train_set,
            cls_num_list=self.cls_num_list,
            train_seconds=self.elapsed,
            pipeline=self.pipeline.name,
            environment=self.environment,
            best=self.best,
        )
        if self.dist.is_main:
            with self._writing("write the final metrics into"):
                plot_per_class_accuracy(
                    result["per_class"],
                    self.cls_num_list,
                    self.run_dir / PER_CLASS_PLOT,
                    title=f"{c.name or c.method.name}: final epoch, top-1 {result['top1']:.2f}%"
                    + (f" (data.limit={c.data.limit}: a smoke test)" if c.data.limit else "")
                    + (f" (data.test_limit={c.data.test_limit})" if c.data.test_limit else ""),
                    class_names=metrics["classes"],
                )
                write_json(self.run_dir / METRICS, metrics)  # the run is finished once this exists
            self._save(metrics["epoch"], final=True)
            self.monitor.close()
        self.log(format_groups(metrics))
        return metrics
