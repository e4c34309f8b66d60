"""Building a run from its config: the data sets and their transforms, the method (loss,
model, a teacher it distils), its memory layout, parameter groups and process wrapping; and
rebuilding the method of a checkpoint."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import (
    DATASET_INFO,
    DATASETS,
    TRANSFORMS,
    LimitedDataset,
    MultiView,
    build_transform,
    create_dataset,
    limit_indices,
)
from ..errors import DbmLtrError, UnsafeCheckpointError
from ..losses import create_loss
from ..methods import Method, create_method
from .checkpoint import CHECKPOINT, CheckpointError, load_latest
from .config import Config, ConfigError, DataConfig, TrainConfig, apply_overrides, config_from_dict, saved_config
from .distributed import DistInfo, available_cores, init_distributed, pick_device
from .pipeline import transform_names

__all__ = [
    "build_dataset",
    "build_method",
    "compile_model",
    "load_teacher",
    "configure_backends",
    "load_datasets",
    "parameter_groups",
    "prepare_process",
    "restore_method",
    "to_layout",
    "transform",
    "view_transform",
    "wrap_model",
]


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
    sizes = {k: v for k, v in (("size", size), ("crop", size), ("resize", round(size * 256 / 224))) if k in accepted}
    if not sizes:
        raise ConfigError(
            f"data.image_size: the transform {name!r} of {config.data.name} has a fixed size; "
            "leave data.image_size at 0"
        )
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
        "autoaugment" in factory_parameters(TRANSFORMS.lookup(n)) for n in names
    ):
        raise ConfigError(
            f"data.autoaugment: the training transform(s) {', '.join(names)} of "
            f"{config.data.name} have no AutoAugment; leave data.autoaugment at "
            f"{DataConfig.autoaugment}"
        )
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


def build_dataset(config: Config, train: bool, transform: Callable | None = None, **options) -> Dataset:
    """One split of ``config``'s data set (``data.name``, ``root``, imbalance factor, split seed,
    download and the split-file options; ``options`` override the last, e.g. ``decode="cpu"``)
    with ``transform``: every data set of a run, an evaluation or an analysis is built here."""
    d = config.data
    return create_dataset(
        d.name,
        d.root,
        train=train,
        transform=transform,
        imbalance_factor=d.imbalance_factor,
        download=d.download,
        seed=d.seed,
        **{**dataset_options(config), **options},
    )


def load_datasets(
    config: Config,
    views: tuple[str, ...],
    train: bool = True,
    defer_normalize: bool = False,
) -> tuple[Dataset | None, Dataset]:
    """(train set with the method's views or ``None``, test set); ``defer_normalize``: the
    large-scale recipes pass uint8 images and leave the normalisation to the batches
    (:func:`~dbm_ltr.data.batch_normalizer`; the engine's batches apply it on the device)."""
    d = config.data
    train_set = build_dataset(config, True, view_transform(config, views, defer_normalize)) if train else None
    if train_set is not None and d.limit:
        train_set = LimitedDataset(
            train_set, limit_indices(train_set.targets, d.limit, len(train_set.cls_num_list)), d.limit
        )
    test_name = DATASET_INFO[d.name]["test_transform"]  # the name was checked with the config
    test_set = build_dataset(config, False, transform(config, test_name, defer_normalize))
    if d.test_limit:  # the same number of test images from every class
        targets = np.asarray(test_set.targets)
        classes = int(targets.max(initial=-1)) + 1
        test_set = LimitedDataset(test_set, balanced_indices(targets, d.test_limit, classes), d.test_limit)
    return train_set, test_set


def balanced_indices(targets: np.ndarray, limit: int, num_classes: int) -> np.ndarray:
    """Positions of ``limit // num_classes`` samples of every class (the first in order; all of
    a smaller class): ``data.test_limit``."""
    if limit < num_classes:
        raise ConfigError(
            f"data.test_limit={limit} cannot keep all {num_classes} classes of the test set (one image each at "
            f"least); use data.test_limit >= {num_classes} or 0 for the whole set"
        )
    per_class = limit // num_classes
    keep = [np.flatnonzero(targets == c)[:per_class] for c in range(num_classes)]
    return np.sort(np.concatenate(keep))


def build_method(config: Config, cls_num_list: list[int], num_classes: int, teacher: dict | None = None) -> Method:
    """The method of ``config`` (loss, models; a teacher it distils, loaded by
    :func:`load_teacher`, or given as its checkpoint state ``teacher``) for a training split of
    ``cls_num_list`` images per class."""
    if len(cls_num_list) != num_classes:
        raise ValueError(f"{len(cls_num_list)} class counts for {num_classes} classes")
    try:
        loss = create_loss(config.loss.name, cls_num_list, **config.loss.params)
        params = dict(config.method.params)
        if "teacher" in params:  # a method that distils a finished run
            params["teacher"] = teacher if teacher is not None else load_teacher(config, num_classes)
        return create_method(
            config.method.name,
            trunk=config.model.name,
            classifier=config.model.classifier,
            num_classes=num_classes,
            cls_num_list=list(cls_num_list),
            loss=loss,
            loss_name=config.loss.name,
            **params,
        )
    except (ValueError, TypeError) as err:
        if isinstance(err, DbmLtrError):
            raise
        raise ConfigError(str(err)) from None


def load_teacher(config: Config, num_classes: int) -> dict:
    """The checkpoint state of the finished run that ``method.teacher`` names (a run directory
    or its checkpoint file), read by the engine's loader (digest checked, nothing of it
    executed) and checked against this run: the same data set, imbalance factor, split seed
    and number of classes, and finished; ``ValueError`` naming the mismatch otherwise."""
    name = config.method.name
    text = str(config.method.params.get("teacher") or "")
    if not text:
        raise ValueError(
            f"{name.upper()} needs a teacher: train one with dbm-ltr train --config "
            f"<data set>/{name}_teacher --out RUN, then set method.teacher=RUN"
        )
    path = Path(text)
    file = path / CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise ValueError(
            f"method.teacher: no teacher checkpoint at {file} (give a run directory of "
            "dbm-ltr train or its checkpoint.pt)"
        )
    try:
        state, _ = load_latest(file)  # digest checked; a damaged latest falls back to the previous
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"method.teacher: {err}") from None
    except CheckpointError as err:
        raise ValueError(f"method.teacher: {err}") from None
    saved = saved_config(state.get("config"))
    if not isinstance(saved, dict) or "method" not in state:
        raise ValueError(f"method.teacher: {file} was not written by dbm-ltr train")
    data, optim, d = saved.get("data", {}), saved.get("optim", {}), config.data
    for what, theirs, ours in (
        ("data set", data.get("name"), d.name),
        ("imbalance factor", data.get("imbalance_factor"), d.imbalance_factor),
        ("split seed (data.seed)", data.get("seed"), d.seed),
        ("number of classes", len(state.get("cls_num_list", [])), num_classes),
    ):
        if theirs != ours:
            raise ValueError(
                f"method.teacher: {path} was trained with {what} {theirs!r}, this student needs "
                f"{ours!r}; train a teacher for this data set (its {name}_teacher preset)"
            )
    if state.get("epoch") != optim.get("epochs"):
        raise ValueError(
            f"method.teacher: {path} is not finished (epoch {state.get('epoch')} of "
            f"{optim.get('epochs')}); finish it with dbm-ltr train --out {path} --resume"
        )
    return state


def to_layout(method: Method, train: TrainConfig) -> Method:
    """``method`` with its 4-D weights in channels-last memory where ``train.channels_last``
    (the convolutions then run channels-last whatever the layout of their input)."""
    return method.to(memory_format=torch.channels_last) if train.channels_last else method


def restore_method(
    state: dict,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | None = None,
    source: str = "checkpoint",
    run_dir: str | Path | None = None,
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
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else ""  # the first kind of mismatch
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        changed = [o for o in overrides if o.split("=", 1)[0].strip().startswith(("model.", "method.", "loss."))]
        if changed:
            raise CheckpointError(
                f"{source} holds another model than --set {' '.join(changed)} makes ({detail}); "
                "leave out the settings that change the model"
            ) from None
        raise CheckpointError(f"{source} does not match its own config ({detail})") from None
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


def prepare_process(config: Config) -> tuple[torch.device, DistInfo]:
    """``(device, distributed info)`` of this process for ``config.train``: its share of the CPU
    threads, its device (``LOCAL_RANK``'s GPU under torchrun), the process group, the
    convolution backends; settings that cannot work here are a :class:`ConfigError`."""
    t = config.train
    cores = available_cores()
    if t.threads or torch.get_num_threads() > cores:  # two jobs on one machine must not
        torch.set_num_threads(t.threads or cores)  # each take every core of it
    device = pick_device(t.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = init_distributed(device)
    configure_backends(t.deterministic, device)
    if t.sync_bn and dist_info.enabled and device.type != "cuda":
        raise ConfigError("train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm); on the CPU leave it off")
    if config.optim.batch_size % dist_info.world_size:
        raise ConfigError(
            f"optim.batch_size={config.optim.batch_size} is the global batch and must divide "
            f"evenly over {dist_info.world_size} processes"
        )
    return device, dist_info


def configure_backends(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotune convolutions for the fixed input size


def wrap_model(method: Method, dist_info: DistInfo, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
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
        log(
            f"train.compile: the compiler is unavailable here ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}); training in eager mode"
        )
        return model
    model.compile(mode=mode)
    return model
