import errno
import functools
import json
import os
from pathlib import Path

import pytest
import torch
from fakes import tiny_overrides

from dbm_ltr.engine import CheckpointError, Trainer, TrainingError, load_config
from dbm_ltr.engine.checkpoint import load_checkpoint, previous_path, save_checkpoint


def quiet(_message):
    pass


@pytest.mark.parametrize("at_2,final,best", [(50.0, 60.0, 3), (60.0, 50.0, 2)])
def test_the_final_epoch_is_a_best_epoch_candidate_when_not_a_multiple_of_eval_every(
    fake_cifar10, tmp_path, at_2, final, best
):
    """3 epochs evaluated every 2: the best test epoch is chosen among epoch 2 and the final one."""
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=3) + ["train.eval_every=2"])
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    real, scores = trainer.evaluate, [at_2, final]

    def scored():
        return {**real(), "top1": scores.pop(0)}

    trainer.evaluate = scored
    metrics = trainer.fit()
    assert metrics["best_epoch"]["epoch"] == best and metrics["best_epoch"]["top1"] == max(at_2, final)


def test_two_epoch_run_writes_a_complete_run_directory(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/dbm_ce", tiny_overrides(fake_cifar10) + ["train.eval_every=1"])
    metrics = Trainer(cfg, tmp_path / "run", log=quiet).fit()
    run = tmp_path / "run"
    for name in ("config.yaml", "checkpoint.pt", "log.jsonl", "metrics.json", "per_class_accuracy.png"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert {"top1", "many", "medium", "few", "per_class"} <= set(saved)
    assert saved["reported"] == "final epoch" and saved["epoch"] == 2
    assert saved["cls_num_list"] == [40, 30, 23, 18, 14, 11, 8, 6, 5, 4]
    assert saved["many"] is None  # no class above 100 training images here
    assert len(saved["per_class"]) == 10 and 0 <= saved["top1"] <= 100
    assert saved["best_epoch"]["epoch"] in (1, 2) and "not the reported result" in saved["best_epoch"]["note"]
    assert saved["paper"] == {"top1": 90.95, "source": cfg.paper["source"]}  # IF 10 row of Table 2
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "test_top1" in rows[0]
    assert metrics["top1"] == saved["top1"]
    assert load_config(run / "config.yaml").to_dict() == {**cfg.to_dict(), "name": "cifar10_lt/dbm_ce"}


@pytest.mark.parametrize("preset", ["cifar10_lt/ce_drw", "cifar10_lt/ldam", "cifar10_lt/bcl", "cifar10_lt/ncl"])
def test_other_methods_train(fake_cifar10, tmp_path, preset):
    cfg = load_config(preset, tiny_overrides(fake_cifar10, epochs=1) + ["loss.drw_epoch=1"] * (preset.endswith("drw")))
    metrics = Trainer(cfg, tmp_path / "run", log=quiet).fit()
    assert metrics["epoch"] == 1


def _interrupt_after(trainer, epochs_done):
    original = trainer.train_one_epoch

    def patched(epoch):
        if epoch >= epochs_done:
            raise KeyboardInterrupt
        return original(epoch)

    trainer.train_one_epoch = patched


@pytest.mark.parametrize(
    "preset,extra",
    [
        ("cifar10_lt/dbm_drw", ["loss.drw_epoch=1"]),
        ("cifar10_lt/dbm_bcl", ["optim.batch_size=64"]),
        ("cifar10_lt/dbm_ncl", ["method.queue_size=64", "method.num_experts=2"]),
    ],
)
def test_resume_is_exact(fake_cifar10, tmp_path, preset, extra):
    """Interrupted after epoch 1 and resumed == uninterrupted, to the last bit (model,
    optimizer, BN statistics, NCL's queues and momentum encoders, the log); the PIL loader
    pipeline (the device pipeline: test_pipeline.py)."""
    overrides = tiny_overrides(fake_cifar10, epochs=2) + [
        "train.deterministic=true",
        "data.pipeline=loader",
        "data.limit=80",
    ]
    cfg = load_config(preset, overrides + extra)
    straight = Trainer(cfg, tmp_path / "a", log=quiet)
    straight.fit()

    interrupted = Trainer(cfg, tmp_path / "b", log=quiet)
    _interrupt_after(interrupted, 1)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    resumed = Trainer(cfg, tmp_path / "b", resume=True, log=quiet)
    assert resumed.start_epoch == 1
    resumed.fit()

    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in opt_a:
        assert torch.equal(opt_a[key]["momentum_buffer"], opt_b[key]["momentum_buffer"])
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    strip = lambda rows: [
        {k: v for k, v in json.loads(r).items() if k not in ("seconds", "images_per_s")} for r in rows
    ]
    assert strip(log_a) == strip(log_b)


def test_float16_amp_scales_the_loss_and_resumes_exactly(tmp_path, monkeypatch):
    """GPUs below compute capability 8 train in float16 with a loss scaler (bfloat16, used on
    the CPU and newer GPUs, needs none): here the CPU is made to take that path. The scaler
    skips the steps its first scales overflow and backs off; its state is part of the
    checkpoint, so a run resumed after epoch 1 ends as the uninterrupted one."""
    from dbm_ltr.engine import monitor, precision, trainer

    for module in (precision, trainer, monitor):
        monkeypatch.setattr(module, "amp_dtype", lambda device: torch.float16)
    start = 2.0**24  # overflows float16 gradients: the scaler has work to do
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=start))
    # the digits demo's small CNN: float16 convolutions are slow on the CPU
    cfg = load_config("demo/dbm_ce", ["optim.epochs=2", "train.amp=true", "train.deterministic=true"])
    straight = Trainer(cfg, tmp_path / "a", log=quiet)
    assert straight.scaler.is_enabled()
    straight.fit()
    assert straight.scaler.get_scale() < start  # backed off
    interrupted = Trainer(cfg, tmp_path / "b", log=quiet)
    _interrupt_after(interrupted, 1)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["scaler"]["scale"] < start
    resumed = Trainer(cfg, tmp_path / "b", resume=True, log=quiet)
    assert resumed.scaler.state_dict() == load_checkpoint(tmp_path / "b" / "checkpoint.pt")["scaler"]
    resumed.fit()
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(v).all() for v in b.values() if v.is_floating_point())


