"""``data.pipeline``: batches augmented on the training device, exactly resumable."""

import json
import random
import signal

import numpy as np
import pytest
import torch
from fakes import tiny_overrides

from dbm_ltr.data import create_dataset
from dbm_ltr.engine import ConfigError, Trainer, load_config
from dbm_ltr.engine.build import compile_model
from dbm_ltr.engine.evaluation import evaluate_method
from dbm_ltr.engine.pipeline import DeviceBatches, DevicePipeline, LoaderPipeline, resolve_pipeline
from dbm_ltr.engine.precision import amp_dtype


def quiet(_message):
    pass


def test_auto_is_the_device_pipeline_where_batched_recipes_exist(fake_cifar10):
    cpu = torch.device("cpu")
    cfg = load_config("cifar10_lt/dbm_bcl", tiny_overrides(fake_cifar10))
    assert cfg.data.pipeline == "auto"
    assert resolve_pipeline(cfg, ("regular", "contrastive", "contrastive"), cpu) == "device"
    loader = load_config("cifar10_lt/dbm_bcl", tiny_overrides(fake_cifar10) + ["data.pipeline=loader"])
    assert resolve_pipeline(loader, ("regular", "contrastive"), cpu) == "loader"
    assert resolve_pipeline(load_config("demo/ce"), ("regular",), cpu) == "loader"  # no batched recipe
    digits = load_config("demo/ce", ["data.pipeline=device"])
    with pytest.raises(
        ConfigError, match=r"data.pipeline=device: the transform\(s\) none of digits_lt have no batched version"
    ):
        resolve_pipeline(digits, ("regular",), cpu)
    with pytest.raises(ConfigError, match="data.pipeline must be auto, loader or device"):
        load_config("cifar10_lt/ce", ["data.pipeline=gpu"])


def test_device_batches_follow_the_order_and_the_views(fake_cifar10):
    train = create_dataset("cifar10_lt", fake_cifar10, train=True, imbalance_factor=10)
    batches = DeviceBatches(train, ["cifar", "cifar_contrastive"], 32, torch.device("cpu"))
    assert len(train) == 159
    order = torch.randperm(159, generator=torch.Generator().manual_seed(3))
    seen = []
    for views, targets in batches.batches(order, 3, 0, 5):
        assert isinstance(views, list) and len(views) == 2
        assert views[0].shape == views[1].shape == (targets.shape[0], 3, 32, 32)
        assert views[0].dtype == torch.float32
        seen.append(targets)
    assert [t.shape[0] for t in seen] == [32, 32, 32, 32, 31]
    assert torch.equal(torch.cat(seen), torch.as_tensor(train.targets)[order])
    later = [t for _, t in batches.batches(order, 3, 3, 5)]  # from batch 3 on
    assert torch.equal(torch.cat(later), torch.as_tensor(train.targets)[order[96:]])
    indexed = DeviceBatches(train, ["cifar"], 32, torch.device("cpu"), with_indices=True)
    ((_, t, i),) = list(indexed.batches(order, 3, 4, 5))
    assert torch.equal(i, order[128:]) and torch.equal(t, torch.as_tensor(train.targets)[order[128:]])


def test_device_batches_are_augmented_a_chunk_at_a_time_and_resume_from_any_batch(fake_cifar10):
    """A chunk of batches is augmented at once with draws seeded by (epoch seed, chunk): the
    pixels of a batch are the recipe's on the chunk with the chunk's generator, and starting
    at any batch (a resumed epoch, mid-chunk included) gives the same pixels."""
    from dbm_ltr.data.batch_augment import create_batch_recipe
    from dbm_ltr.engine.pipeline import derived_seed

    train = create_dataset("cifar10_lt", fake_cifar10, train=True, imbalance_factor=10)
    order = torch.randperm(159, generator=torch.Generator().manual_seed(5))
    pipe = DeviceBatches(train, ["cifar"], 16, torch.device("cpu"), chunk_images=64)  # 4 batches a chunk
    assert pipe.chunk_batches == 4
    full = [x for x, _ in pipe.batches(order, 11, 0, 10)]
    assert [x.shape[0] for x in full] == [16] * 9 + [15]
    images = torch.from_numpy(train.data).permute(0, 3, 1, 2)
    recipe = create_batch_recipe("cifar")
    for chunk in range(3):  # chunks of batches 0-3, 4-7, 8-9
        expected = recipe(
            images[order[chunk * 64 : (chunk + 1) * 64]], torch.Generator().manual_seed(derived_seed(11, chunk))
        )
        assert torch.equal(torch.cat(full[chunk * 4 : (chunk + 1) * 4]), expected)
    for start in (1, 4, 6, 9):
        assert all(torch.equal(a, b) for a, b in zip(full[start:], [x for x, _ in pipe.batches(order, 11, start, 10)]))
    other = [x for x, _ in pipe.batches(order, 12, 0, 10)]  # another epoch's seed: other draws
    assert not torch.equal(other[0], full[0])
    with pytest.raises(ValueError, match="chunk_images must be >= 1"):
        DeviceBatches(train, ["cifar"], 16, torch.device("cpu"), chunk_images=0)


