"""Batched CIFAR augmentation: the recipes of :mod:`.transforms`, applied to a whole uint8
batch at once with tensor ops that run on the batch's device (CPU or GPU).

Recipes (same names as the per-image PIL recipes of :data:`.transforms.TRANSFORMS`):

* ``cifar``: RandomCrop (4-pixel zero padding) -> horizontal flip p 0.5 -> AutoAugment
  (CIFAR-10 policy, fill 128, every image its own sub-policy, apply draws and signs;
  ``autoaugment="reference"``: the DBM code's per-image policy, ``"torchvision"``:
  torchvision's, see :mod:`.autoaugment`) -> ToTensor -> Cutout(16) -> Normalize.
* ``cifar_contrastive`` (SimCLR-style view of BCL/NCL): RandomResizedCrop(scale 0.2-1,
  ratio 3/4-4/3, bilinear) -> horizontal flip p 0.5 -> ColorJitter(0.4, 0.4, 0.4, 0.1) with
  p 0.8 (ops in a random order per image) -> RandomGrayscale p 0.2 -> Pillow's
  ``GaussianBlur(radius=sigma)``, sigma uniform in [0.1, 2], with p 0.5 -> ToTensor -> Normalize.
* ``cifar_test``: ToTensor -> Normalize.

Usage::

    recipe = create_batch_recipe("cifar")
    out = recipe(images, generator)   # images (B, 3, H, W) uint8 on any device

Randomness and synchronisation: every random number comes from the CPU ``generator`` and is
drawn on the host; so is the grouping of images by operation (numpy on the host).  The
per-image parameters and group indices are packed into one int64 and one float32 host buffer
and copied to the device with two ``non_blocking`` copies, so a recipe never reads a device
value back (no ``.item()``, ``.nonzero()``, boolean-mask indexing ...).  The output depends
only on the generator state and the input; the arithmetic is chosen to give the same bits on
CPU and CUDA (elementwise IEEE ops only, every division a true division, no matmul/conv that
TF32 could round).

The operations themselves are :mod:`.pixel_ops`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..registry import Registry
from .autoaugment import AUTOAUGMENT_POLICIES, CIFAR10_SUB_POLICIES, reference_magnitudes
from .pixel_ops import (
    GEOMETRIC_OPS,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    adjust_sharpness,
    affine_bicubic,
    affine_fixed,
    autocontrast,
    cutout,
    equalize,
    fixed_point,
    gaussian_blur,
    hflip,
    invert,
    normalize,
    pad_crop,
    pil_affine_matrix,
    posterize,
    reference_affine_matrix,
    resized_crop,
    rgb_to_grayscale,
    solarize,
    to_unit,
)
from .transforms import CIFAR_MEAN, CIFAR_STD

__all__ = [
    "AUTOAUGMENT_OPS",
    "BATCH_RECIPES",
    "BatchCifarContrastive",
    "BatchCifarTest",
    "BatchCifarTrain",
    "CIFAR10_POLICY",
    "CifarContrastiveParams",
    "CifarTrainParams",
    "autoaugment_magnitudes",
    "create_batch_recipe",
    "list_batch_recipes",
]

# --------------------------------------------------------------------------------------------
# AutoAugment tables

#: AutoAugment op names, in the order of the integer op codes used by :class:`CifarTrainParams`.
AUTOAUGMENT_OPS: tuple[str, ...] = (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
_OP_CODE = {name: i for i, name in enumerate(AUTOAUGMENT_OPS)}
_GEOMETRIC = GEOMETRIC_OPS
_GEOMETRIC_CODES = np.array([_OP_CODE[n] for n in _GEOMETRIC])

#: AutoAugment's CIFAR-10 policy: 25 sub-policies of two ``(op, p, bin)`` stages (``bin`` None
#: for ops without magnitude), shared by both ``data.autoaugment`` policies.
CIFAR10_POLICY: tuple = CIFAR10_SUB_POLICIES
_POL_OP = np.array([[_OP_CODE[s[0]] for s in sub] for sub in CIFAR10_POLICY], dtype=np.int64)
_POL_BIN = np.array([[-1 if s[2] is None else s[2] for s in sub] for sub in CIFAR10_POLICY], dtype=np.int64)
#: apply probabilities: torchvision compares ``float32 rand <= p`` in float32; the reference
#: policy applies a stage when a float64 uniform draw is below ``p``
_POL_P = {
    "torchvision": np.array([[s[1] for s in sub] for sub in CIFAR10_POLICY], dtype=np.float32),
    "reference": np.array([[s[1] for s in sub] for sub in CIFAR10_POLICY], dtype=np.float64),
}


def autoaugment_magnitudes(height: int, width: int, num_bins: int = 10) -> dict[str, tuple[np.ndarray, bool]]:
    """``op -> (magnitudes per bin (float64 of torchvision's float32 values), signed)``.

    The bins of torchvision's ``AutoAugment._augmentation_space(num_bins, (H, W))``: shear
    ``linspace(0, 0.3)``, translate ``linspace(0, 150/331 * W (or H))``, rotate
    ``linspace(0, 30)`` degrees, brightness/colour/contrast/sharpness ``linspace(0, 0.9)``
    (factor ``1 +- m``), posterize ``8 - round(arange / ((num_bins - 1) / 4))`` bits, solarize
    ``linspace(255, 0)``; autocontrast/equalize/invert have none (zeros).
    """

    def lin(a: float, b: float) -> np.ndarray:
        return torch.linspace(a, b, num_bins).numpy().astype(np.float64)

    post = (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()).numpy()
    zeros = np.zeros(num_bins)
    return {
        "ShearX": (lin(0.0, 0.3), True),
        "ShearY": (lin(0.0, 0.3), True),
        "TranslateX": (lin(0.0, 150.0 / 331.0 * width), True),
        "TranslateY": (lin(0.0, 150.0 / 331.0 * height), True),
        "Rotate": (lin(0.0, 30.0), True),
        "Brightness": (lin(0.0, 0.9), True),
        "Color": (lin(0.0, 0.9), True),
        "Contrast": (lin(0.0, 0.9), True),
        "Sharpness": (lin(0.0, 0.9), True),
        "Posterize": (post.astype(np.float64), False),
        "Solarize": (lin(255.0, 0.0), False),
        "AutoContrast": (zeros, False),
        "Equalize": (zeros, False),
        "Invert": (zeros, False),
    }


# --------------------------------------------------------------------------------------------
# host-side parameter packing


class _Pack:
    """Collect host arrays, copy them to the device as one int64 and one float32 buffer."""

    def __init__(self) -> None:
        self._parts: dict[str, list] = {"i": [], "f": []}
        self._where: dict[str, tuple[str, int, tuple[int, ...]]] = {}
        self._size = {"i": 0, "f": 0}

    def add(self, name: str, array, kind: str) -> None:
        a = np.ascontiguousarray(array, dtype=np.int64 if kind == "i" else np.float32)
        self._parts[kind].append(a.reshape(-1))
        self._where[name] = (kind, self._size[kind], a.shape)
        self._size[kind] += a.size

    def to(self, device: torch.device) -> dict[str, Tensor]:
        bufs = {}
        for kind in ("i", "f"):
            if self._parts[kind]:
                host = torch.from_numpy(np.concatenate(self._parts[kind]))
                if device.type == "cuda":  # pinned: the copy is truly asynchronous
                    host = host.pin_memory()
                bufs[kind] = host.to(device, non_blocking=True)
        out = {}
        for name, (kind, start, shape) in self._where.items():
            count = int(np.prod(shape, dtype=np.int64))
            out[name] = bufs[kind][start : start + count].view(shape)
        return out


def _check_call(images, generator) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, 3, H, W) uint8, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 in [0, 255] (the raw pixels), got {images.dtype}; "
            "pass the uint8 batch, the recipe scales and normalises itself"
        )
    if images.dim() != 4:
        raise ValueError(
            f"images must be 4-D (B, 3, H, W), got shape {tuple(images.shape)}; "
            "add a batch dimension or permute HWC data to CHW"
        )
    if images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 channels (RGB) in dim 1, got shape "
            f"{tuple(images.shape)}; permute (B, H, W, 3) data to (B, 3, H, W)"
        )
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a CPU torch.Generator, got {type(generator).__name__}; "
            "create one with torch.Generator().manual_seed(seed)"
        )
    if generator.device.type != "cpu":
        raise TypeError(
            f"generator must live on the CPU (parameters are drawn on the host), "
            f"got one on {generator.device}; use torch.Generator(device='cpu')"
        )


def _stats(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return mean, std


# --------------------------------------------------------------------------------------------
# recipe: cifar (regular)


@dataclass
class CifarTrainParams:
    """Host-side draws of the ``cifar`` recipe for a batch of ``B`` images (numpy arrays).

    ``crop`` (B, 2) offsets (top, left) in the padded image; ``flip`` (B,); ``sub_policy``
    (B,) in 0..24; ``probs`` (B, 2) apply draws (float32 for the torchvision policy, float64
    for the reference one); ``signs`` (B, 2) (0 = negative); ``cutout`` (B, 2) hole centres
    (y, x); ``policy``: ``"reference"`` or ``"torchvision"``.  Derived: ``ops`` (B, 2) op codes
    into :data:`AUTOAUGMENT_OPS`, ``applied`` (B, 2), ``magnitudes`` (B, 2) signed.
    """

    crop: np.ndarray
    flip: np.ndarray
    sub_policy: np.ndarray
    probs: np.ndarray
    signs: np.ndarray
    cutout: np.ndarray
    height: int
    width: int
    policy: str = "reference"

    @property
    def ops(self) -> np.ndarray:
        return _POL_OP[self.sub_policy]

    @property
    def applied(self) -> np.ndarray:
        """torchvision's ``probs[i] <= p`` with both sides float32; the reference policy's
        ``probs[i] < p`` in float64."""
        p = _POL_P[self.policy][self.sub_policy]
        return self.probs <= p if self.policy == "torchvision" else self.probs < p

    @property
    def magnitudes(self) -> np.ndarray:
        """Signed values: torchvision's magnitudes (:func:`autoaugment_magnitudes`) or the
        reference policy's (:func:`~dbm_ltr.data.autoaugment.reference_magnitudes`)."""
        if self.policy == "torchvision":
            table = autoaugment_magnitudes(self.height, self.width)
        else:
            table = reference_magnitudes(self.height, self.width)
        ops, bins = self.ops, _POL_BIN[self.sub_policy]
        out = np.zeros(ops.shape, dtype=np.float64)
        for code, name in enumerate(AUTOAUGMENT_OPS):
            sel = ops == code
            if not sel.any():
                continue
            mags, signed = table[name]
            vals = mags[np.maximum(bins[sel], 0)]
            if signed:
                vals = np.where(self.signs[sel] == 0, -vals, vals)
            out[sel] = vals
        return out

    def geometric_matrices(self, stage: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(inverse affine matrices (k, 6) float64, bicubic (k,) bool)`` of the geometric
        ops of ``stage`` for the images ``index``: torchvision's nearest-neighbour matrices
        (:func:`pil_affine_matrix`), or the reference policy's (:func:`reference_affine_matrix`;
        its shears resample bicubic)."""
        ops, mags = self.ops[index, stage], self.magnitudes[index, stage]
        mats = np.zeros((len(index), 6), dtype=np.float64)
        bicubic = np.zeros(len(index), dtype=bool)
        build = pil_affine_matrix if self.policy == "torchvision" else reference_affine_matrix
        for name in _GEOMETRIC:
            sel = ops == _OP_CODE[name]
            if sel.any():
                mats[sel] = build(name, torch.from_numpy(mags[sel]), self.height, self.width).numpy()
                bicubic[sel] = self.policy == "reference" and name in ("ShearX", "ShearY")
        return mats, bicubic


class _SampledRecipe:
    """A recipe in two steps: :meth:`sample` draws every random parameter on the host,
    :meth:`apply` runs the batch through the operations on its device."""

    def sample(self, b: int, h: int, w: int, generator: torch.Generator):
        raise NotImplementedError

    def apply(self, images: Tensor, params) -> Tensor:
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        _check_call(images, generator)
        b, _, h, w = images.shape
        return self.apply(images, self.sample(b, h, w, generator))


class BatchCifarTrain(_SampledRecipe):
    """The ``cifar`` recipe on a uint8 batch: RandomCrop(pad 4) -> HFlip -> AutoAugment
    (CIFAR10 policy, per-image sub-policy; ``autoaugment``: ``"reference"`` or
    ``"torchvision"``, see :mod:`.autoaugment`) -> ToTensor -> Cutout -> Normalize."""

    def __init__(
        self,
        cutout: int = 16,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        padding: int = 4,
        fill: float = 128.0,
        autoaugment: str = "reference",
    ) -> None:
        if autoaugment not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"unknown AutoAugment policy {autoaugment!r}; choose one of {', '.join(AUTOAUGMENT_POLICIES)}"
            )
        if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
            raise ValueError(f"cutout must be a non-negative integer (0 = off), got {cutout!r}")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
        self.cutout = cutout
        self.padding = padding
        self.fill = float(fill)
        self.autoaugment = autoaugment
        self.mean, self.std = _stats(mean, std)

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator) -> CifarTrainParams:
        """Draw every random number of a batch from ``generator`` (host only)."""
        g = generator
        crop = torch.randint(0, 2 * self.padding + 1, (batch, 2), generator=g)
        flip = torch.rand(batch, generator=g) < 0.5
        sub = torch.randint(0, len(CIFAR10_POLICY), (batch,), generator=g)
        dtype = torch.float32 if self.autoaugment == "torchvision" else torch.float64
        probs = torch.rand(batch, 2, generator=g, dtype=dtype)
        signs = torch.randint(0, 2, (batch, 2), generator=g)
        cy = torch.randint(0, height, (batch,), generator=g)
        cx = torch.randint(0, width, (batch,), generator=g)
        return CifarTrainParams(
            crop=crop.numpy(),
            flip=flip.numpy(),
            sub_policy=sub.numpy(),
            probs=probs.numpy(),
            signs=signs.numpy(),
            cutout=np.stack([cy.numpy(), cx.numpy()], 1),
            height=height,
            width=width,
            policy=self.autoaugment,
        )

    def _plan(self, p: CifarTrainParams) -> tuple[_Pack, list]:
        pack = _Pack()
        pack.add("crop", p.crop, "i")
        pack.add("flip", p.flip.astype(np.int64), "i")
        pack.add("cutout", p.cutout, "i")
        pack.add("mean", self.mean, "f")
        pack.add("std", self.std, "f")
        ops, applied, mags = p.ops, p.applied, p.magnitudes
        steps = []
        for stage in range(2):
            op_s, app_s, mag_s = ops[:, stage], applied[:, stage], mags[:, stage]
            geo = np.flatnonzero(app_s & np.isin(op_s, _GEOMETRIC_CODES))
            if geo.size:
                mats, bicubic = p.geometric_matrices(stage, geo)
                if (~bicubic).any():
                    key = f"s{stage}_geo"
                    pack.add(key + "_idx", geo[~bicubic], "i")
                    pack.add(key + "_fix", fixed_point(torch.from_numpy(mats[~bicubic])).numpy(), "i")
                    steps.append(("geometric", key))
                if bicubic.any():  # float64 matrices travel as their bits in the int64 buffer
                    key = f"s{stage}_bicubic"
                    pack.add(key + "_idx", geo[bicubic], "i")
                    pack.add(key + "_mat", np.ascontiguousarray(mats[bicubic]).view(np.int64), "i")
                    steps.append(("bicubic", key))
            for name in AUTOAUGMENT_OPS:
                if name in _GEOMETRIC:
                    continue
                idx = np.flatnonzero(app_s & (op_s == _OP_CODE[name]))
                if not idx.size:
                    continue
                key = f"s{stage}_{name}"
                pack.add(key + "_idx", idx, "i")
                if name in ("Brightness", "Color", "Contrast", "Sharpness"):
                    pack.add(key + "_arg", 1.0 + mag_s[idx], "f")
                elif name in ("Posterize", "Solarize"):
                    pack.add(key + "_arg", mag_s[idx], "f")
                steps.append((name, key))
        return pack, steps

    _POINT_OPS = {
        "Brightness": adjust_brightness,
        "Color": adjust_saturation,
        "Contrast": adjust_contrast,
        "Sharpness": adjust_sharpness,
        "Posterize": posterize,
        "Solarize": solarize,
    }
    _PLAIN_OPS = {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert}

    def apply(self, images: Tensor, params: CifarTrainParams) -> Tensor:
        """Apply the recipe with given host parameters (see :meth:`sample`)."""
        x, dev = self._augment(images, params)
        if self.cutout > 0:
            x = cutout(x, dev["cutout"], self.cutout)
        return normalize(to_unit(x), dev["mean"], dev["std"])

    def pixels(self, images: Tensor, params: CifarTrainParams) -> Tensor:
        """Crop, flip and AutoAugment only: the float32 pixel values in [0, 255] before
        Cutout and normalisation (for statistics of the policy)."""
        return self._augment(images, params)[0]

    def _augment(self, images: Tensor, params: CifarTrainParams) -> tuple[Tensor, dict[str, Tensor]]:
        pack, steps = self._plan(params)
        dev = pack.to(images.device)
        x = pad_crop(images.to(torch.float32), dev["crop"], self.padding, flip=dev["flip"])
        for name, key in steps:
            idx = dev[key + "_idx"]
            sub = x.index_select(0, idx)
            if name == "geometric":
                sub = affine_fixed(sub, dev[key + "_fix"], self.fill)
            elif name == "bicubic":
                sub = affine_bicubic(sub, dev[key + "_mat"].view(torch.float64), self.fill)
            elif name in self._POINT_OPS:
                sub = self._POINT_OPS[name](sub, dev[key + "_arg"])
            else:
                sub = self._PLAIN_OPS[name](sub)
            x = x.index_copy(0, idx, sub)
        return x, dev

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop pad {self.padding} -> hflip -> AutoAugment(CIFAR10, "
            f"{self.autoaugment}, fill={self.fill:g}) -> cutout={self.cutout} -> "
            f"normalize(mean={self.mean}, std={self.std}))"
        )


# --------------------------------------------------------------------------------------------
# recipe: cifar_contrastive


@dataclass
class CifarContrastiveParams:
    """Host-side draws of ``cifar_contrastive`` for ``B`` images (numpy arrays).

    ``boxes`` (B, 4) crop (top, left, height, width); ``flip`` (B,); ``jitter`` (B,) colour
    jitter applied; ``factors`` (B, 4) float32 brightness, contrast, saturation, hue;
    ``order`` (B, 4) permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue);
    ``gray`` (B,); ``blur`` (B,); ``sigma`` (B,) float32.
    """

    boxes: np.ndarray
    flip: np.ndarray
    jitter: np.ndarray
    factors: np.ndarray
    order: np.ndarray
    gray: np.ndarray
    blur: np.ndarray
    sigma: np.ndarray


def _sample_resized_crop(
    batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> np.ndarray:
    """torchvision's ``RandomResizedCrop.get_params`` for a batch, the 10 attempts vectorised.

    Attempt: ``area * U(scale)``, aspect ``exp(U(log ratio))``, ``w = round(sqrt(a r))``,
    ``h = round(sqrt(a / r))`` (half to even, as Python's ``round``); the first attempt
    that fits wins, its offsets uniform; none fits -> central crop clipped to ``ratio``.
    """
    area = float(height * width)
    u_area = torch.rand(batch, 10, generator=g, dtype=torch.float64).numpy()
    u_ratio = torch.rand(batch, 10, generator=g, dtype=torch.float64).numpy()
    u_pos = torch.rand(batch, 2, generator=g, dtype=torch.float64).numpy()
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    aspect = np.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.argmax(1)
    rows = np.arange(batch)
    found = ok[rows, first]
    hh, wh = h[rows, first], w[rows, first]
    top = np.floor(u_pos[:, 0] * (height - hh + 1)).astype(np.int64)
    left = np.floor(u_pos[:, 1] * (width - wh + 1)).astype(np.int64)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    boxes = np.stack([top, left, hh, wh], 1)
    boxes[~found] = ((height - fh) // 2, (width - fw) // 2, fh, fw)
    return boxes


class BatchCifarContrastive(_SampledRecipe):
    """The ``cifar_contrastive`` recipe on a uint8 batch: RandomResizedCrop -> HFlip ->
    ColorJitter p 0.8 -> Grayscale p 0.2 -> PIL GaussianBlur p 0.5 -> ToTensor -> Normalize."""

    def __init__(
        self,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        p_blur: float = 0.5,
        sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        self.mean, self.std = _stats(mean, std)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.jitter = tuple(float(j) for j in jitter)
        self.p_jitter, self.p_gray, self.p_blur = float(p_jitter), float(p_gray), float(p_blur)
        self.sigma = tuple(float(s) for s in sigma)

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator) -> CifarContrastiveParams:
        """Draw every random number of a batch from ``generator`` (host only)."""
        g = generator
        boxes = _sample_resized_crop(batch, height, width, self.scale, self.ratio, g)
        flip = torch.rand(batch, generator=g) < 0.5
        # RandomApply applies unless p < u, i.e. when u <= p
        jitter = torch.rand(batch, generator=g) <= self.p_jitter
        u = torch.rand(batch, 4, generator=g)
        b, c, s, hue = self.jitter
        lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -hue])
        hi = torch.tensor([1 + b, 1 + c, 1 + s, hue])
        factors = lo + (hi - lo) * u
        order = torch.rand(batch, 4, generator=g).argsort(dim=1)
        gray = torch.rand(batch, generator=g) < self.p_gray
        blur = torch.rand(batch, generator=g) <= self.p_blur
        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * torch.rand(batch, generator=g)
        return CifarContrastiveParams(
            boxes=boxes,
            flip=flip.numpy(),
            jitter=jitter.numpy(),
            factors=factors.numpy(),
            order=order.numpy(),
            gray=gray.numpy(),
            blur=blur.numpy(),
            sigma=sigma.numpy(),
        )

    _JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

    def apply(self, images: Tensor, params: CifarContrastiveParams) -> Tensor:
        """Apply the recipe with given host parameters (see :meth:`sample`)."""
        p = params
        pack = _Pack()
        pack.add("boxes", p.boxes, "i")
        pack.add("flip", p.flip.astype(np.int64), "i")
        pack.add("mean", self.mean, "f")
        pack.add("std", self.std, "f")
        steps = []
        for slot in range(4):
            for fn in range(4):
                idx = np.flatnonzero(p.jitter & (p.order[:, slot] == fn))
                if idx.size:
                    key = f"j{slot}_{fn}"
                    pack.add(key + "_idx", idx, "i")
                    pack.add(key + "_arg", p.factors[idx, fn], "f")
                    steps.append((fn, key))
        gray = np.flatnonzero(p.gray)
        blur = np.flatnonzero(p.blur)
        pack.add("gray_idx", gray, "i")
        pack.add("blur_idx", blur, "i")
        pack.add("blur_sigma", p.sigma[blur], "f")
        dev = pack.to(images.device)

        x = images.to(torch.float32)
        x = resized_crop(x, dev["boxes"], (x.shape[-2], x.shape[-1]))
        x = hflip(x, dev["flip"])
        for fn, key in steps:
            idx = dev[key + "_idx"]
            x = x.index_copy(0, idx, self._JITTER_OPS[fn](x.index_select(0, idx), dev[key + "_arg"]))
        if gray.size:
            idx = dev["gray_idx"]
            x = x.index_copy(0, idx, rgb_to_grayscale(x.index_select(0, idx)))
        if blur.size:
            idx = dev["blur_idx"]
            blurred = gaussian_blur(x.index_select(0, idx), dev["blur_sigma"], max_sigma=float(p.sigma[blur].max()))
            x = x.index_copy(0, idx, blurred)
        return normalize(to_unit(x), dev["mean"], dev["std"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(resized_crop(scale={self.scale}) -> hflip -> "
            f"color_jitter{self.jitter} p={self.p_jitter} -> grayscale p={self.p_gray} -> "
            f"pil_gaussian_blur(sigma={self.sigma}) p={self.p_blur} -> "
            f"normalize(mean={self.mean}, std={self.std}))"
        )


# --------------------------------------------------------------------------------------------
# recipe: cifar_test


class BatchCifarTest:
    """The ``cifar_test`` recipe: ``(x / 255 - mean) / std`` (no randomness)."""

    def __init__(self, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> None:
        self.mean, self.std = _stats(mean, std)

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if generator is None:
            generator = torch.Generator()
        _check_call(images, generator)
        pack = _Pack()
        pack.add("mean", self.mean, "f")
        pack.add("std", self.std, "f")
        dev = pack.to(images.device)
        return normalize(to_unit(images), dev["mean"], dev["std"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normalize(mean={self.mean}, std={self.std}))"


# --------------------------------------------------------------------------------------------
# registry

#: name -> factory of a batch recipe ``recipe(images, generator) -> normalised float batch``
BATCH_RECIPES = Registry("batch recipe")
BATCH_RECIPES.register("cifar", BatchCifarTrain)
BATCH_RECIPES.register("cifar_contrastive", BatchCifarContrastive)
BATCH_RECIPES.register("cifar_test", BatchCifarTest)


def create_batch_recipe(name: str, **kwargs):
    """A fresh batch recipe registered as ``name`` (``cifar``, ``cifar_contrastive``,
    ``cifar_test``); ``kwargs`` go to its factory (``mean``, ``std``; ``cifar``: ``cutout``,
    ``autoaugment``)."""
    return BATCH_RECIPES.lookup(name)(**kwargs)


def list_batch_recipes() -> list[str]:
    """Registered batch recipe names, sorted."""
    return BATCH_RECIPES.names()
