"""Pixel operations on whole batches for the batched recipes of :mod:`.batch_augment`: Pillow's
geometry (nearest and bicubic affine transforms), colour and point operations, Gaussian blur,
bilinear resized crops, flips, Cutout and normalisation, each on a ``(n, C, H, W)`` float batch
with per-image parameters, on the batch's device.

The PIL recipes run on PIL images, so every op here reproduces Pillow's own
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
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "adjust_sharpness",
    "affine_bicubic",
    "affine_fixed",
    "affine_nearest",
    "autocontrast",
    "cutout",
    "equalize",
    "fixed_point",
    "gaussian_blur",
    "hflip",
    "invert",
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

#: The geometric AutoAugment ops (an affine transform of the image).
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


# --------------------------------------------------------------------------------------------
# small helpers


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Per-image parameter ``(n,)`` -> ``(n, 1, 1, 1)`` on ``like``'s device."""
    return v.to(like.device).reshape(-1, 1, 1, 1)


def _check_float_batch(x: Tensor, name: str, channels: int | None = 3) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"{name} expects a float (n, C, H, W) tensor with values in [0, 255], "
            f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}"
        )
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
    raise ValueError(f"not a geometric AutoAugment op: {op!r}; use one of {GEOMETRIC_OPS}")


def fixed_point(matrix: Tensor) -> Tensor:
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


def affine_fixed(x: Tensor, fixed: Tensor, fill: float) -> Tensor:
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
    return affine_fixed(x, fixed_point(matrix.to(x.device)), fill)


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
    raise ValueError(f"not a geometric AutoAugment op: {op!r}; use one of {GEOMETRIC_OPS}")


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
        taps = [
            flat.gather(2, (row * w + col).view(n, 1, h * w).expand(n, ch, h * w)).view(n, ch, h, w) for col in cols
        ]
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
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + below, step.clamp(min=1), rounding_mode="floor").clamp_(
        max=255
    )
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
    red = torch.where((sec == 0) | (sec == 5), val, torch.where(sec == 1, q, torch.where(sec == 4, t, p)))
    green = torch.where((sec == 1) | (sec == 2), val, torch.where(sec == 0, t, torch.where(sec == 3, q, p)))
    blue = torch.where((sec == 3) | (sec == 4), val, torch.where(sec == 2, t, torch.where(sec == 5, q, p)))
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
    ext = torch.cat([v[..., :1].expand(*v.shape[:-1], k), v, v[..., -1:].expand(*v.shape[:-1], k)], -1)
    acc = ext[..., 0:w] * weights[0]
    for i in range(1, len(weights)):
        acc = acc + ext[..., i : i + w] * weights[i]
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
    xmax = torch.minimum(torch.trunc(center + support + 0.5), in_size.to(torch.float64).view(-1, 1)) - xmin
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
    v = _resample_last(v, b[:, 1], b[:, 3], ow)  # horizontal
    v = _resample_last(v.transpose(-1, -2), b[:, 0], b[:, 2], oh)  # vertical
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