@pytest.mark.parametrize("policy", ["reference", "torchvision"])
def test_data_autoaugment_reaches_both_pipelines(fake_cifar10, tmp_path, policy):
    """The policy named in data.autoaugment is the one the regular view uses, per image in the
    loader and batched on the device; the contrastive views have none."""
    from torchvision.transforms import AutoAugment

    from dbm_ltr.data.autoaugment import ReferenceAutoAugment

    train = create_dataset("cifar10_lt", fake_cifar10, train=True, imbalance_factor=10)
    pipe = DeviceBatches(train, ["cifar", "cifar_contrastive"], 16, torch.device("cpu"), autoaugment=policy)
    assert pipe.recipes[0].autoaugment == policy and not hasattr(pipe.recipes[1], "autoaugment")
    cfg = load_config(
        "cifar10_lt/bcl",
        tiny_overrides(fake_cifar10, epochs=1)
        + [f"data.autoaugment={policy}", "data.pipeline=loader", "optim.batch_size=64"],
    )
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    kind = ReferenceAutoAugment if policy == "reference" else AutoAugment
    regular = trainer.train_set.transform.transforms[0]
    assert isinstance(regular.transforms[2], kind)
    trainer.close()


def test_data_autoaugment_off_cifar_is_an_error():
    from dbm_ltr.engine.build import view_transform

    cfg = load_config("demo/ce", ["data.autoaugment=torchvision"])
    with pytest.raises(
        ConfigError,
        match="data.autoaugment: the training transform.s. none of digits_lt have no "
        "AutoAugment; leave data.autoaugment at reference",
    ):
        view_transform(cfg, ("regular",))


def test_augment_views_name_one_transform_per_view():
    """``data.augment_views`` replaces the method's view kinds, one name per view (GML's three at
    ImageNet scale); a count that does not fit the method's views, or an unknown name, is a
    one-line error."""
    from dbm_ltr.engine.pipeline import transform_names

    gml = load_config("imagenet_lt/gml")
    assert transform_names(gml, ("regular", "regular", "regular")) == [
        "imagenet_randaug",
        "imagenet_randaug_stack",
        "imagenet_randaug_stack",
    ]
    plain = load_config("imagenet_lt/gml", ["data.augment_views=[]"])
    assert transform_names(plain, ("regular", "regular", "regular")) == ["imagenet_train"] * 3
    bcl = load_config("imagenet_lt/dbm_bcl")
    assert transform_names(bcl, ("regular", "contrastive", "contrastive")) == [
        "imagenet_randaug",
        "imagenet_contrastive",
        "imagenet_contrastive",
    ]
    with pytest.raises(
        ConfigError, match=r"data.augment_views names 3 transform\(s\), but method standard trains on 1"
    ):
        transform_names(
            load_config("imagenet_lt/ce", ["data.augment_views=[inat_test,inat_test,inat_test]"]), ("regular",)
        )
    with pytest.raises(ConfigError, match="data.augment_views: unknown 'imagenet_randaug_stak'"):
        load_config("imagenet_lt/gml", ["data.augment_views=[imagenet_randaug,imagenet_randaug_stak,x]"])


