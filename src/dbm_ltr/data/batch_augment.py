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

Fidelity: the PIL recipes run on PIL images, so every op here reproduces Pillow's own
integer / fixed-point arithmetic (Pillow 13 C sources: ``Blend.c``, ``Filter.c``,
``Geometry.c``, ``Resample.c``, ``BoxBlur.c``, ``Convert.c``; ``ImageOps``/``ImageEnhance``)
and quantises to integers after every op exactly where Pillow stores uint8.  Values are held
in float32 in [0, 255]; integer-exact steps that need more than 24 bits use int64 (or
float64 where Pillow itself computes in double).  With the same parameters the batched ops
give the same pixels as the PIL ops (the tests check this op by op).  Rounding, as Pillow:
blends (brightness, colour, contrast, sharpness) truncate; SMOOTH, box blur and bilinear
resampling round half up in fixed point; autocontrast and the HSV conversion truncate, the
HSV -> RGB step rounds half away from zero; nearest sampling floors 16.16 fixed point; the
bicubic filter (the reference policy's shears) runs in double and truncates, as Pillow's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..registry import Registry
from .autoaugment import AUTOAUGMENT_POLICIES, CIFAR10_SUB_POLICIES, reference_magnitudes
from .transforms import CIFAR_MEAN, CIFAR_STD

__all__ = [
    "AUTOAUGMENT_OPS",
    "BATCH_RECIPES",
    "BatchCifarContrastive",
    "BatchCifarTest",
    "BatchCifarTrain",
    "CifarContrastiveParams",
    "CifarTrainParams",
    "CIFAR10_POLICY",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "adjust_sharpness",
    "affine_bicubic",
    "affine_nearest",
    "autoaugment_magnitudes",
    "autocontrast",
    "create_batch_recipe",
    "cutout",
    "equalize",
    "gaussian_blur",
    "hflip",
    "invert",
    "list_batch_recipes",
    "normalize",
    "pad_crop",
    "pil_affine_matrix",
    "posterize",
    "reference_affine_matrix",
    "resized_crop",
    "rgb_to_grayscale",
    "rotate",
    "shear_x",
    "shear_y",
    "solarize",
    "to_unit",
    "translate_x",
    "translate_y",
]

# --------------------------------------------------------------------------------------------
# AutoAugment tables

#: AutoAugment op names, in the order of the integer op codes used by :class:`CifarTrainParams`.
AUTOAUGMENT_OPS: tuple[str, ...] = (
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
    "Brightness", "Color", "Contrast", "Sharpness",
    "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)
_OP_CODE = {name: i for i, name in enumerate(AUTOAUGMENT_OPS)}
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_GEOMETRIC_CODES = np.array([_OP_CODE[n] for n in _GEOMETRIC])

#: AutoAugment's CIFAR-10 policy: 25 sub-policies of two ``(op, p, bin)`` stages (``bin`` None
#: for ops without magnitude), shared by both ``data.autoaugment`` policies.
CIFAR10_POLICY: tuple = CIFAR10_SUB_POLICIES
_POL_OP = np.array([[_OP_CODE[s[0]] for s in sub] for sub in CIFAR10_POLICY], dtype=np.int64)
_POL_BIN = np.array([[-1 if s[2] is None else s[2] for s in sub] for sub in CIFAR10_POLICY],
                    dtype=np.int64)
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
# small helpers


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Per-image parameter ``(n,)`` -> ``(n, 1, 1, 1)`` on ``like``'s device."""
    return v.to(like.device).reshape(-1, 1, 1, 1)


def _check_float_batch(x: Tensor, name: str, channels: int | None = 3) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} expects a float (n, C, H, W) tensor with values in [0, 255], "
                         f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} expects {channels} channels (RGB), got shape {tuple(x.shape)}")


def _luma(x: Tensor) -> Tensor:
    """Pillow's ``convert('L')`` (ITU-R 601-2): ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``.

    ``(n, 3, H, W)`` float in [0, 255] -> ``(n, 1, H, W)`` float32 (integer valued, exact).
    """
    xi = x.to(torch.int32)
    lum = (xi[:, 0:1] * 19595 + xi[:, 1:2] * 38470 + xi[:, 2:3] * 7471 + 32768) >> 16
    return lum.to(torch.float32)