def test_existing_run_needs_resume_and_resume_needs_same_config(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1))
    Trainer(cfg, tmp_path / "run", log=quiet).fit()
    with pytest.raises(CheckpointError, match="already holds a run; pass --resume"):
        Trainer(cfg, tmp_path / "run", log=quiet)
    other = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1) + ["optim.lr=0.2"])
    with pytest.raises(CheckpointError, match=r"different config \(optim.lr: checkpoint 0.1, now 0.2\)"):
        Trainer(other, tmp_path / "run", resume=True, log=quiet)
    moved = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1) + ["data.workers=1"])
    Trainer(moved, tmp_path / "run", resume=True, log=quiet)  # workers may change


def test_a_run_started_before_a_recipe_revision_resumes_with_its_own_recipe(fake_cifar10, tmp_path):
    """Resumed from the revised preset, a run started with the old cosine and torchvision's
    policy keeps both, says so, and ends as the uninterrupted old-recipe run."""
    old = tiny_overrides(fake_cifar10, epochs=2) + [
        "optim.schedule=cosine",
        "data.autoaugment=torchvision",
        "train.deterministic=true",
        "data.limit=60",
    ]
    straight = Trainer(load_config("cifar10_lt/ce", old), tmp_path / "a", log=quiet)
    straight.fit()
    interrupted = Trainer(load_config("cifar10_lt/ce", old), tmp_path / "b", log=quiet)
    _interrupt_after(interrupted, 1)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    revised = load_config(
        "cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=2) + ["data.limit=60", "train.deterministic=true"]
    )
    assert (revised.optim.schedule, revised.data.autoaugment) == ("cosine_reference", "reference")
    messages = []
    resumed = Trainer(revised, tmp_path / "b", resume=True, log=messages.append)
    assert (resumed.config.optim.schedule, resumed.config.data.autoaugment) == ("cosine", "torchvision")
    assert any(
        "was started before its preset's recipe was revised" in m
        and "optim.schedule 'cosine' (now 'cosine_reference')" in m
        and "data.autoaugment 'torchvision'" in m
        for m in messages
    ), messages
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_config(tmp_path / "b" / "config.yaml").optim.schedule == "cosine"