def test_device_and_loader_evaluation_agree(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/dbm_ce", tiny_overrides(fake_cifar10, epochs=1))
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    cpu = torch.device("cpu")
    pipelines = (
        LoaderPipeline(None, trainer.test_set, cpu, eval_batch_size=64),
        DevicePipeline(None, trainer.test_set, cpu, eval_batch_size=64, test_recipe="cifar_test"),
    )
    results = [evaluate_method(trainer.method, p.eval_batches(), trainer.cls_num_list, 10, cpu) for p in pipelines]
    assert results[0]["per_class"] == pytest.approx(results[1]["per_class"])
    assert results[0]["top1"] == pytest.approx(results[1]["top1"])


def test_the_loader_pipeline_draws_nothing_from_the_global_generator(fake_cifar10, tmp_path):
    """A DataLoader draws its base seed from the global generator unless given its own; then a
    run resumed mid-epoch (the global state restored, then a new loader) would continue from a
    state one draw away from the uninterrupted run's."""
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10) + ["data.pipeline=loader", "optim.batch_size=64"])
    pipeline = Trainer(cfg, tmp_path / "run", log=quiet).pipeline
    assert isinstance(pipeline, LoaderPipeline)
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()
    batches, count = pipeline.train_batches(epoch=1, start=1)
    assert len(list(batches)) == count == 2
    assert len(list(pipeline.eval_batches())) == pipeline.eval_steps
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]  # the per-sample seeding restores Python's and NumPy's too
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), before[2]))


def test_a_device_pipeline_run_writes_its_run_directory(fake_cifar10, tmp_path):
    cfg = load_config("cifar10_lt/dbm_bs", tiny_overrides(fake_cifar10) + ["data.pipeline=device"])
    messages = []
    metrics = Trainer(cfg, tmp_path / "run", log=messages.append).fit()
    assert metrics["pipeline"] == "device" and metrics["epoch"] == 2
    assert messages[0].endswith("device pipeline, channels-last")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["pipeline"] == "device"


@pytest.mark.parametrize(
    "preset,extra",
    [
        ("cifar10_lt/dbm_drw", ["loss.drw_epoch=1"]),
        ("cifar10_lt/dbm_bcl", ["optim.batch_size=64"]),
    ],
)
def test_resume_is_exact_with_the_device_pipeline(fake_cifar10, tmp_path, preset, extra):
    overrides = (
        tiny_overrides(fake_cifar10, epochs=2)
        + ["train.deterministic=true", "data.pipeline=device", "data.limit=80"]
        + extra
    )
    cfg = load_config(preset, overrides)
    straight = Trainer(cfg, tmp_path / "a", log=quiet)
    straight.fit()
    interrupted = Trainer(cfg, tmp_path / "b", log=quiet)
    original = interrupted.train_one_epoch

    def stop_after_first(epoch, max_steps=None):
        if epoch >= 1:
            raise KeyboardInterrupt
        return original(epoch, max_steps)

    interrupted.train_one_epoch = stop_after_first
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    resumed = Trainer(cfg, tmp_path / "b", resume=True, log=quiet)
    assert resumed.start_epoch == 1
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = lambda run: [
        {k: v for k, v in json.loads(r).items() if k not in ("seconds", "images_per_s")}
        for r in (tmp_path / run / "log.jsonl").read_text().splitlines()
    ]
    assert log("a") == log("b")


TIMING = ("seconds", "images_per_s", "train_seconds", "elapsed", "finished", "started", "environment")


