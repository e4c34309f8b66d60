"""Validated run configuration: YAML file + ``key=value`` overrides -> :class:`Config`.

Every section is a dataclass with the CIFAR recipe of the DBM code as defaults, so a
preset only names what differs. ``loss`` and ``method`` take free keyword parameters that are
checked against the signature of the registered loss / method, so a typo is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..data import DATASET_INFO, list_transforms
from ..data.autoaugment import AUTOAUGMENT_POLICIES
from ..errors import ConfigError
from ..losses import loss_parameters
from ..methods import method_parameters
from ..models import is_trunk_name, list_trunks
from .schedules import SCHEDULES

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "LEGACY_VALUES",
    "flatten_config",
    "load_config",
    "preset_dir",
    "resolve_override_key",
    "resolve_config_path",
    "saved_config",
]


def setting(default: Any, help: str) -> Any:
    """A config field with its documentation (``docs/settings.md`` is generated from it)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    """``data``: which data set, where it is, how batches are made."""

    name: str = setting("cifar10_lt", "data set: cifar10_lt, cifar100_lt, imagenet_lt, inat2018, places_lt, digits_lt")
    root: str = setting(
        "data",
        "folder of the data set (CIFAR: torchvision's folders or the .npz archives; "
        "large scale: the image root); stored absolute in the run",
    )
    imbalance_factor: float = setting(100.0, "CIFAR-LT: n_max / n_min of the long-tailed training split (10, 50, 100)")
    seed: int = setting(0, "selection of the long-tailed subset (0: the standard split of LDAM-DRW)")
    download: bool = setting(False, "CIFAR: download with torchvision when no local copy is found (needs internet)")
    augment: str = setting("", "training transform by name; empty: the data set's regular recipe")
    augment_views: list = setting(
        [],
        "one training transform by name per view of the method (GML: three); empty: data.augment "
        "for its regular views, the data set's contrastive recipe for the others",
    )
    autoaugment: str = setting(
        "reference",
        "AutoAugment policy of the CIFAR recipe: reference (the DBM code's "
        "per-image CIFAR-10 policy) | torchvision (torchvision's AutoAugment); runs saved "
        "before this setting existed used torchvision",
    )
    pipeline: str = setting(
        "auto",
        "auto | loader | device: augment in DataLoader workers with PIL, or as "
        "whole batches on the training device (auto: device where batched recipes exist)",
    )
    workers: int = setting(-1, "DataLoader processes; -1: one per available CPU core, at most 4")
    eval_batch_size: int = setting(256, "batch size of the evaluation")
    limit: int = setting(
        0,
        "train on at most this many images of the training split, class proportions kept "
        "and every class present (smoke tests); 0: all",
    )
    test_limit: int = setting(
        0,
        "evaluate on at most this many images of the test split, the same number from every class "
        "(smoke tests; marked in metrics.json and the report); 0: all",
    )
    image_size: int = setting(
        0, "large-scale recipes: crop size (the test transform resizes to size * 256/224 first); 0: 224"
    )
    split_dir: str = setting("", "split-file data sets: folder of the split files (empty: data.root)")
    skip_corrupt: bool = setting(
        False, "split-file data sets: replace unreadable images by others and count them, instead of stopping"
    )
    decode: str = setting(
        "cpu", "split-file data sets: cpu (libjpeg-turbo, reduced-size decoding) | pil | device (batched GPU decoding)"
    )


@dataclass
class ModelConfig:
    """``model``: the trunk and the classifier head."""

    name: str = setting(
        "resnet32",
        "trunk: resnet32, resnet56, resnet50, resnext50, resnext101, small_cnn, or timm:NAME with timm installed",
    )
    classifier: str = setting("linear", "linear (logits, with bias) | cosine (raw cosines, for DBM and LDAM)")
    pretrained: str = setting(
        "",
        "a local state dict loaded into the trunk (torchvision or timm keys), or a dbm-ltr run directory or "
        "checkpoint (its trunk); nothing is downloaded",
    )


@dataclass
class LossConfig:
    """``loss``: a registered loss by name, and its own parameters (see the loss table)."""

    name: str = setting("ce", "ce, cb, drw, bs, dbm, ldam")
    params: dict = setting({}, "the loss's keyword parameters")


@dataclass
class MethodConfig:
    """``method``: how a batch becomes a loss (standard, bcl, ncl, gml) and its parameters."""

    name: str = setting("standard", "standard, bcl, ncl, gml")
    params: dict = setting({}, "the method's keyword parameters")


