"""Parity of this library with the DBM authors' code, checked by running both.

    python scripts/parity_official.py --official DIR                      # the Table 2 rows
    python scripts/parity_official.py --official DIR --rows ce,dbm_ce --steps 6
    python scripts/parity_official.py --official DIR --data-set imagenet_lt   # DBM-BCL at scale
    python scripts/parity_official.py --official DIR --augment --data ../shared/data

``DIR`` is the ``cifar/`` folder of a checkout of the authors' repository
(github.com/quotation2520/dbm_ltr, commit 3b56b97). This project ships none of it: the script
imports its modules (``models``, ``losses``, ``utils``, ``train``, ``aug``) from ``DIR`` and
runs them on the CPU, with shims for their ``.cuda()`` calls (tensors and modules stay on the
CPU, in the working precision) and a silent progress bar; their logic is not edited. The GML
rows come from the same repository's ``GML/`` folder (``--official-gml``; by default the one
beside ``DIR``), a code base of its own: its CIFAR teacher script (``cifar_ce.py``) for
``gml_teacher`` and its student script (``cifar_main.py``) for ``gml``, with the flags of its
``sh/CIFAR100_train_*.sh``; their model, loss and optimizer are built as their ``main_worker``
builds them, and their per-epoch ``train`` function runs one batch per call. ``--data-set
imagenet_lt`` or ``inat2018`` compares the large-scale presets with the ``large_scale/`` folder
(``--official-large``; by default beside ``DIR``), which runs DBM-BCL only: ResNet-50 /
ResNeXt-50 on 64 x 64 images, 8 a view, and a sorted long tail of the data set's size.

**Training steps** (per row). Our preset as shipped (``cifar10_lt/<row>`` by default) and
their code with the row's command-line flags (their README's) are built in float64; our
initial weights (and, for NCL, MoCo queues) are copied into their model; then both take the
same steps on the same fixed batches (random images -- three views per image for BCL, two for
NCL --, labels drawn with the long-tailed class frequencies): ours through our method, theirs
through their training function (``train/train_fn/``: base, BCL or NCL, which holds NCL's
key-encoder update), one batch per call after their learning-rate function. Each step is at an
epoch chosen to cover both sides of every learning-rate step and of the DRW switch, the
warm-up, the start and middle of the cosine phase and the last epochs: the learning rate, the
loss (and its DRW weights) are those of that epoch. Rows: the Table 2 rows of their code (CE,
CE-DRW, BS, LDAM(-DRW) with and without DBM, BCL, DBM-BCL, NCL / DBM-NCL as their code runs
them: the ``*_code`` presets, and GML with its teacher; their code has no DBM-GML). GML's
teacher is a freshly initialised ResNet-56, the same in both: the steps do not depend on what
it learnt. Printed per row: the largest learning-rate difference, the
largest loss difference, the step-0 gradient difference and the parameter (and BatchNorm
statistics, key encoders, queues) difference after the last step, beside a rounding
yardstick: their code against a channels-last copy of itself, which computes the same in
another order. A row is ``equal`` when each of ours is at most ``--tolerance`` times the
yardstick (and the learning rates agree to 1e-12), else ``DIFFERS``: a finding, not something
the script hides.

**Augmentation** (``--augment``): their per-image AutoAugment policy (``aug/autoaug.py``)
against ours, (1) op by op: every sub-policy with both stages applied and each sign, on the
same images, through their code, our per-image policy and our batched twin (largest pixel
difference); (2) statistics of ``--images`` augmented training images (crop, flip and policy):
the fraction of fill-grey pixels and the channel means and standard deviations, two draws of
theirs beside each of our pipelines (and torchvision's policy, for comparison).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import math
import random
import re
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dbm_ltr.data.autoaugment import CIFAR10_SUB_POLICIES, reference_magnitudes, reference_op
from dbm_ltr.data.longtail import long_tail_counts
from dbm_ltr.engine.build import build_method, parameter_groups, to_layout
from dbm_ltr.engine.config import Config, load_config, preset_dir
from dbm_ltr.engine.schedules import learning_rate
from dbm_ltr.models import create_model

#: Their command line per row (their README's flags; the LDAM rows: see the presets; BCL: their
#: DBM-BCL command without the DBM flags). Every row also gets ``--cos --cutout --aug_type
#: autoaug_cifar``, as their README's commands.
OFFICIAL_FLAGS = {
    "ce": ["--loss_fn", "ce"],
    "dbm_ce": ["--loss_fn", "ce", "--use_norm", "--use_dbm", "--max_margin", "0.1"],
    "ce_drw": ["--loss_fn", "ce_drw"],
    "dbm_drw": ["--loss_fn", "ce_drw", "--use_norm", "--use_dbm", "--max_margin", "0.1"],
    "bs": ["--loss_fn", "bs"],
    "dbm_bs": ["--loss_fn", "bs", "--use_norm", "--use_dbm", "--max_margin", "0.1"],
    "ldam": ["--loss_fn", "ldam", "--use_norm", "--max_margin", "0.5"],
    "ldam_drw": ["--loss_fn", "ldam_drw", "--use_norm", "--max_margin", "0.5"],
    "ldam_code": ["--loss_fn", "ldam", "--use_norm"],
    "ldam_drw_code": ["--loss_fn", "ldam_drw", "--use_norm"],
    "bcl": ["--loss_fn", "bcl", "--wd", "5e-4", "--lr_decay", "0.1", "--lr", "0.15"],
    "dbm_bcl": ["--loss_fn", "bcl", "--use_norm", "--use_dbm", "--max_margin", "0.1"]
    + ["--wd", "5e-4", "--lr_decay", "0.1", "--lr", "0.15"],
    "ncl_code": ["--loss_fn", "ncl", "--epochs", "400"],
    "dbm_ncl_code": ["--loss_fn", "ncl", "--use_norm", "--use_dbm", "--max_margin", "0.1", "--epochs", "400"],
}
COMMON_FLAGS = ["--cos", "--cutout", "--aug_type", "autoaug_cifar"]
#: The GML rows: their GML/ folder's CIFAR scripts with the flags of its sh/CIFAR100_train_*.sh
#: (the data set, class count and imbalance follow the row's).
GML_FLAGS = {
    "gml_teacher": ["--arch", "resnet56", "--batch-size", "128", "--learning-rate", "0.1"],
    "gml": [
        *("--arch", "resnet32", "--arch_t", "resnet56", "--feat_t", "64", "--batch-size", "128"),
        *("--learning-rate", "0.1", "--gamma", "1.0", "--alpha", "1.0", "--beta", "1.0"),
    ],
}
DEFAULT_ROWS = (
    *("ce", "ldam", "dbm_ce", "ce_drw", "ldam_drw", "dbm_drw", "bs", "dbm_bs", "ldam_code", "ldam_drw_code"),
    *("bcl", "dbm_bcl", "ncl_code", "dbm_ncl_code", "gml_teacher", "gml"),
)
NOT_COVERED = {
    "ncl": "the paper's NCL recipe, which their code does not run; theirs is the row ncl_code (dbm_ncl_code)",
    "dbm_ncl": "the paper's NCL recipe, which their code does not run; theirs is the row dbm_ncl_code",
    "dbm_gml": "their GML code has no DBM",
}
#: The modules of theirs this script needs, relative to DIR, and what each must define.
NEEDED = {
    "models/net.py": ("models.net", ("get_model",)),
    "models/resnet.py": ("models.resnet", ("resnet32",)),
    "losses/loss.py": ("losses.loss", ("get_loss", "get_optimizer")),
    "utils/common.py": ("utils.common", ("adjust_learning_rate",)),
    "utils/config.py": ("utils.config", ("parse_args", "dataset_argument")),
    "train/train.py": ("train.train", ("get_train_fn",)),
}
AUGMENT_NEEDED = {
    "aug/autoaug.py": ("aug.autoaug", ("CIFAR10Policy",)),
    "aug/transforms.py": ("aug.transforms", ("get_transform",)),
}
_THEIR_PACKAGES = ("models", "losses", "utils", "aug", "datasets", "train", "progress")
#: What the GML rows need of their GML/ folder.
GML_NEEDED = {
    "cifar_ce.py": ("cifar_ce", ("parser", "adjust_learning_rate", "train")),
    "cifar_main.py": ("cifar_main", ("parser", "adjust_learning_rate", "train")),
    "moco/builder.py": ("moco.builder", ("MoCo",)),
    "models/resnet_cifar.py": ("models.resnet_cifar", ("resnet32", "resnet56")),
    "losses.py": ("losses", ("GMLLoss",)),
}
#: The large-scale rows: their large_scale/ folder with its README's DBM-BCL commands (which
#: spell the loss flag --loss_type; its opts.py calls it --loss_fn).
_LARGE_COMMON = ["--arch", "resnet50", "--use_norm", "--use_dbm", "--cos", "--batch_size", "256", "--loss_fn", "bcl"]
_IMAGENET = ["--dataset", "imgnet", "--num_classes", "1000", "--epochs", "90", "--wd", "5e-4", "--lr", "0.1"]
_INAT = ["--dataset", "inat", "--num_classes", "8142", "--epochs", "100", "--wd", "1e-4", "--lr", "0.2"]
LARGE_FLAGS = {
    "imagenet_lt": {
        "dbm_bcl": [*_IMAGENET, *_LARGE_COMMON, "--max_margin", "0.1"],
        "dbm_bcl_resnext50": [*_IMAGENET, *_LARGE_COMMON, "--max_margin", "0.1", "--arch", "resnext50"],
    },
    "inat2018": {"dbm_bcl": [*_INAT, *_LARGE_COMMON, "--max_margin", "0.1"]},
}
#: Why the other large-scale rows have no equivalent that runs in their large_scale/ code.
LARGE_NOT_COVERED = {
    "bcl": "their large-scale BCL needs --use_norm: its prototype head takes the classifier weight "
    "transposed, which fits only the cosine classifier's (D, C) layout",
    "gml": "their large-scale GML is the GML code's main.py, not compared here",
}
LARGE_NOT_RUN = "their large-scale code trains BCL only: its plain ResNets have no classifier layer (models/model.py)"
#: Classes, the largest class and the imbalance of the long tail the large-scale rows train on
#: (sorted; their real splits' class counts are not, and are not needed for the step mechanics).
LARGE_COUNTS = {"imagenet_lt": (1000, 1280, 256), "inat2018": (8142, 1000, 500)}
LARGE_BATCH = 8  # images per step of a large-scale row (the step mechanics depend on neither this nor LARGE_SIDE)
LARGE_SIDE = 64  # their height and width
#: What the large-scale rows need of their large_scale/ folder.
LARGE_NEEDED = {
    "opts.py": ("opts", ("parser",)),
    "main.py": ("main", ("NormedLinear", "adjust_learning_rate")),
    "models/model.py": ("models.model", ("BCLModel",)),
    "losses/loss.py": ("losses.loss", ("get_loss",)),
    "train/train.py": ("train.train", ("get_train_fn",)),
}
_LARGE_MODULES = ("opts", "main", "models", "losses", "train", "utils", "aug", "imbalance_data")
#: Top-level modules of their GML/ folder (some share their names with cifar/'s).
_GML_MODULES = ("models", "losses", "utils", "moco", "dataset", "autoaug", "randaugment", "cifar_main", "cifar_ce")


class ParityError(Exception):
    """Bad input or code that does not fit: printed as one line."""


# ------------------------------------------------------------------------------------------
# their code, imported from DIR with CPU shims


@contextlib.contextmanager
def cpu_shims() -> Iterator[None]:
    """Their ``.cuda()`` calls on the CPU: tensors stay put (floating ones in the default dtype,
    the working precision), modules stay put, ``torch.(cuda.)FloatTensor`` build tensors of
    the default dtype, ``Module.to('cuda')`` does nothing. Their ``.float()`` casts to the
    working precision too (the GML code's one-hot matrix meets float64 logits)."""
    tensor_type = torch.DoubleTensor if torch.get_default_dtype() == torch.float64 else torch.FloatTensor
    module_to = nn.Module.to

    def tensor_cuda(self, *args, **kwargs):
        return self.to(torch.get_default_dtype()) if self.is_floating_point() else self

    def to_unless_cuda(self, *args, **kwargs):
        where = args[0] if args else kwargs.get("device")
        if isinstance(where, (str, torch.device)) and str(where).startswith("cuda"):
            return self
        return module_to(self, *args, **kwargs)

    patches = {
        (torch.Tensor, "cuda"): tensor_cuda,
        (torch.Tensor, "float"): lambda self, *args, **kwargs: self.to(torch.get_default_dtype(), *args, **kwargs),
        (nn.Module, "cuda"): lambda self, *args, **kwargs: self,
        (nn.Module, "to"): to_unless_cuda,
        (torch, "FloatTensor"): tensor_type,
        (torch.cuda, "FloatTensor"): tensor_type,
    }
    saved = {(owner, name): getattr(owner, name) for owner, name in patches}
    for (owner, name), value in patches.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


class QuietBar:
    """Their progress bar's interface, printing nothing (their training functions draw one)."""

    elapsed_td = eta_td = ""

    def __init__(self, *args, **kwargs) -> None:
        self.suffix = ""

    def next(self) -> None:
        pass

    def finish(self) -> None:
        pass


def import_checked(module: str, path: str, names: Sequence[str], flag: str, folder: Path) -> types.ModuleType:
    """Their ``module`` (file ``path`` of ``folder``), which must define ``names``."""
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any failure of their import is one line
        raise ParityError(f"{flag} {folder}: importing {path} failed ({type(err).__name__}: {err})") from None
    absent = [n for n in names if not hasattr(mod, n)]
    if absent:
        raise ParityError(f"{flag} {folder}: {path} has no {', '.join(absent)} (another version of the authors' code?)")
    return mod


class Official:
    """The modules of their ``cifar/`` folder."""

    def __init__(self, folder: str | Path, augment: bool = False) -> None:
        self.folder = Path(folder).expanduser()
        needed = {**NEEDED, **(AUGMENT_NEEDED if augment else {})}
        if not self.folder.is_dir():
            raise ParityError(
                f"--official {self.folder}: no such folder; give the cifar/ folder of a "
                "checkout of github.com/quotation2520/dbm_ltr"
            )
        missing = [p for p in needed if not (self.folder / p).is_file()]
        if missing:
            raise ParityError(
                f"--official {self.folder}: no {', '.join(missing)}; give the cifar/ folder of "
                "a checkout of github.com/quotation2520/dbm_ltr (commit 3b56b97)"
            )
        for name in list(sys.modules):  # a previous --official folder's modules
            if name.split(".")[0] in _THEIR_PACKAGES:
                del sys.modules[name]
        bar = types.ModuleType("progress.bar")  # their progress bars (the 'progress' package): silent
        bar.Bar = QuietBar
        sys.modules["progress"] = types.ModuleType("progress")
        sys.modules["progress.bar"] = bar
        sys.path.insert(0, str(self.folder))
        try:
            with cpu_shims():
                for path, (module, names) in needed.items():
                    setattr(self, module.split(".")[-1], import_checked(module, path, names, "--official", self.folder))
        finally:
            sys.path.remove(str(self.folder))

    def args(self, row: str, data: str, imbalance_factor: float) -> argparse.Namespace:
        """Their parsed command line for ``row``."""
        argv = [
            "main.py",
            "--dataset",
            data.replace("_lt", ""),
            "--imb_ratio",
            f"{imbalance_factor:g}",
            *OFFICIAL_FLAGS[row],
            *COMMON_FLAGS,
        ]
        saved = sys.argv
        sys.argv = argv
        try:
            args = self.config.parse_args()
        finally:
            sys.argv = saved
        return self.config.dataset_argument(args)

    def build(self, row: str, args: argparse.Namespace, counts: Sequence[int]) -> tuple[Any, nn.Module]:
        """Their model (NCL: ``{'comb': ..., 'model': ...}``) and loss for ``row``."""
        return self.net.get_model(args, counts), self.loss.get_loss(args, counts)

    def optimizer(self, args, model, criterion) -> torch.optim.Optimizer:
        return self.loss.get_optimizer(args, model, criterion)

    def set_lr(self, optimizer, epoch: int, args) -> float:
        return self.common.adjust_learning_rate(optimizer, epoch, None, args)

    def train_fn(self, args):
        return self.train.get_train_fn(args)


class OfficialLarge:
    """The modules of their ``large_scale/`` folder (:func:`import_apart`: most share their
    names with ``cifar/``'s). Its ``main_worker`` builds the model inline: here as there, a
    ``BCLModel`` whose classifier is replaced by its ``NormedLinear`` (``--use_norm``), SGD
    over the model's parameters, its ``adjust_learning_rate`` once an epoch (without the
    ``DataParallel`` wrapper its main adds, which does not change a step on one device)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        bar = types.ModuleType("progress.bar")  # their progress bars: silent
        bar.Bar = QuietBar
        stand_ins = {"progress": types.ModuleType("progress"), "progress.bar": bar}
        found = import_apart(self.folder, LARGE_NEEDED, _LARGE_MODULES, "--official-large", stand_ins, "large_scale")
        for name, module in found.items():
            setattr(self, name, module)

    def args(self, row: str, data: str, imbalance_factor: float) -> argparse.Namespace:
        """Their parsed command line for ``row`` (the imbalance is their split's: not a flag)."""
        args = self.opts.parser.parse_args(LARGE_FLAGS[data][row])
        args.num_class = LARGE_COUNTS[data][0]  # their main_worker's: 1000 if imgnet else 8142
        return args

    def build(self, row: str, args: argparse.Namespace, counts: Sequence[int]) -> tuple[nn.Module, nn.Module]:
        model = self.model.BCLModel(num_classes=args.num_class, name=args.arch)
        width = model.fc.in_features
        model.fc = self.main.NormedLinear(width, args.num_class) if args.use_norm else nn.Linear(width, args.num_class)
        return model, self.loss.get_loss(args, np.array(counts))

    def optimizer(self, args, model, criterion) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.nesterov
        )

    def set_lr(self, optimizer, epoch: int, args) -> float:
        self.main.adjust_learning_rate(optimizer, epoch, args)
        return optimizer.param_groups[0]["lr"]

    def train_fn(self, args):
        return self.train.get_train_fn(args)


def import_apart(
    folder: Path,
    needed: dict,
    top_level: Sequence[str],
    flag: str,
    stand_ins: dict[str, types.ModuleType],
    expected: str,
) -> dict[str, types.ModuleType]:
    """Their modules ``needed`` (``{path: (module, names it must define)}``) from ``folder``, a
    code base whose module names (``top_level``) clash with ``cifar/``'s: the modules of those
    names are set aside, theirs imported (with ``stand_ins`` in ``sys.modules`` meanwhile, for
    imports nothing here needs), then taken out of ``sys.modules`` again and the others put back."""
    missing = [p for p in needed if not (folder / p).is_file()]
    if not folder.is_dir() or missing:
        what = f"no {', '.join(missing)}" if folder.is_dir() else "no such folder"
        raise ParityError(
            f"{flag} {folder}: {what}; give the {expected}/ folder of a checkout of "
            "github.com/quotation2520/dbm_ltr (commit 3b56b97)"
        )
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in top_level or n in stand_ins}
    sys.modules.update(stand_ins)
    sys.path.insert(0, str(folder))
    try:
        with cpu_shims(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {
                module.split(".")[-1]: import_checked(module, path, names, flag, folder)
                for path, (module, names) in needed.items()
            }
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n.split(".")[0] in top_level or n in stand_ins]:
            del sys.modules[name]
        sys.modules.update(saved)