def _blend(degenerate: Tensor, image: Tensor, factor: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, image, factor)`` on 8-bit data (``Blend.c``).

    ``trunc(clamp(d + f * (i - d), 0, 255))`` evaluated in float32 in that order, ``f`` the
    factor rounded to float32 (Pillow's C ``float alpha``): rounding is truncation.
    """
    f = _col(factor, image).to(torch.float32)
    return (degenerate + f * (image - degenerate)).clamp_(0.0, 255.0).floor_()


def _div(a: Tensor, b: float | Tensor) -> Tensor:
    """IEEE division ``a / b`` with ``b`` made a tensor on ``a``'s device.

    PyTorch evaluates ``scalar / tensor`` as ``scalar * reciprocal(tensor)`` and, on CUDA,
    ``tensor / python_scalar`` as ``tensor * (1 / scalar)``; both can be 1 ulp off the true
    quotient, which flips truncations that Pillow computes with a real division.
    """
    if not isinstance(b, Tensor):
        b = torch.full((), b, dtype=a.dtype, device=a.device)
    return torch.div(a, b)


def _num(value: float, like: Tensor) -> Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype on ``like``'s device."""
    return torch.full((), value, dtype=like.dtype, device=like.device)


def _round_half_away(v: Tensor) -> Tensor:
    """C ``round()`` (half away from zero) for non-negative values, without ``v + 0.5`` error."""
    t = torch.trunc(v)
    return t + ((v - t) >= 0.5).to(v.dtype)


# --------------------------------------------------------------------------------------------
# geometric ops (Pillow's affine transform, nearest neighbour)


def pil_affine_matrix(op: str, magnitude: Tensor, height: int, width: int) -> Tensor:
    """The inverse affine matrices ``(n, 6)`` float64 that the PIL path of torchvision's
    ``_apply_op(img, op, magnitude, NEAREST, fill)`` hands to ``Image.transform(AFFINE)``.

    Pillow maps output pixel ``(X, Y)`` to input ``(a (X+.5) + b (Y+.5) + c,
    d (X+.5) + e (Y+.5) + f)``.  Shears use ``center=[0, 0]`` and the angle
    ``degrees(atan(m))`` (torchvision's ``_get_inverse_affine_matrix``); translations move
    by ``int(m)`` pixels (truncation toward zero); ``Rotate`` is ``Image.rotate(m)`` about
    ``(W/2, H/2)`` with its cos/sin rounded to 15 decimals as Pillow does.
    """
    m = magnitude.to(torch.float64).reshape(-1)
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    if op in ("ShearX", "ShearY"):
        s = torch.deg2rad(torch.rad2deg(torch.atan(m)))
        if op == "ShearX":  # x_in = x + tan(s) y
            return torch.stack([one, torch.tan(s), zero, zero, one, zero], 1)
        # y_in = y + sin(s)/cos(s) x   (-c of torchvision's matrix)
        return torch.stack([one, zero, zero, torch.sin(s) / torch.cos(s), one, zero], 1)
    if op in ("TranslateX", "TranslateY"):
        t = -torch.trunc(m)
        if op == "TranslateX":
            return torch.stack([one, zero, t, zero, one, zero], 1)
        return torch.stack([one, zero, zero, zero, one, t], 1)
    if op == "Rotate":
        ang = -torch.deg2rad(torch.remainder(m, 360.0))
        ca = _div(torch.round(torch.cos(ang) * 1e15), 1e15)
        sa = _div(torch.round(torch.sin(ang) * 1e15), 1e15)
        cx, cy = width / 2.0, height / 2.0
        c = ca * -cx + sa * -cy + cx
        f = -sa * -cx + ca * -cy + cy
        return torch.stack([ca, sa, c, -sa, ca, f], 1)
    raise ValueError(f"not a geometric AutoAugment op: {op!r}; use one of {_GEOMETRIC}")


def _fixed_point(matrix: Tensor) -> Tensor:
    """Pillow's 16.16 fixed-point coefficients (``Geometry.c``, ``affine_fixed``).

    ``FIX(v) = floor(v * 65536 + 0.5)`` of ``a, b, d, e`` and of the offsets taken at the
    first pixel centre, ``c + a/2 + b/2`` and ``f + d/2 + e/2``.  Returns ``(n, 6)`` int64
    ``(A, B, C, D, E, F)``.
    """
    m = matrix.to(torch.float64)
    a, b, c, d, e, f = m.unbind(1)
    c0 = c + a * 0.5 + b * 0.5
    f0 = f + d * 0.5 + e * 0.5
    return torch.floor(torch.stack([a, b, c0, d, e, f0], 1) * 65536.0 + 0.5).to(torch.int64)


def _affine_fixed(x: Tensor, fixed: Tensor, fill: float) -> Tensor:
    """Nearest sampling with fixed-point coefficients: ``x_in = (C + Y B + X A) >> 16``,
    ``y_in = (F + Y E + X D) >> 16`` (arithmetic shift = floor), outside pixels = ``fill``."""
    n, ch, h, w = x.shape
    dev = x.device
    a, b, c, d, e, f = (v.reshape(n, 1, 1) for v in fixed.to(dev).unbind(1))
    ys = torch.arange(h, device=dev, dtype=torch.int64).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=torch.int64).view(1, 1, w)
    xin = (c + ys * b + xs * a) >> 16
    yin = (f + ys * e + xs * d) >> 16
    valid = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    src = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).view(n, 1, h * w).expand(n, ch, h * w)
    out = x.reshape(n, ch, h * w).gather(2, src).view(n, ch, h, w)
    return torch.where(valid.view(n, 1, h, w), out, float(fill))


def affine_nearest(x: Tensor, matrix: Tensor, fill: float = 128.0) -> Tensor:
    """Pillow's ``Image.transform(size, AFFINE, matrix, NEAREST, fillcolor=fill)`` per image.

    ``x`` ``(n, C, H, W)``; ``matrix`` ``(n, 6)`` inverse matrices (see
    :func:`pil_affine_matrix`).  Reproduces Pillow's 16.16 fixed-point nearest-neighbour
    path exactly (pure scalings/translations take a float path in Pillow, which gives the
    same pixels for integer translations).
    """
    _check_float_batch(x, "affine_nearest", channels=None)
    return _affine_fixed(x, _fixed_point(matrix.to(x.device)), fill)


