"""Validated run configuration: YAML file + ``key=value`` overrides -> :class:`Config`.

Every section is a dataclass with the CIFAR recipe of the paper as defaults (SPEC 5.2), so a
preset only names what differs. ``loss`` and ``method`` take free keyword parameters that are
checked against the signature of the registered loss / method, so a typo is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_type_hints

import yaml

from ..data import DATASET_INFO, list_transforms
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
    "flatten_config",
    "load_config",
    "preset_dir",
    "resolve_override_key",
    "resolve_config_path",
]




@dataclass
class DataConfig:
    name: str = "cifar10_lt"
    root: str = "data"
    imbalance_factor: float = 100.0
    seed: int = 0  # selection of the long-tailed subset (SPEC 4.1: NumPy legacy RNG, seed 0)
    download: bool = False
    augment: str = ""  # training transform; "" = the data set's regular recipe
    pipeline: str = "auto"  # auto | loader | device: where batches are augmented (auto: device where supported)
    workers: int = -1  # loader processes; -1: min(4, CPU cores available to the process)
    eval_batch_size: int = 256
    limit: int = 0  # train on at most this many images of the training split (class proportions kept); 0 = all
    image_size: int = 0  # large-scale recipes: crop size (test: resize by 256/224, then crop); 0 = 224
    split_dir: str = ""  # split-file data sets: folder of the split files ("" = data.root)
    skip_corrupt: bool = False  # split-file data sets: replace unreadable images (counted)
    decode: str = "cpu"  # split-file data sets: cpu (reduced-size JPEG decoding) | pil | device (nvJPEG)


@dataclass
class ModelConfig:
    name: str = "resnet32"
    classifier: str = "linear"  # linear | cosine
    pretrained: str = ""  # local state dict loaded into the trunk (torchvision keys; nothing is downloaded)


@dataclass
class LossConfig:
    name: str = "ce"
    params: dict = field(default_factory=dict)


@dataclass
class MethodConfig:
    name: str = "standard"
    params: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    batch_size: int = 64  # global batch (split over processes under torchrun)
    epochs: int = 200
    warmup_epochs: int = 5
    schedule: str = "cosine"  # cosine | cosine_reference | cosine_shifted | step | constant
    milestones: list = field(default_factory=lambda: [160, 180])
    lr_decay: float = 0.01  # factor per milestone of the step schedule


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False
    deterministic: bool = False
    eval_every: int = 0  # also evaluate every N epochs and track the best (0: only at the end)
    progress: bool = True
    drop_last: bool = False
    threads: int = 0  # PyTorch's CPU threads; 0: no more than the CPU cores available to the process
    compile: bool = False  # torch.compile the model (eager, with a message, where unavailable)
    nan_policy: str = "stop"  # stop | skip: a non-finite loss stops the run, or its step is dropped
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    auto_resume: bool = False  # resume from the run directory's checkpoint if there is one (torchrun restarts)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = ""  # preset name, for reports
    paper: dict = field(default_factory=dict)  # the paper's numbers for this preset

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
    available = sorted(
        str(p.relative_to(preset_dir()).with_suffix("")) for p in preset_dir().rglob("*.yaml")
    )
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
    raise ConfigError(
        f"{where} must be {expected.__name__}, got {value!r} ({type(value).__name__})"
    )


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
                f"unknown config section {key!r}{_suggest(key, known)}; valid: "
                f"{', '.join(sorted(known))}"
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
        (o.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}"),
        (d.decode in ("cpu", "pil", "device"), f"data.decode must be cpu, pil or device, got {d.decode!r}"),
        (d.imbalance_factor >= 1, f"data.imbalance_factor must be >= 1, got {d.imbalance_factor}"),
        (d.workers >= -1, f"data.workers must be >= 0, or -1 for one per available core (at most 4), got {d.workers}"),
        (t.threads >= 0, f"train.threads must be >= 0 (0: the CPU cores available to the process), got {t.threads}"),
        (d.limit >= 0, f"data.limit must be >= 0 (0: the whole training split), got {d.limit}"),
        (d.image_size >= 0, f"data.image_size must be >= 0 (0: the recipe's 224), got {d.image_size}"),
        (d.pipeline in ("auto", "loader", "device"), f"data.pipeline must be auto, loader or device, got {d.pipeline!r}"),
        (t.eval_every >= 0, f"train.eval_every must be >= 0, got {t.eval_every}"),
        (t.nan_policy in ("stop", "skip"), f"train.nan_policy must be stop or skip, got {t.nan_policy!r}"),
        (config.model.classifier in ("linear", "cosine"), f"model.classifier must be linear or cosine, got {config.model.classifier!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    names = [
        (d.name, sorted(DATASET_INFO), "data.name"),
        (config.model.name, list_trunks(), "model.name"),
    ] + ([(d.augment, list_transforms(), "data.augment")] if d.augment else [])
    for value, valid, key in names:
        if key == "model.name" and is_trunk_name(value):  # registered, or timm:NAME
            continue
        if value not in valid:
            raise ConfigError(f"{key}: unknown {value!r}{_suggest(value, valid)}; valid: {', '.join(valid)}")


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


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