class OfficialGML:
    """The modules of their ``GML/`` folder (:func:`import_apart`: some share their names with
    ``cifar/``'s). Their scripts import TensorBoard's writer, which is not needed here."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        board = types.ModuleType("torch.utils.tensorboard")
        board.SummaryWriter = None
        stand_ins = {"torch.utils.tensorboard": board}
        found = import_apart(self.folder, GML_NEEDED, _GML_MODULES, "--official-gml", stand_ins, "GML")
        for name, module in found.items():
            setattr(self, name, module)
        self._logs = tempfile.TemporaryDirectory(prefix="parity_gml_")  # their progress lines go to a file

    def script(self, row: str) -> types.ModuleType:
        return self.cifar_main if row == "gml" else self.cifar_ce

    def args(self, row: str, data: str, imbalance_factor: float) -> argparse.Namespace:
        """Their parsed command line for ``row``."""
        argv = [
            *("--dataset", data.replace("_lt", ""), "--num_classes", "10" if data == "cifar10_lt" else "100"),
            *("--imb-factor", f"{1 / imbalance_factor:g}", *GML_FLAGS[row]),
        ]
        args = self.script(row).parser.parse_args(argv)
        args.is_master = False  # their progress bars: silent
        args.root_model, args.mark = self._logs.name, row  # where their progress lines are appended
        return args

    def build(self, row: str, args: argparse.Namespace, counts: Sequence[int]) -> tuple[nn.Module, Any, nn.Module]:
        """Their model, the criterion their ``train`` calls, and the module whose parameters
        join the model's in their optimizer (their ``GMLLoss``, as their ``main_worker``).

        The student's class segments of the queue (``set_cls_weight``) end at the ``ceil`` of a
        cumulative sum of class shares: in float64 the last can end one entry past the queue
        (CIFAR IF 100: 4096 + 5e-13 -> 4097), where float32, their GPUs' precision, ends at
        4096, as ours (float64, clamped to the queue). Their table is built in float32 here,
        and the row compares it with ours entry by entry."""
        C = args.num_classes
        if row == "gml_teacher":
            model = getattr(self.resnet_cifar, args.arch)(num_classes=C, use_norm=True)
            weights = self.losses.GMLLoss(0, 0, args.moco_t, C, 0)
            weights.cal_weight_for_classes(list(counts))
            args.cls_weight = weights.cls_weight
            return model, nn.CrossEntropyLoss(), weights
        model = self.builder.MoCo(
            getattr(self.resnet_cifar, args.arch),
            *(args.moco_dim, args.moco_k, args.moco_m, args.mlp, args.feat_dim, args.feat_t, args.normalize, C),
        )
        model.set_distiller(getattr(self.resnet_cifar, args.arch_t)(num_classes=C, use_norm=True, return_features=True))
        criterion = self.losses.GMLLoss(args.beta, args.gamma, args.moco_t, C, args.alpha)
        criterion.cal_weight_for_classes(list(counts))
        if args.base_k > 0:  # in float32, as on their GPUs
            model.set_cls_weight(criterion.cls_weight.to(torch.float32), args.base_k)
        return model, criterion, criterion


# ------------------------------------------------------------------------------------------
# one row: the same steps through both


def step_epochs(config: Config, steps: int) -> list[int]:
    """The epoch of each step: both sides of every learning-rate step (step schedules), of the
    DRW switch, the warm-up's first and last, the cosine phase's first two and middle, the last
    two; more or fewer as ``steps`` asks."""
    o = config.optim
    drw = int(config.loss.params.get("drw_epoch", 160))
    w, e = o.warmup_epochs, o.epochs
    steps_at = [x for m in (o.milestones if o.schedule in ("step", "step_gml") else []) for x in (m - 1, m)]
    key = [0, *steps_at, drw - 1, drw, w - 1, w, e - 1, (w + e) // 2, w + 1, drw + 1, e - 2]
    key = list(dict.fromkeys(min(max(k, 0), e - 1) for k in key))
    if steps <= len(key):
        return sorted(key[:steps])
    extra = [round(x) for x in np.linspace(0, e - 1, steps - len(key) + 2)[1:-1]]
    return sorted(key + extra)


#: Where our state lives in their model, per kind of row: (our key prefix as a pattern, theirs
#: with the pattern's group, whether it is a CIFAR ResNet trunk: ResNet-32, or ResNet-56 for
#: GML's teacher). Our NCL cosine head is stored (D, C), their FCNorm (C, D): transposed on the
#: way. Our NCL queues (E, K, d) are their MOCO.<i>.queue (d, K) and MOCO.<i>.queue_ptr.
RULES = {
    "single": [(r"model\.trunk\.", "", True), (r"model\.head\.", "linear.", False)],
    "bcl": [
        (r"model\.trunk\.", "encoder.", True),
        (r"model\.head\.", "fc.", False),
        (r"projection\.", "head.", False),
        (r"prototype\.", "head_fc.", False),
    ],
    "ncl": [
        (r"experts\.(\d+)\.trunk\.", "backbone.{0}.", True),
        (r"experts\.(\d+)\.head\.", "classifier_ce.{0}.", False),
        (r"query_heads\.(\d+)\.", "classifier.{0}.", False),
        (r"key_trunks\.(\d+)\.", "backbone_MA.{0}.", True),
        (r"key_heads\.(\d+)\.", "classifier_MA.{0}.", False),
    ],
    "gml_teacher": [(r"model\.trunk\.", "", True), (r"model\.head\.", "fc.", False)],
    "gml": [
        (r"model\.trunk\.", "encoder_q.", True),
        (r"model\.head\.", "encoder_q.fc.", False),
        (r"teacher\.trunk\.", "encoder_k.", True),
        (r"teacher\.head\.", "encoder_k.fc.", False),
        (r"embed_([qk])\.", "embed_{0}.", False),
        (r"queue$", "queue_k", False),
        (r"queue_labels$", "queue_l", False),
        (r"queue_index$", "queue_i", False),
        (r"queue_ptr$", "queue_ptr", False),
        (r"log_temperature$", "criterion.log_T_c__no_wd__", False),  # their GMLLoss holds it
    ],
}
#: Their training function per kind (train/train.py's get_train_fn picks it by --loss_fn; GML:
#: the train function of its script).
KINDS = {
    "bcl": "bcl",
    "dbm_bcl": "bcl",
    "dbm_bcl_resnext50": "bcl",
    "ncl_code": "ncl",
    "dbm_ncl_code": "ncl",
    "gml_teacher": "gml_teacher",
    "gml": "gml",
}
#: Views per image: BCL one to classify and two to contrast, NCL a regular and a contrastive
#: one, GML one to classify, a query and a key.
VIEWS = {"single": 1, "bcl": 3, "ncl": 2, "gml_teacher": 1, "gml": 3}


def row_kind(row: str) -> str:
    """``bcl`` (three views, their ``bcl_model``), ``ncl`` (two views, their three-expert MoCo
    model), ``gml_teacher`` (one view, their GML code's ResNet-56), ``gml`` (three views, the GML
    code's MoCo model with a teacher) or ``single`` (one view, their ``resnet32``)."""
    return KINDS.get(row, "single")


def to_theirs(ours: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Our state (or gradients) under their names and in their layout."""
    theirs = {}
    for key, value in ours.items():
        if kind == "ncl" and key in ("queues", "queue_ptr"):
            for i, row in enumerate(value):
                theirs[f"MOCO.{i}.queue" if key == "queues" else f"MOCO.{i}.queue_ptr"] = (
                    row.t() if key == "queues" else row.reshape(1)
                )
            continue
        for pattern, template, trunk in RULES[kind]:
            match = re.match(pattern, key)
            if match:
                break
        else:
            raise ParityError(f"our model has a parameter {key} that their model has no place for")
        rest = key[match.end() :]
        if trunk and rest.startswith("layers."):
            blocks = stage_blocks(ours, key[: match.end()])
            i, tail = rest.removeprefix("layers.").split(".", 1)
            rest = f"layer{int(i) // blocks + 1}.{int(i) % blocks}.{tail}"
        if kind == "ncl" and template.startswith("classifier_ce") and rest == "weight" and key_is_cosine(ours, key):
            value = value.t()
        theirs[template.format(*match.groups()) + rest] = value
    return theirs


def stage_blocks(ours: dict[str, torch.Tensor], prefix: str) -> int:
    """Blocks per stage of the CIFAR ResNet under ``prefix`` (three stages: ResNet-32 5,
    ResNet-56 9), from its keys ``<prefix>layers.<i>.``."""
    layers = {int(k[len(prefix) :].split(".")[1]) for k in ours if k.startswith(prefix + "layers.")}
    return (max(layers) + 1) // 3


def key_is_cosine(ours: dict[str, torch.Tensor], key: str) -> bool:
    """A head without a bias is a cosine head (ours: (D, C))."""
    return key.removesuffix("weight") + "bias" not in ours


def check_match(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Our state under their names must be their model's state, name for name, shape for shape."""
    missing = sorted(set(theirs) - set(ours))
    unknown = sorted(set(ours) - set(theirs))
    if missing or unknown:
        raise ParityError(f"their model does not match ours (theirs only: {missing[:3]}, ours only: {unknown[:3]})")
    bad = [k for k in ours if ours[k].shape != theirs[k].shape]
    if bad:
        raise ParityError(
            f"their model does not match ours: {bad[0]} is {tuple(theirs[bad[0]].shape)} in theirs, "
            f"{tuple(ours[bad[0]].shape)} in ours"
        )


@dataclass
class Trace:
    """What one side did: per step the learning rate and the loss; the step-0 gradients and the
    final state, by their names."""

    lrs: list[float]
    losses: list[float]
    grads: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]


def run_ours(method, config: Config, batches, epochs: Sequence[int], kind: str) -> Trace:
    o = config.optim
    optimizer = torch.optim.SGD(
        parameter_groups(method, o.weight_decay),
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
    )
    method.train()
    lrs, losses, grads = [], [], {}
    for k, (epoch, (images, targets, index)) in enumerate(zip(epochs, batches)):
        lr = learning_rate(epoch, o.lr, o.epochs, o.schedule, o.warmup_epochs, o.milestones, o.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = method(images, targets, epoch, indices=index) if method.uses_indices else method(images, targets, epoch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if k == 0:
            grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
        optimizer.step()
        lrs.append(lr)
        losses.append(float(out.loss.detach()))
    state = {k: v.detach().clone() for k, v in method.state_dict().items()}
    return Trace(lrs, losses, to_theirs(grads, kind), to_theirs(state, kind))


def run_theirs(
    official: Official | OfficialLarge,
    args,
    model,
    criterion,
    batches,
    epochs: Sequence[int],
    channels_last: bool = False,
) -> Trace:
    """Their training function (train/train_fn/), one batch per call, after their learning-rate
    function for the step's epoch, as their main loop calls them."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = model["model"] if isinstance(model, dict) else model  # NCL: {'comb': ..., 'model': ...}
    with cpu_shims(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their deprecation warnings (uint8 masks, add_(alpha, x))
        optimizer = official.optimizer(args, model, criterion)
        train = official.train_fn(args)
        lrs, losses, grads = [], [], {}
        for k, (epoch, (images, targets, index)) in enumerate(zip(epochs, batches)):
            lr = official.set_lr(optimizer, epoch, args)
            views = (
                images.contiguous(memory_format=layout)
                if isinstance(images, torch.Tensor)
                else [v.contiguous(memory_format=layout) for v in images]
            )
            losses.append(float(train(args, [(views, targets, index)], model, optimizer, criterion, epoch, None)))
            if k == 0:  # their step zeroes the gradients before backward: these are this step's
                grads = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
            lrs.append(float(lr))
    return Trace(lrs, losses, grads, {k: v.detach().clone() for k, v in net.state_dict().items()})


class LossRecorder:
    """Their criterion, remembering the loss of its last call (the GML scripts' ``train`` keeps
    its losses to itself)."""

    def __init__(self, criterion) -> None:
        self.criterion, self.value = criterion, math.nan

    def __call__(self, *args, **kwargs):
        loss = self.criterion(*args, **kwargs)
        self.value = float(loss.detach())
        return loss


def gml_optimizer(args: argparse.Namespace, model: nn.Module, weights: nn.Module) -> torch.optim.SGD:
    """Their GML ``main_worker``'s SGD over the model's and the loss's parameters: weight
    decay for all but those named ``__no_wd__`` (the temperature), which form a second group."""
    named = list(nn.ModuleList([model, weights]).named_parameters())
    optimizer = torch.optim.SGD(
        [p for n, p in named if "__no_wd__" not in n], args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    no_decay = [p for n, p in named if "__no_wd__" in n]
    if no_decay:
        optimizer.add_param_group({"params": no_decay, "weight_decay": 0.0})
    return optimizer


def gml_named(model: nn.Module, weights: nn.Module | None, what: str) -> dict[str, torch.Tensor]:
    """Their GML model's state (``what="state"``) or gradients, with the student's temperature
    of their loss as ``criterion.log_T_c__no_wd__`` (``weights``: their GMLLoss, for the student)."""
    if what == "state":
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    if weights is not None:
        temperature = weights.log_T_c__no_wd__
        value = temperature if what == "state" else temperature.grad
        if value is not None:
            out["criterion.log_T_c__no_wd__"] = value.detach().clone()
    return out


def run_theirs_gml(
    gml: OfficialGML, row: str, args, model, criterion, weights, batches, epochs: Sequence[int], channels_last=False
) -> Trace:
    """Their GML script's ``train`` (one batch per call) after its ``adjust_learning_rate`` for
    the step's epoch, with the optimizer of its ``main_worker``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    script = gml.script(row)
    student = weights if row == "gml" else None
    with cpu_shims(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # their size_average=False in the distillation term
        optimizer = gml_optimizer(args, model, weights)
        recorder = LossRecorder(criterion)
        lrs, losses, grads = [], [], {}
        for k, (epoch, (images, targets, index)) in enumerate(zip(epochs, batches)):
            script.adjust_learning_rate(optimizer, epoch, args)
            views = [v.contiguous(memory_format=layout) for v in (images if isinstance(images, list) else [images])]
            script.train([(views, targets, index)], model, recorder, optimizer, None, epoch, args)
            if k == 0:
                grads = gml_named(model, student, "grads")
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            losses.append(recorder.value)
    return Trace(lrs, losses, grads, gml_named(model, student, "state"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = set(a) | set(b)
    if set(a) != set(b):
        return math.inf
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys if a[k].numel())


def differences(x: Trace, y: Trace) -> dict[str, float]:
    return {
        "lr": max(abs(p - q) for p, q in zip(x.lrs, y.lrs)),
        "loss": max(abs(p - q) for p, q in zip(x.losses, y.losses)),
        "grad": _max_diff(x.grads, y.grads),
        "param": _max_diff(x.state, y.state),
    }


@dataclass
class RowResult:
    row: str
    epochs: list[int]
    ours: dict[str, float]
    yardstick: dict[str, float]
    tolerance: float
    seconds: float
    note: str = ""  # what the comparison leaves out, and why
    finding: str = ""  # a difference of structure rather than of numbers (then not equal)

    @property
    def equal(self) -> bool:
        if self.finding or not self.ours["lr"] <= 1e-12:
            return False
        return all(self.ours[k] <= self.tolerance * max(self.yardstick[k], 1e-300) for k in ("loss", "grad", "param"))


def compare_row(
    official: Official | OfficialGML,
    data: str,
    row: str,
    steps: int,
    batch_size: int | None,
    seed: int,
    tolerance: float,
    imbalance_factor: float = 100.0,
    overrides: Sequence[str] = (),
) -> RowResult:
    """Our preset ``data/row`` (as shipped, unless ``overrides``) against their code with the
    row's flags (``official``: their ``cifar/`` folder, or ``GML/`` for the GML rows)."""
    begin = time.perf_counter()
    imbalance = [] if data in LARGE_COUNTS else [f"data.imbalance_factor={imbalance_factor:g}"]
    config = load_config(f"{data}/{row}", [*imbalance, *overrides])
    if data in LARGE_COUNTS:
        num_classes, largest, imbalance = LARGE_COUNTS[data]
        counts = long_tail_counts(largest, num_classes, imbalance)
    else:
        num_classes = 10 if data == "cifar10_lt" else 100
        counts = long_tail_counts(50000 // num_classes, num_classes, imbalance_factor)
    epochs = step_epochs(config, steps)
    size = batch_size or config.optim.batch_size
    kind = row_kind(row)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.tensor(counts, dtype=torch.float64)
    views = VIEWS[kind]

    side = LARGE_SIDE if data in LARGE_COUNTS else 32

    def images() -> torch.Tensor | list[torch.Tensor]:
        drawn = [torch.randn(size, 3, side, side, generator=generator) for _ in range(views)]
        return drawn if views > 1 else drawn[0]

    batches = [(images(), torch.multinomial(weights, size, replacement=True, generator=generator)) for _ in epochs]
    order = torch.Generator().manual_seed(seed + 1)  # the images' data-set indices (GML's queue remembers them)
    batches = [(x, y, torch.randperm(sum(counts), generator=order)[:size]) for x, y in batches]
    torch.manual_seed(seed)
    method = to_layout(
        build_method(config, counts, num_classes, teacher=fresh_teacher(config, num_classes)), config.train
    )
    args = official.args(row, data, imbalance_factor)
    if isinstance(official, OfficialGML):
        return _compare_gml(official, row, args, counts, method, config, batches, epochs, kind, tolerance, begin)
    try:
        with cpu_shims(), contextlib.redirect_stdout(io.StringIO()):  # their parameter count
            model, criterion = official.build(row, args, counts)
    except Exception as err:  # noqa: BLE001 - their code failing is one line
        raise ParityError(f"{row}: building their model and loss failed ({type(err).__name__}: {err})") from None
    net = model["model"] if isinstance(model, dict) else model
    initial = to_theirs(method.state_dict(), kind)
    check_match(initial, net.state_dict())
    net.load_state_dict({k: v.clone() for k, v in initial.items()})
    twin, twin_criterion = copy.deepcopy(model), copy.deepcopy(criterion)
    (twin["model"] if isinstance(twin, dict) else twin).to(memory_format=torch.channels_last)
    ours = run_ours(method, config, batches, epochs, kind)
    try:
        theirs = run_theirs(official, args, model, criterion, batches, epochs)
        yard = run_theirs(official, args, twin, twin_criterion, batches, epochs, channels_last=True)
    except Exception as err:  # noqa: BLE001
        raise ParityError(f"{row}: a step of their code failed ({type(err).__name__}: {err})") from None
    return RowResult(
        row, epochs, differences(ours, theirs), differences(theirs, yard), tolerance, time.perf_counter() - begin
    )


#: GML state that no step or evaluation reads: the key embedding runs only in training mode (on
#: the queue), so its BatchNorm running statistics are never used. Their code also runs it on
#: the batch's keys (a result it uses only without a teacher), which moves these statistics a
#: second time per step; ours does not.
UNREAD_GML = re.compile(r"embed_k\.\d+\.(running_mean|running_var|num_batches_tracked)$")


def fresh_teacher(config: Config, num_classes: int) -> dict | None:
    """For a method that distils a teacher (GML): a freshly initialised one, as the checkpoint
    state of a finished run (the step mechanics do not depend on what it learnt); else None."""
    if "teacher" not in config.method.params:
        return None
    trunk = config.method.params.get("teacher_trunk", "resnet56")
    teacher = create_model(trunk, num_classes, "cosine")
    return {
        "config": {"model": {"name": trunk, "classifier": "cosine"}},
        "method": {f"model.{k}": v for k, v in teacher.state_dict().items()},
    }


def _compare_gml(gml: OfficialGML, row, args, counts, method, config, batches, epochs, kind, tolerance, begin):
    try:
        with cpu_shims(), contextlib.redirect_stdout(io.StringIO()):
            model, criterion, weights = gml.build(row, args, counts)
    except Exception as err:  # noqa: BLE001 - their code failing is one line
        raise ParityError(f"{row}: building their model and loss failed ({type(err).__name__}: {err})") from None
    student = weights if row == "gml" else None
    initial = to_theirs(method.state_dict(), kind)
    check_match(initial, gml_named(model, student, "state"))
    model.load_state_dict({k: v.clone() for k, v in initial.items() if not k.startswith("criterion.")})
    if student is not None:
        with torch.no_grad():
            student.log_T_c__no_wd__.copy_(initial["criterion.log_T_c__no_wd__"])
    twin = copy.deepcopy((model, criterion, weights))
    twin[0].to(memory_format=torch.channels_last)
    ours = run_ours(method, config, batches, epochs, kind)
    try:
        theirs = run_theirs_gml(gml, row, args, model, criterion, weights, batches, epochs)
        yard = run_theirs_gml(gml, row, args, *twin, batches, epochs, channels_last=True)
    except Exception as err:  # noqa: BLE001
        raise ParityError(f"{row}: a step of their code failed ({type(err).__name__}: {err})") from None
    note, finding = "", ""
    if kind == "gml":  # their key embedding also runs on the batch's keys, moving only these buffers
        for trace in (ours, theirs, yard):
            trace.state = {k: v for k, v in trace.state.items() if not UNREAD_GML.match(k)}
        note = "the key embedding's BatchNorm running statistics (never read: it only runs in training mode)"
        segments = [(method.segment_start, method.segment_length), (model.cls_start_idx, model.K_per_cls)]
        (a, b), (c, d) = ((x.tolist(), y.tolist()) for x, y in segments)
        if (a, b) != (c, d):
            k = next(i for i in range(len(a)) if (a[i], b[i]) != (c[i], d[i]))
            finding = (
                f"queue segment of class {k}: ours starts at {a[k]} with {b[k]} entries, theirs at {c[k]} with {d[k]}"
            )
    return RowResult(
        row,
        epochs,
        differences(ours, theirs),
        differences(theirs, yard),
        tolerance,
        time.perf_counter() - begin,
        note,
        finding,
    )


def format_rows(results: Sequence[RowResult]) -> str:
    lines = [
        "| row | steps | max lr diff | max loss diff | step-0 grad diff | param diff after | "
        "yardstick loss / grad / param | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o, y = r.ours, r.yardstick
        lines.append(
            f"| {r.row} | {len(r.epochs)} | {o['lr']:.1e} | {o['loss']:.1e} | {o['grad']:.1e} | "
            f"{o['param']:.1e} | {y['loss']:.1e} / {y['grad']:.1e} / {y['param']:.1e} | "
            f"{'equal' if r.equal else 'DIFFERS'} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# augmentation


@contextlib.contextmanager
def forced_python_random(sign: int) -> Iterator[None]:
    """Their policy draws with Python's ``random``: every stage applied (``random() = 0``, so
    ``0 < p`` decides), every sign ``sign``."""
    saved = (random.random, random.choice)
    random.random = lambda: 0.0
    random.choice = lambda seq: sign
    try:
        yield
    finally:
        random.random, random.choice = saved


def op_by_op(official: Official, images: np.ndarray) -> dict[str, float]:
    """Largest pixel difference of our per-image and batched policies from theirs, over every
    sub-policy with both stages applied and both signs."""
    from PIL import Image

    from dbm_ltr.data import batch_augment as ba

    policy = official.autoaug.CIFAR10Policy()
    table = reference_magnitudes(32, 32)
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    recipe = ba.BatchCifarTrain(autoaugment="reference")
    n = len(images)
    worst = {"per-image": 0.0, "batched": 0.0}
    for k, (theirs_sub, ours_sub) in enumerate(zip(policy.policies, CIFAR10_SUB_POLICIES)):
        for sign in (-1, 1):
            with forced_python_random(sign):
                ref = np.stack([np.asarray(theirs_sub(Image.fromarray(a))) for a in images]).astype(np.int64)
            mine = []
            for a in images:
                img = Image.fromarray(a)
                for op, p, level in ours_sub:
                    if 0.0 < p:
                        values, signed = table[op]
                        value = float(values[level or 0])
                        img = reference_op(img, op, sign * value if signed else value)
                mine.append(np.asarray(img))
            worst["per-image"] = max(worst["per-image"], float(np.abs(np.stack(mine) - ref).max()))
            params = ba.CifarTrainParams(
                crop=np.full((n, 2), 4),
                flip=np.zeros(n, bool),
                sub_policy=np.full(n, k),
                probs=np.zeros((n, 2)),
                signs=np.full((n, 2), int(sign > 0)),
                cutout=np.zeros((n, 2), np.int64),
                height=32,
                width=32,
                policy="reference",
            )
            out = recipe.pixels(batch, params).permute(0, 2, 3, 1).numpy().astype(np.int64)
            worst["batched"] = max(worst["batched"], float(np.abs(out - ref).max()))
    return worst


def image_statistics(images: np.ndarray) -> dict[str, Any]:
    """Per-image fill-grey fraction and channel means / stds of ``(N, H, W, 3)`` uint8 images,
    summarised as means with standard errors over the images."""
    x = images.astype(np.float64) / 255.0
    grey = (images == 128).all(-1).reshape(len(images), -1).mean(1)
    means = x.reshape(len(images), -1, 3).mean(1)
    out = {"fill_grey": (grey.mean(), grey.std(ddof=1) / math.sqrt(len(grey)))}
    out["mean"] = x.reshape(-1, 3).mean(0)
    out["std"] = x.reshape(-1, 3).std(0)
    out["mean_se"] = means.std(0, ddof=1) / math.sqrt(len(images))
    return out


def augmented(kind: str, images: np.ndarray, seed: int, official: Official | None = None) -> np.ndarray:
    """Crop + flip + AutoAugment of ``images`` (uint8, no Cutout or normalisation): ``theirs``
    (their transforms and policy), ``loader-<policy>`` (our per-image recipe), ``device-<policy>``
    (our batched recipe)."""
    from PIL import Image

    from dbm_ltr.data import batch_augment as ba
    from dbm_ltr.data.transforms import cifar_train_transform

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if kind.startswith("device-"):
        recipe = ba.BatchCifarTrain(autoaugment=kind.removeprefix("device-"))
        batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        params = recipe.sample(len(images), 32, 32, torch.Generator().manual_seed(seed))
        return recipe.pixels(batch, params).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    if kind == "theirs":
        transform_train, _ = official.transforms.get_transform("ce")  # [[before policy, after it]], test
        before = transform_train[0][0]
        policy = official.autoaug.CIFAR10Policy()
        steps = [before, policy]
    else:
        steps = cifar_train_transform(autoaugment=kind.removeprefix("loader-")).transforms[:3]
    out = []
    for a in images:
        img = Image.fromarray(a)
        for step in steps:
            img = step(img)
        out.append(np.asarray(img))
    return np.stack(out)


def augment_report(official: Official, root: str, count: int, seed: int) -> str:
    from dbm_ltr.data import create_dataset

    try:
        train = create_dataset("cifar10_lt", root, train=True, imbalance_factor=1)  # all 50,000
    except Exception as err:  # noqa: BLE001 - a missing data set is one line
        raise ParityError(f"--augment needs CIFAR-10 at --data {root} ({err})") from None
    rng = np.random.default_rng(seed)
    images = train.data[rng.permutation(len(train.data))[:count]]
    worst = op_by_op(official, images[:64])
    lines = [
        f"op by op, 25 sub-policies x 2 signs, both stages applied, 64 images: largest pixel "
        f"difference from theirs: our per-image policy {worst['per-image']:g}, batched twin "
        f"{worst['batched']:g}",
        "",
        f"statistics of {len(images)} augmented CIFAR-10 training images (crop, flip, AutoAugment):",
        "",
        "| source | fill-grey fraction | channel mean (R, G, B) | channel std (R, G, B) |",
        "|---|---|---|---|",
    ]
    stats = {}
    for kind, s in (
        ("theirs", seed),
        ("theirs", seed + 1),
        ("loader-reference", seed),
        ("device-reference", seed),
        ("loader-torchvision", seed),
        ("device-torchvision", seed),
    ):
        label = f"{kind} (draw {s - seed + 1})" if kind == "theirs" else kind
        st = image_statistics(augmented(kind, images, s, official))
        stats[label] = st
        grey, se = st["fill_grey"]
        lines.append(
            f"| {label} | {grey:.4f} +- {se:.4f} | {', '.join(f'{v:.4f}' for v in st['mean'])} | "
            f"{', '.join(f'{v:.4f}' for v in st['std'])} |"
        )
    t1, t2 = stats["theirs (draw 1)"], stats["theirs (draw 2)"]
    lines.append("")
    for kind in ("loader-reference", "device-reference"):
        st = stats[kind]
        ok = []
        for t in (lambda s: np.array([s["fill_grey"][0]]), lambda s: s["mean"], lambda s: s["std"]):
            lo, hi = np.minimum(t(t1), t(t2)), np.maximum(t(t1), t(t2))
            slack = 3 * np.maximum(st["mean_se"].max(), st["fill_grey"][1])
            ok.append(bool(np.all((t(st) >= lo - slack) & (t(st) <= hi + slack))))
        lines.append(
            f"{kind}: {'within' if all(ok) else 'OUTSIDE'} the spread of the two draws of theirs "
            "(plus three standard errors)"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------


class Sources:
    """Which of their folders runs a row, imported once when first needed: ``cifar/``
    (``--official``), ``GML/`` (``--official-gml``) or ``large_scale/`` (``--official-large``),
    the last two by default beside ``cifar/``; or why none does (a string)."""

    def __init__(self, args: argparse.Namespace, official: Official) -> None:
        beside = Path(args.official).expanduser().resolve().parent
        self.folders = {
            "gml": (args.official_gml, beside / "GML", "--official-gml", OfficialGML),
            "large": (args.official_large, beside / "large_scale", "--official-large", OfficialLarge),
        }
        self.loaded: dict[str, Any] = {"cifar": official}

    def get(self, data: str, row: str) -> Official | OfficialGML | OfficialLarge | str:
        if data in LARGE_FLAGS:
            if row not in LARGE_FLAGS[data]:
                return LARGE_NOT_COVERED.get(row.removesuffix("_resnext50"), LARGE_NOT_RUN)
            return self._load("large")
        if row in OFFICIAL_FLAGS:
            return self.loaded["cifar"]
        if row in GML_FLAGS:
            return self._load("gml")
        return NOT_COVERED.get(row, "no equivalent in their code")

    def _load(self, name: str) -> OfficialGML | OfficialLarge | str:
        if name not in self.loaded:
            given, beside, flag, kind = self.folders[name]
            if not given and not beside.is_dir():
                return f"no {beside}: give their {beside.name}/ folder with {flag}"
            self.loaded[name] = kind(given or beside)
        return self.loaded[name]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--official", required=True, help="the cifar/ folder of a checkout of the authors' code")
    p.add_argument(
        "--official-large",
        default="",
        help="the large_scale/ folder of that checkout, for --data-set imagenet_lt or inat2018 "
        "(default: the one beside --official)",
    )
    p.add_argument(
        "--official-gml",
        default="",
        help="the GML/ folder of that checkout, for the GML rows (default: the one beside --official, if there)",
    )
    p.add_argument(
        "--data-set",
        default="cifar10_lt",
        choices=("cifar10_lt", "cifar100_lt", *LARGE_FLAGS),
        help="whose presets and class counts (default cifar10_lt; imagenet_lt and inat2018: their large_scale/ code)",
    )
    p.add_argument(
        "--rows",
        default="",
        help="comma-separated rows (preset names; default: every row their code runs, for --data-set)",
    )
    p.add_argument("--steps", type=int, default=10, help="training steps per row (default 10)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help=f"images per step (default: the preset's; large-scale rows {LARGE_BATCH}, their ResNet-50 in float64)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=10.0,
        help="a row is equal when every difference is at most this times the yardstick's (default 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of our presets (to see what a changed setting does to parity)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--augment", action="store_true", help="also compare the AutoAugment policy (needs --data)")
    p.add_argument("--no-steps", action="store_true", help="skip the training-step comparison")
    p.add_argument("--data", default="data", help="CIFAR-10 root for --augment (npz archives or torchvision's folder)")
    p.add_argument("--images", type=int, default=4000, help="augmented images for the statistics (default 4000)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.steps < 1:
        print("parity_official: --steps must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        official = Official(args.official, augment=args.augment)
        if not args.no_steps:
            results = []
            large = args.data_set in LARGE_FLAGS
            default = LARGE_FLAGS[args.data_set] if large else DEFAULT_ROWS
            rows = [r.strip() for r in (args.rows or ",".join(default)).split(",") if r.strip()]
            presets = sorted(p.stem for p in (preset_dir() / args.data_set).glob("*.yaml"))
            unknown = [r for r in rows if r not in presets]
            if unknown:
                raise ParityError(f"--rows: no preset {args.data_set}/{unknown[0]}; rows: {', '.join(presets)}")
            sources = Sources(args, official)
            for row in rows:
                source = sources.get(args.data_set, row)
                if isinstance(source, str):
                    print(f"{row}: skipped ({source})", flush=True)
                    continue
                result = compare_row(
                    source,
                    args.data_set,
                    row,
                    args.steps,
                    args.batch_size or (LARGE_BATCH if large else None),
                    args.seed,
                    args.tolerance,
                    overrides=args.set,
                )
                print(
                    f"{row}: {'equal' if result.equal else 'DIFFERS'} ({result.seconds:.0f} s; epochs "
                    f"{', '.join(map(str, result.epochs))})"
                    + (f"; {result.finding}" if result.finding else "")
                    + (f"; left out: {result.note}" if result.note else ""),
                    flush=True,
                )
                results.append(result)
            if results:
                print()
                print(format_rows(results))
        if args.augment:
            torch.set_default_dtype(previous)
            print()
            print(augment_report(official, args.data, args.images, args.seed))
    except ParityError as err:
        print(f"parity_official: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_default_dtype(previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