def _geometric(op: str, x: Tensor, magnitude: Tensor, fill: float) -> Tensor:
    _check_float_batch(x, op, channels=None)
    mat = pil_affine_matrix(op, magnitude.to(x.device), x.shape[-2], x.shape[-1])
    return affine_nearest(x, mat, fill)


def shear_x(x: Tensor, magnitude: Tensor, fill: float = 128.0) -> Tensor:
    """AutoAugment ``ShearX``: ``x_in = x + tan(atan(m)) y`` (centre [0, 0]), nearest, fill."""
    return _geometric("ShearX", x, magnitude, fill)


def shear_y(x: Tensor, magnitude: Tensor, fill: float = 128.0) -> Tensor:
    """AutoAugment ``ShearY``: ``y_in = y + tan(atan(m)) x`` (centre [0, 0]), nearest, fill."""
    return _geometric("ShearY", x, magnitude, fill)


def translate_x(x: Tensor, magnitude: Tensor, fill: float = 128.0) -> Tensor:
    """AutoAugment ``TranslateX``: shift right by ``int(m)`` pixels (toward zero), fill."""
    return _geometric("TranslateX", x, magnitude, fill)


def translate_y(x: Tensor, magnitude: Tensor, fill: float = 128.0) -> Tensor:
    """AutoAugment ``TranslateY``: shift down by ``int(m)`` pixels (toward zero), fill."""
    return _geometric("TranslateY", x, magnitude, fill)


def rotate(x: Tensor, angle: Tensor, fill: float = 128.0) -> Tensor:
    """``Image.rotate(angle)`` (degrees, counter-clockwise, about (W/2, H/2)), nearest, fill."""
    return _geometric("Rotate", x, angle, fill)


def reference_affine_matrix(op: str, value: Tensor, height: int, width: int) -> Tensor:
    """The inverse affine matrices ``(n, 6)`` float64 of the reference policy's geometric ops
    (:func:`~dbm_ltr.data.autoaugment.reference_op`) for signed values ``value``.

    Shears: ``(1, v, 0, 0, 1, 0)`` / ``(1, 0, 0, v, 1, 0)``, for :func:`affine_bicubic`.
    Translations: Pillow samples ``x + v`` with nearest rounding on its float path
    (``floor(x + 0.5 + v)``), which is the whole-pixel shift ``floor(v + 0.5)`` of the
    returned matrix, for :func:`affine_nearest`. ``Rotate``: ``Image.rotate(v)``, as
    :func:`pil_affine_matrix`.
    """
    v = value.to(torch.float64).reshape(-1)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if op == "ShearX":
        return torch.stack([one, v, zero, zero, one, zero], 1)
    if op == "ShearY":
        return torch.stack([one, zero, zero, v, one, zero], 1)
    if op == "TranslateX":
        return torch.stack([one, zero, torch.floor(v + 0.5), zero, one, zero], 1)
    if op == "TranslateY":
        return torch.stack([one, zero, zero, zero, one, torch.floor(v + 0.5)], 1)
    if op == "Rotate":
        return pil_affine_matrix("Rotate", v, height, width)
    raise ValueError(f"not a geometric AutoAugment op: {op!r}; use one of {_GEOMETRIC}")


def _cubic(a: Tensor, b: Tensor, c: Tensor, d: Tensor, t: Tensor) -> Tensor:
    """Pillow's ``BICUBIC`` macro (``Geometry.c``, a = -1 cubic through b and c), evaluated in
    double in the same order: ``b + t (p2 + t (p3 + t p4))``."""
    p2 = -a + c
    p3 = 2 * (a - b) + c - d
    p4 = -a + b - c + d
    return b + t * (p2 + t * (p3 + t * p4))


