"""RandAugment as timm's ``rand_augment_transform`` (the classification view of BCL / GML at
ImageNet scale: ``"rand-n2-m10-mstd0.5"``): an own PIL implementation of the same operations
and draws, used whether timm is installed or not (importing timm takes seconds in every
process); timm's own transform with ``use_timm=True``.

Semantics (timm's, which the BCL code uses): ``n`` operations per image drawn uniformly with
replacement from the 15 below; each is applied with probability ``p`` (0.5); its magnitude is
``m`` plus Gaussian noise of std ``mstd``, clipped to [0, 10] (``mmax``); then

=================  ===========================================================================
AutoContrast       ``ImageOps.autocontrast``
Equalize           ``ImageOps.equalize``
Invert             ``ImageOps.invert``
Rotate             ``m/10 * 30`` degrees, sign random
Posterize          keep ``int(m/10 * 4)`` bits
Solarize           threshold ``int(m/10 * 256)``
SolarizeAdd        add ``int(m/10 * 110)`` to values below 128
Color, Contrast,   ``ImageEnhance`` factor ``m/10 * 1.8 + 0.1``
Brightness,
Sharpness
ShearX, ShearY     shear ``m/10 * 0.3``, sign random
TranslateXRel/Y    ``m/10 * 0.45`` of the width / height, sign random (101 px at 224 px and
                   m = 10, what BCL's ``translate_const`` 100 aims at; timm's *Rel* ops use
                   the fraction, not the constant)
=================  ===========================================================================

The geometric operations fill with ``fill`` (BCL: the ImageNet mean in 0-255, (124, 116, 104))
and resample with bilinear or bicubic interpolation drawn at random. The draws use Python's
``random`` and NumPy's global generator in timm's order, so with the same seeds this gives
the same images as timm (tested for several configurations). One difference: a magnitude
that keeps no bit in Posterize (``mstd`` above 100 draws magnitudes down to 0) gives a black
image here, where timm fails under Pillow 12 and later.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ..errors import MissingDependencyError

__all__ = ["RAND_AUGMENT_OPS", "RandAugmentPIL", "parse_rand_augment", "rand_augment"]

RAND_AUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_LEVEL_MAX = 10.0
_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def parse_rand_augment(config: str) -> dict:
    """``"rand-n2-m10-mstd0.5"`` -> ``{"n": 2, "m": 10, "mstd": 0.5, "p": 0.5, "mmax": 10}``."""
    parts = config.split("-")
    if not parts or parts[0] != "rand":
        raise ValueError(f"a RandAugment config starts with 'rand', got {config!r}")
    out: dict[str, Any] = {"n": 2, "m": 10, "mstd": 0.0, "p": 0.5, "mmax": _LEVEL_MAX}
    for part in parts[1:]:
        pieces = re.split(r"(\d.*)", part)
        if len(pieces) < 2:
            continue
        key, value = pieces[0], pieces[1]
        if key == "mstd":
            out["mstd"] = float(value) if float(value) <= 100 else math.inf
        elif key == "m":
            out["m"] = int(value)
        elif key == "n":
            out["n"] = int(value)
        elif key == "p":
            out["p"] = float(value)
        elif key == "mmax":
            out["mmax"] = float(int(value))
        else:
            raise ValueError(f"unknown RandAugment config section {part!r} in {config!r} (known: n, m, mstd, p, mmax)")
    return out


def _negate(value: float) -> float:
    return -value if random.random() > 0.5 else value


def _affine(img: Image.Image, matrix: tuple, fill: tuple) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=random.choice(_RESAMPLE), fillcolor=fill)


def _solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    if img.mode not in ("L", "RGB"):
        return img
    return img.point(lut * (3 if img.mode == "RGB" else 1))


def _apply(name: str, img: Image.Image, level: float, fill: tuple, translate_pct: float) -> Image.Image:
    """Operation ``name`` at magnitude ``level`` (0-10); draws signs and interpolation from
    Python's ``random`` in timm's order (sign first)."""
    x = level / _LEVEL_MAX
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        degrees = _negate(x * 30.0)
        return img.rotate(degrees, resample=random.choice(_RESAMPLE), fillcolor=fill)
    if name == "Posterize":
        bits = int(x * 4)
        if bits <= 0:  # no bit kept: black (Pillow >= 12 refuses 0 bits; timm then fails)
            return Image.new(img.mode, img.size)
        return img if bits >= 8 else ImageOps.posterize(img, bits)
    if name == "Solarize":
        return ImageOps.solarize(img, int(x * 256))
    if name == "SolarizeAdd":
        return _solarize_add(img, int(x * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(x * 1.8 + 0.1)
    if name == "ShearX":
        return _affine(img, (1, _negate(x * 0.3), 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, _negate(x * 0.3), 1, 0), fill)
    if name == "TranslateXRel":
        pixels = _negate(x * translate_pct) * img.size[0]
        return _affine(img, (1, 0, pixels, 0, 1, 0), fill)
    if name == "TranslateYRel":
        pixels = _negate(x * translate_pct) * img.size[1]
        return _affine(img, (1, 0, 0, 0, 1, pixels), fill)
    raise ValueError(f"unknown RandAugment operation {name!r}")


class RandAugmentPIL:
    """timm's RandAugment (``rand_augment_transform``) re-implemented on PIL images; see the
    module docstring. ``ops`` defaults to the 15 operations of timm's standard set."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 10,
        magnitude_std: float = 0.0,
        prob: float = 0.5,
        magnitude_max: float = _LEVEL_MAX,
        fill: Sequence[int] = (128, 128, 128),
        translate_pct: float = 0.45,
        ops: Sequence[str] = RAND_AUGMENT_OPS,
    ) -> None:
        unknown = [o for o in ops if o not in RAND_AUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment operation(s) {unknown}; known: {', '.join(RAND_AUGMENT_OPS)}")
        self.num_ops, self.magnitude, self.magnitude_std = int(num_ops), float(magnitude), float(magnitude_std)
        self.prob, self.magnitude_max = float(prob), float(magnitude_max)
        self.fill = tuple(int(v) for v in fill)
        self.translate_pct = float(translate_pct)
        self.ops = tuple(ops)

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"RandAugmentPIL expects a PIL image, got {type(img).__name__}")
        chosen = np.random.randint(0, len(self.ops), size=self.num_ops)  # = np.random.choice(ops, n)
        for k in chosen:
            if self.prob < 1.0 and random.random() > self.prob:
                continue
            level = self.magnitude
            if self.magnitude_std == math.inf:
                level = random.uniform(0, level)
            elif self.magnitude_std > 0:
                level = random.gauss(level, self.magnitude_std)
            level = max(0.0, min(level, self.magnitude_max))
            img = _apply(self.ops[int(k)], img, level, self.fill, self.translate_pct)
        return img

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.num_ops}, m={self.magnitude}, mstd={self.magnitude_std}, "
            f"p={self.prob}, fill={self.fill})"
        )


def rand_augment(
    config: str = "rand-n2-m10-mstd0.5",
    fill: Sequence[int] = (124, 116, 104),
    translate_const: int = 100,
    use_timm: bool = False,
) -> Callable[[Image.Image], Image.Image]:
    """RandAugment ``config`` (timm's syntax) on PIL images: :class:`RandAugmentPIL`, or with
    ``use_timm=True`` timm's ``rand_augment_transform(config, {"translate_const": ...,
    "img_mean": fill})``, which draws the same."""
    params = parse_rand_augment(config)
    if use_timm:
        try:
            from timm.data.auto_augment import rand_augment_transform
        except ImportError:
            raise MissingDependencyError(
                "rand_augment(use_timm=True) needs timm: pip install 'dbm-ltr[timm]'"
            ) from None
        return rand_augment_transform(config, {"translate_const": int(translate_const), "img_mean": tuple(fill)})
    return RandAugmentPIL(params["n"], params["m"], params["mstd"], params["p"], params["mmax"], fill)