@dataclass
class OptimConfig:
    """``optim``: SGD and the learning-rate schedule (set once per epoch)."""

    lr: float = setting(0.1, "peak learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(
        2e-4, "weight decay of every parameter (a method may exempt some, e.g. GML's temperature)"
    )
    nesterov: bool = setting(False, "Nesterov momentum")
    batch_size: int = setting(64, "global batch size (split over the processes under torchrun)")
    epochs: int = setting(200, "epochs")
    warmup_epochs: int = setting(
        5, "linear warm-up epochs (capped at the run's length); the phase shift for cosine_shifted"
    )
    schedule: str = setting("cosine", "cosine | cosine_reference | cosine_shifted | step | step_gml | constant")
    milestones: list = setting(
        [160, 180], "step schedule: the rate is multiplied by lr_decay after each of these (1-based) epochs"
    )
    lr_decay: float = setting(0.01, "step schedule: factor per milestone")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """``train``: seed, device, precision, evaluation and fault handling."""

    seed: int = setting(0, "seed of everything random (order, augmentation, initialisation)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = setting(
        False, "mixed precision: bfloat16 (float16 with loss scaling on GPUs without bfloat16); margins stay float32"
    )
    deterministic: bool = setting(False, "deterministic kernels (bit-identical reruns, slower on a GPU)")
    eval_every: int = setting(
        0,
        "also evaluate every N epochs and track the best test epoch, labelled as "
        "test-set selection (0: only at the end)",
    )
    progress: bool = setting(True, "progress bars (redrawn every 30 s where stderr is a file or a pipe)")
    drop_last: bool = setting(False, "drop the last, smaller batch of an epoch")
    channels_last: bool = setting(
        True, "the model in channels-last memory (faster convolutions with cuDNN on GPUs and oneDNN on CPUs)"
    )
    threads: int = setting(0, "PyTorch's CPU threads; 0: no more than the CPU cores available to the process")
    compile: bool = setting(
        False, "torch.compile the model (eager mode, with a message, where the compiler is unavailable)"
    )
    compile_mode: str = setting(
        "default",
        "torch.compile's mode with train.compile: default | reduce-overhead "
        "(CUDA graphs: the least host work per step) | max-autotune | "
        "max-autotune-no-cudagraphs",
    )
    nan_policy: str = setting(
        "stop", "stop | skip: a non-finite loss stops the run naming the step, or its step is dropped and counted"
    )
    sync_bn: bool = setting(False, "under torchrun on GPUs: BatchNorm statistics over the global batch")
    auto_resume: bool = setting(
        False, "resume from the run directory's checkpoint when there is one (for torchrun --max-restarts)"
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = setting("", "the preset's name, for reports")
    paper: dict = setting({}, "the paper's numbers for this preset (source, top1, groups)")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for section in ("loss", "method"):
            params = out[section].pop("params")
            out[section].update(params)
        return out


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}
_FREE = {"loss", "method"}  # name + parameters of a registered factory


def preset_dir() -> Path:
    """Folder of the presets shipped with the package (``configs/`` in the repository)."""
    return Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name: str | Path) -> Path:
    """A config file path, or a preset name such as ``cifar10_lt/dbm_ce``."""
    path = Path(name)
    if path.is_file():
        return path
    preset = preset_dir() / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if preset.is_file():
        return preset
    available = sorted(str(p.relative_to(preset_dir()).with_suffix("")) for p in preset_dir().rglob("*.yaml"))
    hint = difflib.get_close_matches(str(name), available, n=3)
    raise ConfigError(
        f"config {str(name)!r} is neither a file nor a preset"
        + (f"; did you mean {', '.join(hint)}?" if hint else f"; presets: {', '.join(available)}")
    )


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, expected: type, where: str) -> Any:
    """Check ``value`` against a field type; numbers written as strings ('2e-4') are accepted."""
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif expected is str:
        if isinstance(value, str):
            return value
    elif expected is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif expected is dict:
        if isinstance(value, dict):
            return value
    else:  # pragma: no cover - no other field types
        return value
    raise ConfigError(f"{where} must be {expected.__name__}, got {value!r} ({type(value).__name__})")