def test_corrupted_and_foreign_checkpoints(fake_cifar10, tmp_path):
    """A damaged latest checkpoint falls back to the previous one with a warning; with both
    damaged, or a file of another program, or weights of another model, a clear error."""
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=2))
    run = tmp_path / "run"
    Trainer(cfg, run, log=quiet).fit()
    latest, previous = run / "checkpoint.pt", run / "checkpoint.prev.pt"
    good = latest.read_bytes()
    latest.write_bytes(good[: len(good) // 2])
    said = []
    resumed = Trainer(cfg, run, resume=True, log=said.append)
    assert resumed.start_epoch == 2 and not resumed._final  # the full checkpoint after epoch 2
    assert "damaged or truncated" in said[0] and "using the previous checkpoint" in said[0]
    resumed.close()
    damaged = bytearray(previous.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte: torch.load would not notice
    previous.write_bytes(bytes(damaged))
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint.pt is damaged or truncated .*, and the previous one cannot stand in: "
        r".*checkpoint.prev.pt is damaged .*; delete it and rerun without --resume",
    ):
        Trainer(cfg, run, resume=True, log=quiet)
    previous.unlink()
    with pytest.raises(CheckpointError, match=r"damaged or truncated .*; delete it and rerun without --resume"):
        Trainer(cfg, run, resume=True, log=quiet)
    (run / "checkpoint.sha256").unlink()  # no digests (a copied file): torch.load decides
    latest.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        Trainer(cfg, run, resume=True, log=quiet)
    torch.save({"weights": 1}, latest)
    with pytest.raises(CheckpointError, match="not written by this version"):
        Trainer(cfg, run, resume=True, log=quiet)
    state = load_checkpoint_bytes(good, tmp_path)
    state["method"] = {"model.head.weight": torch.zeros(3)}
    save_checkpoint({k: v for k, v in state.items() if k != "format_version"}, latest)
    with pytest.raises(CheckpointError, match="does not match this model"):
        Trainer(cfg, run, resume=True, log=quiet)


def load_checkpoint_bytes(data, tmp_path):
    path = tmp_path / "copy.pt"
    path.write_bytes(data)
    return load_checkpoint(path)


@pytest.mark.parametrize(
    "code,reason", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "the folder is not writable")]
)
def test_a_failing_write_keeps_the_checkpoints_and_says_what_failed(tmp_path, monkeypatch, code, reason):
    from dbm_ltr.engine import checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["checkpoint.prev.pt", "checkpoint.pt", "checkpoint.sha256"]

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint, "_write_file", fail)
    with pytest.raises(
        CheckpointError,
        match=f"could not write the checkpoint of epoch 3 to {tmp_path}: {reason}.*"
        "the previous checkpoint .* is intact.*--resume",
    ):
        save_checkpoint({"epoch": 3}, path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing replaced, no temp file
    assert load_checkpoint(path)["epoch"] == 2


def test_a_save_killed_after_its_digest_leaves_both_files_verifiable(tmp_path, monkeypatch):
    """A save stopped between recording its digest and renaming its file (SIGKILL, a second
    Ctrl-C) records a file that never landed; the next save must record the digest of the file
    it actually moves to .prev, so the fallback still works when the latest is damaged."""
    from dbm_ltr.engine import checkpoint
    from dbm_ltr.engine.checkpoint import load_latest

    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1}, path)
    save_checkpoint({"epoch": 2}, path)
    real_replace = os.replace

    def killed_at_rotation(src, dst):
        if Path(src) == path:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_at_rotation)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 3}, path)
    monkeypatch.undo()
    assert load_latest(path) == ({"format_version": checkpoint.FORMAT_VERSION, "epoch": 2}, "")
    save_checkpoint({"epoch": 3}, path)  # the run resumed from epoch 2 and saved epoch 3
    assert load_checkpoint(previous_path(path))["epoch"] == 2
    path.write_bytes(path.read_bytes()[:-10])
    state, warning = load_latest(path)
    assert state["epoch"] == 2 and "using the previous checkpoint" in warning
    assert "delete it" not in warning  # the advice is for when nothing can stand in