def affine_bicubic(x: Tensor, matrix: Tensor, fill: float = 128.0) -> Tensor:
    """Pillow's ``Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill)`` per image.

    ``x`` ``(n, C, H, W)`` float in [0, 255]; ``matrix`` ``(n, 6)`` inverse matrices. Output
    pixel ``(X, Y)`` samples ``(a (X+.5) + b (Y+.5) + c, d (X+.5) + e (Y+.5) + f)`` (double);
    outside ``[0, W) x [0, H)`` it keeps ``fill``. Inside, the 4 x 4 taps around the sample
    (columns clamped to the image; a row above the image is clamped, a row below it repeats
    the row interpolated before it, as ``BICUBIC_BODY``) are interpolated along x, then y,
    and the result is clipped to [0, 255] and truncated.
    """
    _check_float_batch(x, "affine_bicubic", channels=None)
    n, ch, h, w = x.shape
    dev = x.device
    a, b, c, d, e, f = (v.reshape(n, 1, 1) for v in matrix.to(dev, torch.float64).unbind(1))
    xs = (torch.arange(w, device=dev, dtype=torch.float64) + 0.5).view(1, 1, w)
    ys = (torch.arange(h, device=dev, dtype=torch.float64) + 0.5).view(1, h, 1)
    xx = a * xs + b * ys + c
    yy = d * xs + e * ys + f
    inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
    fx, fy = torch.floor(xx - 0.5), torch.floor(yy - 0.5)
    dx, dy = (xx - 0.5 - fx).unsqueeze(1), (yy - 0.5 - fy).unsqueeze(1)
    x0, y0 = fx.to(torch.int64) - 1, fy.to(torch.int64) - 1
    cols = [(x0 + k).clamp(0, w - 1) for k in range(4)]
    flat = x.to(torch.float64).reshape(n, ch, h * w)

    def along_x(row: Tensor) -> Tensor:
        taps = [flat.gather(2, (row * w + col).view(n, 1, h * w).expand(n, ch, h * w)).view(n, ch, h, w)
                for col in cols]
        return _cubic(*taps, dx)

    rows = [along_x(y0.clamp(0, h - 1))]
    for k in range(1, 4):
        in_image = ((y0 + k >= 0) & (y0 + k < h)).unsqueeze(1)
        rows.append(torch.where(in_image, along_x((y0 + k).clamp(0, h - 1)), rows[-1]))
    v = _cubic(*rows, dy)
    out = torch.where(v <= 0, 0.0, torch.where(v >= 255, 255.0, torch.trunc(v)))
    return torch.where(inside.unsqueeze(1), out, float(fill)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# colour / point ops (float32 in [0, 255] -> float32 integer valued)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Brightness(img).enhance(f)``: ``trunc(clamp(f x, 0, 255))``."""
    _check_float_batch(x, "adjust_brightness", channels=None)
    return _blend(torch.zeros_like(x[:1, :1, :1, :1]), x, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Color`` (torchvision's ``adjust_saturation`` on PIL): blend with the
    8-bit luma ``L`` (:func:`rgb_to_grayscale`), ``trunc(clamp(L + f (x - L), 0, 255))``."""
    _check_float_batch(x, "adjust_saturation")
    return _blend(_luma(x), x, factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Contrast``: blend with the constant ``int(mean(L) + 0.5)`` (the mean of
    the 8-bit luma, rounded half up, computed exactly as ``(2 sum L + N) // 2N``)."""
    _check_float_batch(x, "adjust_contrast")
    n, _, h, w = x.shape
    total = _luma(x).to(torch.int64).sum(dim=(1, 2, 3))
    mean = torch.div(2 * total + h * w, 2 * h * w, rounding_mode="floor")
    return _blend(mean.to(torch.float32).view(n, 1, 1, 1), x, factor)


def adjust_sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` of the image.

    SMOOTH is the 3x3 kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` rounded half up
    (``Filter.c`` adds 0.5 and truncates; ``S / 13`` is never a tie), border pixels copied.
    """
    _check_float_batch(x, "adjust_sharpness", channels=None)
    h, w = x.shape[-2:]
    degenerate = x.clone()
    if h >= 3 and w >= 3:
        rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
        box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
        s = box + 4.0 * x[..., 1:-1, 1:-1]
        # (S + 6.5) / 13 is at least 1/26 away from an integer: floor is exact
        degenerate[..., 1:-1, 1:-1] = torch.floor(_div(s + 6.5, 13.0))
    return _blend(degenerate, x, factor)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """``ImageOps.posterize``: keep the top ``bits`` bits, ``v & ~(2**(8 - bits) - 1)``."""
    _check_float_batch(x, "posterize", channels=None)
    step = torch.pow(2.0, 8.0 - _col(bits, x).to(torch.float32))
    return torch.floor(x / step) * step


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """``ImageOps.solarize``: ``v if v < threshold else 255 - v`` (float32 threshold)."""
    _check_float_batch(x, "solarize", channels=None)
    thr = _col(threshold, x).to(torch.float32)
    return torch.where(x < thr, x, 255.0 - x)


def invert(x: Tensor) -> Tensor:
    """``ImageOps.invert``: ``255 - v``."""
    _check_float_batch(x, "invert", channels=None)
    return 255.0 - x


def autocontrast(x: Tensor) -> Tensor:
    """``ImageOps.autocontrast`` (cutoff 0) per channel: with ``lo``/``hi`` the channel's
    min/max, ``int(v * s + o)`` clipped to [0, 255], ``s = 255 / (hi - lo)``, ``o = -lo s``,
    evaluated in float64 as Pillow's Python code does; constant channels unchanged."""
    _check_float_batch(x, "autocontrast", channels=None)
    lo = x.amin(dim=(2, 3), keepdim=True).to(torch.float64)
    hi = x.amax(dim=(2, 3), keepdim=True).to(torch.float64)
    flat = hi <= lo
    scale = _div(_num(255.0, hi), torch.where(flat, torch.ones_like(hi), hi - lo))
    offset = -lo * scale
    out = torch.trunc(x.to(torch.float64) * scale + offset).clamp_(0.0, 255.0).to(x.dtype)
    return torch.where(flat, x, out)


def equalize(x: Tensor) -> Tensor:
    """``ImageOps.equalize`` per channel: histogram ``h``, ``step = (N - h[max]) // 255``;
    if ``step == 0`` unchanged, else ``lut[i] = (step // 2 + sum(h[:i])) // step`` (clipped
    at 255 as ``Image.point`` does).  Integer exact; histograms by ``scatter_add``."""
    _check_float_batch(x, "equalize", channels=None)
    n, ch, h, w = x.shape
    v = x.reshape(n * ch, h * w).to(torch.int64)
    hist = torch.zeros(n * ch, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, v, torch.ones_like(v))
    top = hist.gather(1, v.amax(dim=1, keepdim=True))
    step = torch.div(h * w - top, 255, rounding_mode="floor")
    below = hist.cumsum(1) - hist
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + below, step.clamp(min=1),
                    rounding_mode="floor").clamp_(max=255)
    identity = torch.arange(256, device=x.device, dtype=torch.int64).expand_as(lut)
    lut = torch.where(step > 0, lut, identity)
    return lut.gather(1, v).to(x.dtype).view(n, ch, h, w)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """``convert('L')`` replicated to 3 channels (torchvision's ``rgb_to_grayscale(img, 3)``
    on PIL): ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16``, exact."""
    _check_float_batch(x, "rgb_to_grayscale")
    return _luma(x).expand(-1, 3, -1, -1).contiguous()


def _rgb_to_hsv8(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pillow's ``rgb2hsv`` (``Convert.c``) on float32 RGB in [0, 255] -> 8-bit H, S, V.

    Mirrors the C mix of float and double: ``s, rc, gc, bc`` float32 divisions, ``h``
    computed in double and stored as float, ``H = int(h * 255.0)``, ``S = int(s * 255.0)``.
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    grey = cr == 0
    crs = torch.where(grey, torch.ones_like(cr), cr)
    s = _div(cr, torch.where(maxc == 0, torch.ones_like(maxc), maxc))
    rc, gc, bc = _div(maxc - r, crs), _div(maxc - g, crs), _div(maxc - b, crs)
    h_r = (bc - gc).to(torch.float64)
    h_g = (2.0 + rc.to(torch.float64) - bc.to(torch.float64)).to(torch.float32).to(torch.float64)
    h_b = (4.0 + gc.to(torch.float64) - rc.to(torch.float64)).to(torch.float32).to(torch.float64)
    hh = torch.where(r == maxc, h_r, torch.where(g == maxc, h_g, h_b))
    hh = torch.fmod(_div(hh, 6.0) + 1.0, 1.0).to(torch.float32).to(torch.float64)
    hue = torch.trunc(hh * 255.0).clamp_(0, 255)
    sat = torch.trunc(s.to(torch.float64) * 255.0).clamp_(0, 255)
    zero = torch.zeros_like(hue)
    return torch.where(grey, zero, hue), torch.where(grey, zero, sat), maxc.to(torch.float64)


def _hsv8_to_rgb(hue: Tensor, sat: Tensor, val: Tensor) -> Tensor:
    """Pillow's ``hsv2rgb`` (``Convert.c``) on 8-bit H, S, V (float64 tensors) -> float32 RGB.

    ``i = floor(6h/255)``, ``f = float(6h/255 - i)``, ``fs = float(s/255)``,
    ``p = round(v (1 - fs))``, ``q = round(v (1 - float(fs f)))``,
    ``t = round(v (1 - fs (1 - f)))`` (C ``round``: half away from zero).
    """
    h6 = _div(hue * 6.0, 255.0)
    i = torch.floor(h6)
    f = (h6 - i).to(torch.float32)
    fs = _div(sat, 255.0).to(torch.float32)
    fs64, f64 = fs.to(torch.float64), f.to(torch.float64)
    p = _round_half_away(val * (1.0 - fs64)).clamp_(0, 255)
    q = _round_half_away(val * (1.0 - (fs * f).to(torch.float64))).clamp_(0, 255)
    t = _round_half_away(val * (1.0 - fs64 * (1.0 - f64))).clamp_(0, 255)
    sec = torch.remainder(i, 6.0)
    # C switch (i % 6) -> (R, G, B) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    red = torch.where((sec == 0) | (sec == 5), val,
                      torch.where(sec == 1, q, torch.where(sec == 4, t, p)))
    green = torch.where((sec == 1) | (sec == 2), val,
                        torch.where(sec == 0, t, torch.where(sec == 3, q, p)))
    blue = torch.where((sec == 3) | (sec == 4), val,
                       torch.where(sec == 2, t, torch.where(sec == 5, q, p)))
    out = torch.stack([red, green, blue], 1)
    out = torch.where((sat == 0).unsqueeze(1), val.unsqueeze(1), out)
    return out.to(torch.float32)


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` on PIL: ``convert('HSV')``, ``H += uint8(int(f * 255))``
    (mod 256), ``convert('RGB')``; reproduces Pillow's 8-bit HSV conversions exactly."""
    _check_float_batch(x, "adjust_hue")
    shift = torch.remainder(torch.trunc(factor.to(x.device, torch.float64) * 255.0), 256.0)
    hue, sat, val = _rgb_to_hsv8(x)
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 256.0)
    return _hsv8_to_rgb(hue, sat, val)


# --------------------------------------------------------------------------------------------
# Gaussian blur (Pillow's ImageFilter.GaussianBlur: 3 extended box blurs)


def _pil_box_radius(sigma: Tensor, passes: int = 3) -> Tensor:
    """Pillow's ``_gaussian_blur_radius`` (``BoxBlur.c``): the fractional radius of an
    extended box whose ``passes``-fold repetition has variance ``sigma**2`` (Gwosdek et al.,
    2011).  C float/double mix reproduced: ``s2 = sigma^2 / passes`` (float),
    ``L = float(sqrt(12 s2 + 1))``, ``l = floor((L - 1) / 2)``,
    ``a = (2l + 1)(l(l + 1) - 3 s2) / (6 (s2 - (l + 1)^2))``, radius ``l + a`` (float)."""
    s = sigma.to(torch.float32)
    s2 = _div(s * s, float(passes))
    big_l = torch.sqrt(12.0 * s2.to(torch.float64) + 1.0).to(torch.float32)
    small_l = torch.floor(_div(big_l.to(torch.float64) - 1.0, 2.0)).to(torch.float32)
    a = (2 * small_l + 1) * (small_l * (small_l + 1) - 3 * s2)
    a = _div(a, 6 * (s2 - (small_l + 1) * (small_l + 1)))
    return small_l + a


def _box_weights(r: Tensor, ww: Tensor, fw: Tensor, max_radius: int) -> list[Tensor]:
    """Per-image tap weights for offsets ``-(R+1) .. R+1``: ``ww`` inside the box
    (``|k| <= r``), ``fw`` on its two fractional ends (``|k| = r + 1``), else 0."""
    n = r.shape[0]
    zero = torch.zeros_like(ww)
    out = []
    for k in range(-max_radius - 1, max_radius + 2):
        wk = torch.where(r >= abs(k), ww, torch.where(r + 1 == abs(k), fw, zero))
        out.append(wk.view(n, 1, 1, 1))
    return out


def _box_pass(v: Tensor, weights: list[Tensor]) -> Tensor:
    """One ``ImagingHorizontalBoxBlur`` pass along the last dim (int64 in, int64 out).

    ``out[x] = (ww * sum_{|k|<=r} v[x+k] + fw * (v[x-r-1] + v[x+r+1]) + 2**23) >> 24``, edge
    pixels replicated (Pillow's running sum gives the same integers).
    """
    k = len(weights) // 2
    w = v.shape[-1]
    ext = torch.cat([v[..., :1].expand(*v.shape[:-1], k), v,
                     v[..., -1:].expand(*v.shape[:-1], k)], -1)
    acc = ext[..., 0:w] * weights[0]
    for i in range(1, len(weights)):
        acc = acc + ext[..., i:i + w] * weights[i]
    return (acc + (1 << 23)) >> 24


def gaussian_blur(x: Tensor, sigma: Tensor, max_sigma: float | None = None, passes: int = 3) -> Tensor:
    """Pillow's ``img.filter(ImageFilter.GaussianBlur(radius=sigma))`` per image.

    Three passes of an extended box blur along x, then three along y (``BoxBlur.c``), each
    in 8.24 fixed point and rounded to uint8: ``rf`` from :func:`_pil_box_radius`,
    ``r = int(rf)``, ``ww = uint(2**24 / (2 rf + 1))`` (float32 division),
    ``fw = (2**24 - (2 r + 1) ww) // 2``.  Effective standard deviation about ``sigma``
    (variance matched), unlike torchvision's 3x3 kernel.  ``max_sigma``: a host-side upper
    bound of ``sigma`` that sets the number of taps; by default it is read from ``sigma``
    (a device synchronisation if ``sigma`` lives on a GPU, so recipes pass it).
    """
    _check_float_batch(x, "gaussian_blur", channels=None)
    if max_sigma is None:
        host = sigma.detach().to("cpu", torch.float32).numpy()
        max_sigma = float(host.max()) if host.size else 0.0
    # the radius grows with sigma, so the bound's radius bounds every image's (r <= sigma)
    max_radius = int(np.trunc(_pil_box_radius(torch.tensor([max_sigma]), passes).numpy()[0]))
    rf = _pil_box_radius(sigma.to(x.device), passes)
    r = rf.to(torch.int64).clamp(max=max_radius)
    ww = _div(_num(16777216.0, rf), rf * 2 + 1).to(torch.int64)
    fw = torch.div((1 << 24) - (2 * r + 1) * ww, 2, rounding_mode="floor")
    weights = _box_weights(r, ww, fw, max_radius)
    v = x.to(torch.int64)
    for _ in range(passes):
        v = _box_pass(v, weights)
    v = v.transpose(-1, -2).contiguous()
    for _ in range(passes):
        v = _box_pass(v, weights)
    return v.transpose(-1, -2).to(x.dtype).contiguous()


# --------------------------------------------------------------------------------------------
# crops, flips, cutout, normalisation


def _bilinear_coeffs(in_size: Tensor, out_size: int, max_in: int) -> tuple[Tensor, Tensor]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for BILINEAR (``Resample.c``).

    ``in_size`` ``(n,)``; returns source offsets ``(n, out, K)`` (relative to the box) and
    int32 weights in 1.22 fixed point, ``K`` from the largest possible box ``max_in``.
    """
    dev = in_size.device
    scale = _div(in_size.to(torch.float64).view(-1, 1), float(out_size))
    filterscale = scale.clamp(min=1.0)
    support = 1.0 * filterscale
    k = int(math.ceil(max(1.0, max_in / out_size))) * 2 + 1
    xx = torch.arange(out_size, device=dev, dtype=torch.float64).view(1, -1)
    center = (xx + 0.5) * scale
    ss = _div(_num(1.0, filterscale), filterscale)
    xmin = torch.trunc(center - support + 0.5).clamp(min=0.0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5),
                         in_size.to(torch.float64).view(-1, 1)) - xmin
    weights, total = [], torch.zeros_like(center)
    for t in range(k):  # sequential sum, as in the C loop
        arg = ((t + xmin) - center + 0.5) * ss
        wt = torch.where((t < xmax) & (arg.abs() < 1.0), 1.0 - arg.abs(), torch.zeros_like(arg))
        weights.append(wt)
        total = total + wt
    wts = torch.stack(weights, -1)
    wts = torch.where(total.unsqueeze(-1) != 0, _div(wts, total.unsqueeze(-1)), wts)
    kint = torch.trunc(0.5 + wts * float(1 << 22)).to(torch.int32)
    offs = xmin.unsqueeze(-1) + torch.arange(k, device=dev, dtype=torch.float64)
    offs = torch.minimum(offs, (in_size.to(torch.float64) - 1).view(-1, 1, 1))
    return offs.to(torch.int64), kint


def _resample_last(v: Tensor, start: Tensor, size: Tensor, out_size: int) -> Tensor:
    """One Pillow 8-bit resampling pass along the last dim of int32 ``v`` over the window
    ``[start, start + size)``: ``clip8((2**21 + sum v k) >> 22)``."""
    n, ch, h, w = v.shape
    offs, kint = _bilinear_coeffs(size, out_size, w)
    k = offs.shape[-1]
    src = (offs + start.view(n, 1, 1)).unsqueeze(1).unsqueeze(1)  # (n, 1, 1, out, K)
    kk = kint.unsqueeze(1).unsqueeze(1)
    acc = None
    for t in range(k):
        tap = v.gather(-1, src[..., t].expand(n, ch, h, out_size)) * kk[..., t]
        acc = tap + (1 << 21) if acc is None else acc + tap
    return (acc >> 22).clamp_(0, 255)


def resized_crop(x: Tensor, boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """torchvision's ``resized_crop`` on PIL: ``img.crop(box).resize(size, BILINEAR)``.

    ``boxes`` ``(n, 4)`` integer ``(top, left, height, width)`` inside the image.  Pillow's
    separable resampling (triangle filter, support scaled when downsampling, edge taps
    renormalised), horizontal pass then vertical pass, each in 1.22 fixed point rounded to
    uint8, as in ``Resample.c``.
    """
    _check_float_batch(x, "resized_crop", channels=None)
    b = boxes.to(x.device, torch.int64)
    oh, ow = int(size[0]), int(size[1])
    v = x.to(torch.int32)
    v = _resample_last(v, b[:, 1], b[:, 3], ow)                       # horizontal
    v = _resample_last(v.transpose(-1, -2), b[:, 0], b[:, 2], oh)     # vertical
    return v.transpose(-1, -2).to(torch.float32).contiguous()


def hflip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images where ``flip`` ``(n,)`` is true."""
    return torch.where(_col(flip, x).to(torch.bool), x.flip(-1), x)


def pad_crop(x: Tensor, offsets: Tensor, padding: int, flip: Tensor | None = None) -> Tensor:
    """``RandomCrop(size=(H, W), padding, fill 0)`` with given offsets, then optional flip.

    ``offsets`` ``(n, 2)`` ``(top, left)`` in the padded image (``0 .. 2 padding``):
    ``out[y, x] = img[y + top - padding, x + left - padding]`` (0 outside); ``flip`` mirrors
    the crop.  One gather for both.
    """
    _check_float_batch(x, "pad_crop", channels=None)
    n, ch, h, w = x.shape
    off = offsets.to(x.device, torch.int64)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    if flip is not None:
        xs = torch.where(flip.to(x.device, torch.bool).view(n, 1, 1), w - 1 - xs, xs)
    yin = ys + off[:, 0].view(n, 1, 1) - padding
    xin = xs + off[:, 1].view(n, 1, 1) - padding
    valid = (yin >= 0) & (yin < h) & (xin >= 0) & (xin < w)
    src = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, ch, h * w)
    out = x.reshape(n, ch, h * w).gather(2, src).view(n, ch, h, w)
    return out * valid.view(n, 1, h, w)


def cutout(x: Tensor, centres: Tensor, size: int) -> Tensor:
    """:class:`.transforms.Cutout` per image: zero rows ``y - size//2 .. y - size//2 + size - 1``
    and the same columns around ``centres`` ``(n, 2)`` ``(y, x)``, clipped at the border."""
    n, _, h, w = x.shape
    c = centres.to(x.device, torch.int64)
    y1 = (c[:, 0] - size // 2).view(n, 1, 1, 1)
    x1 = (c[:, 1] - size // 2).view(n, 1, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, 1, w)
    hole = (ys >= y1) & (ys < y1 + size) & (xs >= x1) & (xs < x1 + size)
    return x.masked_fill(hole, 0.0)


def to_unit(x: Tensor) -> Tensor:
    """``ToTensor`` scaling: ``x / 255`` in float32 (a true division, as on the CPU)."""
    return _div(x.to(torch.float32), 255.0)


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """``Normalize``: ``(x - mean) / std`` per channel in float32, as torchvision does."""
    m = torch.as_tensor(mean, dtype=torch.float32).to(x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).to(x.device).view(1, -1, 1, 1)
    return _div(x - m, s)


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
            out[name] = bufs[kind][start:start + count].view(shape)
        return out


def _check_call(images, generator) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, 3, H, W) uint8, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 in [0, 255] (the raw pixels), got {images.dtype}; "
                         "pass the uint8 batch, the recipe scales and normalises itself")
    if images.dim() != 4:
        raise ValueError(f"images must be 4-D (B, 3, H, W), got shape {tuple(images.shape)}; "
                         "add a batch dimension or permute HWC data to CHW")
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels (RGB) in dim 1, got shape "
                         f"{tuple(images.shape)}; permute (B, H, W, 3) data to (B, 3, H, W)")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a CPU torch.Generator, got {type(generator).__name__}; "
                        "create one with torch.Generator().manual_seed(seed)")
    if generator.device.type != "cpu":
        raise TypeError(f"generator must live on the CPU (parameters are drawn on the host), "
                        f"got one on {generator.device}; use torch.Generator(device='cpu')")


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

    def __init__(self, cutout: int = 16, mean: Sequence[float] = CIFAR_MEAN,
                 std: Sequence[float] = CIFAR_STD, padding: int = 4, fill: float = 128.0,
                 autoaugment: str = "reference") -> None:
        if autoaugment not in AUTOAUGMENT_POLICIES:
            raise ValueError(f"unknown AutoAugment policy {autoaugment!r}; choose one of "
                             f"{', '.join(AUTOAUGMENT_POLICIES)}")
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
            crop=crop.numpy(), flip=flip.numpy(), sub_policy=sub.numpy(), probs=probs.numpy(),
            signs=signs.numpy(), cutout=np.stack([cy.numpy(), cx.numpy()], 1),
            height=height, width=width, policy=self.autoaugment)

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
                    pack.add(key + "_fix", _fixed_point(torch.from_numpy(mats[~bicubic])).numpy(), "i")
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
        "Brightness": adjust_brightness, "Color": adjust_saturation,
        "Contrast": adjust_contrast, "Sharpness": adjust_sharpness,
        "Posterize": posterize, "Solarize": solarize,
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
                sub = _affine_fixed(sub, dev[key + "_fix"], self.fill)
            elif name == "bicubic":
                sub = affine_bicubic(sub, dev[key + "_mat"].view(torch.float64), self.fill)
            elif name in self._POINT_OPS:
                sub = self._POINT_OPS[name](sub, dev[key + "_arg"])
            else:
                sub = self._PLAIN_OPS[name](sub)
            x = x.index_copy(0, idx, sub)
        return x, dev

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(crop pad {self.padding} -> hflip -> AutoAugment(CIFAR10, "
                f"{self.autoaugment}, fill={self.fill:g}) -> cutout={self.cutout} -> "
                f"normalize(mean={self.mean}, std={self.std}))")


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


def _sample_resized_crop(batch: int, height: int, width: int, scale: tuple[float, float],
                         ratio: tuple[float, float], g: torch.Generator) -> np.ndarray:
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

    def __init__(self, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD,
                 scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 p_jitter: float = 0.8, p_gray: float = 0.2, p_blur: float = 0.5,
                 sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.mean, self.std = _stats(mean, std)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.jitter = tuple(float(j) for j in jitter)
        self.p_jitter, self.p_gray, self.p_blur = float(p_jitter), float(p_gray), float(p_blur)
        self.sigma = tuple(float(s) for s in sigma)

    def sample(self, batch: int, height: int, width: int,
               generator: torch.Generator) -> CifarContrastiveParams:
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
            boxes=boxes, flip=flip.numpy(), jitter=jitter.numpy(), factors=factors.numpy(),
            order=order.numpy(), gray=gray.numpy(), blur=blur.numpy(), sigma=sigma.numpy())

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
            blurred = gaussian_blur(x.index_select(0, idx), dev["blur_sigma"],
                                    max_sigma=float(p.sigma[blur].max()))
            x = x.index_copy(0, idx, blurred)
        return normalize(to_unit(x), dev["mean"], dev["std"])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(resized_crop(scale={self.scale}) -> hflip -> "
                f"color_jitter{self.jitter} p={self.p_jitter} -> grayscale p={self.p_gray} -> "
                f"pil_gaussian_blur(sigma={self.sigma}) p={self.p_blur} -> "
                f"normalize(mean={self.mean}, std={self.std}))")


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