def _build_section(cls: type, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"unknown config key {where}.{key}{_suggest(key, names)}; valid keys of "
                f"{where}: {', '.join(sorted(names))}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _validate_params(section: str, name: str, params: dict, defaults: dict) -> dict:
    """Check ``params`` against a factory's defaults; return the full parameter set."""
    out = dict(defaults)
    for key, value in params.items():
        if key not in defaults:
            raise ConfigError(
                f"unknown config key {section}.{key}{_suggest(key, defaults)}: {section} "
                f"{name!r} accepts {', '.join(sorted(defaults)) or 'no parameters'}"
            )
        default = defaults[key]
        if default is None or value is None:
            out[key] = value
        else:
            out[key] = _coerce(value, type(default), f"{section}.{key}")
    return out


def _free_section(section: str, values: Any, lookup: Callable[[str], dict]):
    if not isinstance(values, dict) or "name" not in values:
        raise ConfigError(f"{section} must be a mapping with a 'name', got {values!r}")
    name = _coerce(values["name"], str, f"{section}.name")
    params = {k: v for k, v in values.items() if k != "name"}
    cls = LossConfig if section == "loss" else MethodConfig
    return cls(name=name, params=_validate_params(section, name, params, lookup(name)))


def _loss_defaults(name: str) -> dict:
    try:
        return loss_parameters(name)
    except ValueError as err:
        raise ConfigError(f"loss.name: {err}") from None


def _method_defaults(name: str) -> dict:
    try:
        return method_parameters(name)
    except ValueError as err:
        raise ConfigError(f"method.name: {err}") from None


def config_from_dict(values: dict, check_values: bool = True) -> Config:
    """Build and validate a :class:`Config` from a nested mapping (keys and types always;
    the ranges of values too unless ``check_values=False``)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    known = set(_SECTIONS) | _FREE | {"name", "paper"}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config section {key!r}{_suggest(key, known)}; valid: {', '.join(sorted(known))}"
            )
        if key in _SECTIONS:
            kwargs[key] = _build_section(_SECTIONS[key], value, key)
        elif key == "loss":
            kwargs[key] = _free_section("loss", value, _loss_defaults)
        elif key == "method":
            kwargs[key] = _free_section("method", value, _method_defaults)
        elif key == "name":
            kwargs[key] = _coerce(value, str, "name")
        else:
            kwargs[key] = _coerce(value, dict, "paper")
    config = Config(**kwargs)
    if "loss" not in values:
        config.loss = _free_section("loss", {"name": "ce"}, _loss_defaults)
    if "method" not in values:
        config.method = _free_section("method", {"name": "standard"}, _method_defaults)
    if check_values:
        _check_values(config)
    return config


def _check_values(config: Config) -> None:
    o, t, d = config.optim, config.train, config.data
    checks = [
        (o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
        (o.batch_size > 0, f"optim.batch_size must be > 0, got {o.batch_size}"),
        (o.epochs > 0, f"optim.epochs must be > 0, got {o.epochs}"),
        (o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}"),
        (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
        (o.momentum >= 0, f"optim.momentum must be >= 0, got {o.momentum}"),
        (
            not o.nesterov or o.momentum > 0,
            "optim.nesterov=true needs momentum: set optim.momentum > 0 or optim.nesterov=false",
        ),
        (o.lr_decay > 0, f"optim.lr_decay must be > 0, got {o.lr_decay}"),
        (
            isinstance(o.milestones, list)
            and all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in o.milestones),
            f"optim.milestones must be a list of epochs (whole numbers > 0), e.g. [160, 180]; got {o.milestones!r}",
        ),
        (o.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}"),
        (d.decode in ("cpu", "pil", "device"), f"data.decode must be cpu, pil or device, got {d.decode!r}"),
        (d.imbalance_factor >= 1, f"data.imbalance_factor must be >= 1, got {d.imbalance_factor}"),
        (d.workers >= -1, f"data.workers must be >= 0, or -1 for one per available core (at most 4), got {d.workers}"),
        (t.threads >= 0, f"train.threads must be >= 0 (0: the CPU cores available to the process), got {t.threads}"),
        (d.limit >= 0, f"data.limit must be >= 0 (0: the whole training split), got {d.limit}"),
        (d.test_limit >= 0, f"data.test_limit must be >= 0 (0: the whole test split), got {d.test_limit}"),
        (d.image_size >= 0, f"data.image_size must be >= 0 (0: the recipe's 224), got {d.image_size}"),
        (
            d.pipeline in ("auto", "loader", "device"),
            f"data.pipeline must be auto, loader or device, got {d.pipeline!r}",
        ),
        (
            d.autoaugment in AUTOAUGMENT_POLICIES,
            f"data.autoaugment must be one of {', '.join(AUTOAUGMENT_POLICIES)}, got {d.autoaugment!r}",
        ),
        (t.eval_every >= 0, f"train.eval_every must be >= 0, got {t.eval_every}"),
        (
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(t.device)) is not None,
            f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}",
        ),
        (t.nan_policy in ("stop", "skip"), f"train.nan_policy must be stop or skip, got {t.nan_policy!r}"),
        (
            t.compile_mode in COMPILE_MODES,
            f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {t.compile_mode!r}",
        ),
        (
            config.model.classifier in ("linear", "cosine"),
            f"model.classifier must be linear or cosine, got {config.model.classifier!r}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    names = [
        (d.name, sorted(DATASET_INFO), "data.name"),
        (config.model.name, list_trunks(), "model.name"),
    ] + ([(d.augment, list_transforms(), "data.augment")] if d.augment else [])
    names += [(name, list_transforms(), "data.augment_views") for name in d.augment_views]
    for value, valid, key in names:
        if key == "model.name" and is_trunk_name(value):  # registered, or timm:NAME
            continue
        if value not in valid:
            raise ConfigError(f"{key}: unknown {value!r}{_suggest(value, valid)}; valid: {', '.join(valid)}")


#: Settings added after runs had been saved, whose default is not what those runs trained with:
#: a saved config (``config.yaml``, a checkpoint's) that lacks one trained with this value.
LEGACY_VALUES: dict[str, Any] = {"data.autoaugment": "torchvision"}


def saved_config(values: Any) -> Any:
    """A config as a run saved it, with each setting of :data:`LEGACY_VALUES` that it predates
    set to the value it trained with (a copy; anything but a mapping is returned as is)."""
    if not isinstance(values, dict):
        return values
    values = copy.deepcopy(values)
    for key, value in LEGACY_VALUES.items():
        *sections, leaf = key.split(".")
        node = values
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return values


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.epochs=30")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def resolve_override_key(full: dict, key: str) -> list[str]:
    """``a.b`` as given, or a bare leaf name that appears in exactly one section of ``full``."""
    if "." in key:
        return key.split(".")
    if key in full and not isinstance(full[key], dict):
        return [key]
    owners = [s for s, v in full.items() if isinstance(v, dict) and key in v and s != "paper"]
    if len(owners) == 1:
        return [owners[0], key]
    if len(owners) > 1:
        choices = ", ".join(f"{o}.{key}" for o in owners)
        raise ConfigError(f"override key {key!r} is ambiguous: write one of {choices}")
    raise ConfigError(
        f"unknown override key {key!r}{_suggest(key, _leaf_names(full))}: write section.key, "
        "e.g. optim.epochs=30 or loss.max_margin=0.2"
    )


def _leaf_names(full: dict) -> list[str]:
    return [k for v in full.values() if isinstance(v, dict) for k in v]


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` (or unambiguous ``key=value``) overrides to a nested dict.

    Values are parsed as YAML (``true``, ``0.1``, ``[160, 180]``). A bare key is looked up in
    the config as resolved so far (defaults included), so ``max_margin=0.2`` finds
    ``loss.max_margin`` of a DBM preset.
    """
    values = copy.deepcopy(values)
    for item in overrides:
        key, value = _parse_override(item)
        path = resolve_override_key(config_from_dict(values, check_values=False).to_dict(), key)
        node = values
        for part in path[:-1]:
            default = {"name": getattr(Config(), part).name} if node is values and part in _FREE else {}
            node = node.setdefault(part, default)
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[path[-1]] = value
    return values


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or preset name, or mapping), apply overrides and validate."""
    if isinstance(source, dict):
        values = source
    else:
        path = resolve_config_path(source)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
        values.setdefault("name", _preset_name(path))
    return config_from_dict(apply_overrides(values, overrides or []))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line: what the YAML parser found and where (1-based line and column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _preset_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(preset_dir()).with_suffix(""))
    except ValueError:
        return path.stem


def flatten_config(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"tau": 1}}`` -> ``{"loss.tau": 1}`` (the ``paper`` table stays one value)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "paper":
            out.update(flatten_config(value, f"{name}."))
        else:
            out[name] = value
    return out