def test_restoring_cuda_states_on_a_machine_with_fewer_gpus(monkeypatch):
    """A checkpoint holds one CUDA generator state per device its process saw; resuming where
    fewer are visible restores those that exist instead of failing on an index."""
    from dbm_ltr.engine.checkpoint import capture_rng, restore_rng

    state = capture_rng()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: restored.append((int(s[0]), index)))
    restore_rng(state)
    assert restored == [(0, 0), (1, 1)]


def test_nan_loss_stops_with_a_clear_error(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1) + ["optim.lr=1e30"])
    with pytest.raises(
        TrainingError, match=r"loss became non-finite \(nan or inf\) in epoch 1 at step 2 of 5; lower optim.lr"
    ):
        Trainer(cfg, tmp_path / "run", log=quiet).fit()


def test_missing_dataset_says_where_it_looked(tmp_path):
    from dbm_ltr.data import DatasetNotFoundError

    cfg = load_config("cifar100_lt/dbm_bs", [f"data.root={tmp_path}"])
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        Trainer(cfg, tmp_path / "run", log=quiet)


def test_mixed_precision_on_cpu_trains_in_bfloat16(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/dbm_bs", tiny_overrides(fake_cifar10, epochs=1) + ["train.amp=true"])
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    seen = {"trunk": set(), "head": set()}
    for part in seen:
        module = getattr(trainer.method.model, part)
        module.register_forward_hook(lambda module, args, out, part=part: seen[part].add(out.dtype))
    metrics = trainer.fit()
    assert seen == {"trunk": {torch.bfloat16}, "head": {torch.float32}}  # trunk under autocast, cosines float32
    assert 0 <= metrics["top1"] <= 100
    assert all(p.dtype == torch.float32 for p in trainer.method.parameters())


def test_a_collapsed_classifier_is_logged_and_reported_once(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/dbm_ce", tiny_overrides(fake_cifar10, epochs=2) + ["train.eval_every=1"])
    messages = []
    trainer = Trainer(cfg, tmp_path / "run", log=messages.append)
    head = trainer.method.model.head.weight
    with torch.no_grad():  # every class vector the same direction, kept so (no gradient)
        head.copy_(torch.ones(64, 1) * torch.linspace(1, 2, 10))
    head.requires_grad_(False)
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [round(r["class_cos_mean"], 6) for r in rows] == [1.0, 1.0]
    assert all(r["class_cos_max"] == pytest.approx(1.0) for r in rows)
    warnings = [m for m in messages if "class vectors point nearly the same way" in m]
    assert len(warnings) == 1 and "after epoch 1" in warnings[0] and "lower loss.max_margin" in warnings[0]


def test_a_trained_classifier_is_not_reported(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1) + ["train.eval_every=1"])
    messages = []
    Trainer(cfg, tmp_path / "run", log=messages.append).fit()
    row = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert -1 <= row["class_cos_mean"] < 0.95 and row["class_cos_mean"] <= row["class_cos_max"] <= 1
    assert not any("class vectors" in m for m in messages)


def test_progress_bar_written_to_a_file_is_redrawn_rarely(fake_cifar10, tmp_path, capsys):
    # stderr captured by pytest is not a terminal, as with nohup or a cluster's job log: one
    # draw at the start of each bar, not one or two for every step (159 images in batches of 8)
    cfg = load_config(
        "cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1) + ["train.progress=true", "optim.batch_size=8"]
    )
    Trainer(cfg, tmp_path / "run", log=quiet).fit()
    err = capsys.readouterr().err
    draws = [d for d in err.split("\r") if "epoch 1/1" in d]
    assert 1 <= len(draws) <= 3, draws  # the first draw, the clearing on close, nothing per step