def _untimed(value):
    """A log row or metrics.json without what depends on the clock or the machine."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    return value


def _descending_scores(trainer):
    """Test top-1 90 after epoch 1, 80 after epoch 2, ...: the best epoch is the first, so a
    resumed run has to carry it over from its checkpoint."""
    real = trainer.evaluate
    trainer.evaluate = lambda: {**real(), "top1": 90.0 - 10 * len(trainer.history)}
    return trainer


@pytest.mark.parametrize(
    "preset,limit,after_step,steps",
    [("cifar10_lt/dbm_ce", 96, 2, 3), ("cifar10_lt/dbm_bcl", 64, 2, 2)],  # DBM-BCL: after the last step
)
def test_a_stop_mid_epoch_resumes_exactly_with_the_device_pipeline(
    fake_cifar10, tmp_path, preset, limit, after_step, steps
):
    """A stop signal after step ``after_step`` of epoch 2 (of ``steps``), resumed: the weights,
    the epoch's log row (its loss and accuracy summed over both halves) and metrics.json with
    the best test epoch (evaluated every epoch; the first, from before the stop) equal those
    of the uninterrupted run."""
    from dbm_ltr.engine.signals import Interrupted

    cfg = load_config(
        preset,
        tiny_overrides(fake_cifar10, epochs=2)
        + ["train.deterministic=true", "data.pipeline=device", "train.eval_every=1", f"data.limit={limit}"],
    )
    straight = _descending_scores(Trainer(cfg, tmp_path / "a", log=quiet))
    straight.fit()
    interrupted = _descending_scores(Trainer(cfg, tmp_path / "b", log=quiet))
    batches = interrupted.pipeline.train_batches

    def stopping(epoch, start):
        stream, total = batches(epoch, start)
        assert total == steps

        def stream_with_a_stop():
            for step, batch in enumerate(stream, start + 1):
                if epoch == 1 and step == after_step:
                    interrupted._stop.signum = signal.SIGTERM  # as the handler sets it
                yield batch

        return stream_with_a_stop(), total

    interrupted.pipeline.train_batches = stopping
    with pytest.raises(Interrupted, match=f"in epoch 2 after step {after_step} of {steps}"):
        interrupted.fit()
    resumed = _descending_scores(Trainer(cfg, tmp_path / "b", resume=True, log=quiet))
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda run: [_untimed(json.loads(r)) for r in (tmp_path / run / "log.jsonl").read_text().splitlines()]
    assert rows("a") == rows("b") and len(rows("a")) == 2
    metrics = lambda run: _untimed(json.loads((tmp_path / run / "metrics.json").read_text()))
    assert metrics("a") == metrics("b") and metrics("a")["best_epoch"]["epoch"] == 1


def test_max_steps_amp_dtype_and_compile_fallback(fake_cifar10, tmp_path, monkeypatch):
    cfg = load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1) + ["data.pipeline=device"])
    trainer = Trainer(cfg, tmp_path / "run", log=quiet)
    row = trainer.train_one_epoch(0, max_steps=2)
    assert row["images_per_s"] * row["seconds"] == pytest.approx(64)  # 2 steps of 32
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    capability = {0: (7, 0), 1: (8, 0)}  # a V100 (bfloat16 emulated only) beside an A100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability[device.index])
    assert [amp_dtype(torch.device("cuda", i)) for i in (0, 1)] == [torch.float16, torch.bfloat16]

    def broken(*args, **kwargs):
        raise RuntimeError("no C compiler\nmore")

    monkeypatch.setattr(torch, "compile", broken)
    said = []
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, torch.device("cpu"), said.append) is model
    assert said == [
        "train.compile: the compiler is unavailable here (RuntimeError: no C compiler); training in eager mode"
    ]


def test_compile_mode_reaches_torch_compile_and_is_checked(fake_cifar10, tmp_path, monkeypatch):
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    cfg = load_config(
        "cifar10_lt/ce",
        tiny_overrides(fake_cifar10, epochs=1) + ["train.compile=true", "train.compile_mode=reduce-overhead"],
    )
    Trainer(cfg, tmp_path / "run", log=quiet).close()
    assert modes == ["reduce-overhead"]
    with pytest.raises(
        ConfigError,
        match="train.compile_mode must be one of default, reduce-overhead, "
        "max-autotune, max-autotune-no-cudagraphs, got 'fast'",
    ):
        load_config("cifar10_lt/ce", ["train.compile_mode=fast"])


def test_the_loader_gives_the_same_run_with_any_number_of_workers(fake_cifar10, tmp_path):
    """Each batch's augmentation is seeded by (seed, epoch, batch): 0 and 2 loader workers
    train to the same weights."""
    weights = []
    for workers in (0, 2):
        cfg = load_config(
            "cifar10_lt/bcl",
            tiny_overrides(fake_cifar10, epochs=1)
            + ["data.pipeline=loader", f"data.workers={workers}", "train.deterministic=true", "optim.batch_size=64"],
        )
        trainer = Trainer(cfg, tmp_path / f"w{workers}", log=quiet)
        trainer.train_one_epoch(0)
        weights.append(trainer.method.state_dict())
        trainer.close()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def _conv_layouts(method):
    """``channels_last`` / ``contiguous`` for each convolution weight of ``method``."""
    return {
        "channels_last" if m.weight.is_contiguous(memory_format=torch.channels_last) else "contiguous"
        for m in method.modules()
        if isinstance(m, torch.nn.Conv2d)
    }


def test_channels_last_is_the_default_layout_and_changes_only_rounding(fake_cifar10, tmp_path):
    """train.channels_last (default true) puts the model in channels-last memory, also when a
    checkpoint is restored for evaluation; the layout changes the arithmetic only at rounding
    level: from the same seed, the same loss and gradients on a batch to float32 tolerance."""
    from dbm_ltr.engine.build import restore_method
    from dbm_ltr.engine.checkpoint import load_checkpoint

    assert load_config("cifar10_lt/ce").train.channels_last is True
    images, targets = torch.randn(32, 3, 32, 32), torch.arange(32) % 10
    results = {}
    for flag, layout in (("true", "channels_last"), ("false", "contiguous")):
        cfg = load_config("cifar10_lt/dbm_ce", tiny_overrides(fake_cifar10, epochs=1) + [f"train.channels_last={flag}"])
        trainer = Trainer(cfg, tmp_path / flag, log=quiet)
        assert _conv_layouts(trainer.method) == {layout}
        loss = trainer.model(images, targets, 0).loss
        loss.backward()
        results[flag] = loss.item(), {n: p.grad.clone() for n, p in trainer.method.named_parameters()}
        trainer.close()
    assert results["true"][0] == pytest.approx(results["false"][0], rel=1e-5)
    # BatchNorm's channels-last CPU kernel is less exact than the contiguous one (output error
    # against float64 about 4e-6 against 4e-8 on unit-normal input); through the 31 BatchNorm
    # layers of a random-init ResNet-32 that grows to about 7e-3 in the stem's gradient, where
    # contiguous float32 is itself 2e-3 from float64
    for name, grad in results["true"][1].items():
        other = results["false"][1][name]
        assert (grad - other).norm() <= 2e-2 * other.norm() + 1e-7, name

    run = tmp_path / "run"
    Trainer(load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1)), run, log=quiet).fit()
    state = load_checkpoint(run / "checkpoint.pt")
    _, default = restore_method(state)
    _, plain = restore_method(state, ["train.channels_last=false"])
    assert _conv_layouts(default) == {"channels_last"} and _conv_layouts(plain) == {"contiguous"}
    with torch.no_grad():
        torch.testing.assert_close(default.predict(images), plain.predict(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "base,dbm,pipeline",
    [
        ("ce", "dbm_ce", "loader"),
        ("ce", "dbm_ce", "device"),
        ("ce_drw", "dbm_drw", "device"),
        ("bs", "dbm_bs", "device"),
    ],
)
def test_one_seed_gives_a_dbm_row_and_its_baseline_the_same_start_and_batches(
    fake_cifar10, tmp_path, base, dbm, pipeline
):
    """A paired comparison (DBM-CE - CE at one seed, as ``report`` makes) compares like with like:
    the same trunk initialisation, and in every epoch the same sample order and augmentation
    draws, even after the two models' weights (and so their losses) have parted."""
    seen = {}
    for preset in (base, dbm):
        cfg = load_config(f"cifar10_lt/{preset}", tiny_overrides(fake_cifar10) + [f"data.pipeline={pipeline}"])
        trainer = Trainer(cfg, tmp_path / preset, log=quiet)
        batches, forward = [], trainer.model.forward

        def record(images, targets, epoch, forward=forward, batches=batches, **extra):
            batches.append((images.clone(), targets.clone()))
            return forward(images, targets, epoch, **extra)

        trainer.model.forward = record
        start = {k: v.clone() for k, v in trainer.method.state_dict().items()}
        for epoch in (0, 1):
            trainer.train_one_epoch(epoch, max_steps=3)
        seen[preset] = start, batches
    (start_ce, batches_ce), (start_dbm, batches_dbm) = seen[base], seen[dbm]
    shared = start_ce.keys() & start_dbm.keys()
    differing = (start_ce.keys() ^ start_dbm.keys()) | {k for k in shared if not torch.equal(start_ce[k], start_dbm[k])}
    assert differing == {"model.head.weight", "model.head.bias"}, differing  # a linear head, a cosine one
    assert len(batches_ce) == len(batches_dbm) == 6
    for (images_a, targets_a), (images_b, targets_b) in zip(batches_ce, batches_dbm):
        assert torch.equal(targets_a, targets_b) and torch.equal(images_a, images_b)
    assert not torch.equal(batches_ce[0][0], batches_ce[3][0])  # epochs differ from each other
