"""AutoAugment's CIFAR-10 policy (Cubuk et al., CVPR 2019) in the two forms a run can choose
(``data.autoaugment``), per image on PIL images; :mod:`.batch_augment` has their batched twins.

Both draw one of the same 25 sub-policies uniformly per image and apply each of its two
operations with the sub-policy's probability; they differ in the operations' details:

* ``reference`` (default): the per-image policy of the DBM code (and of the long-tailed codes
  it builds on), on which the paper's CIFAR numbers were trained. Magnitude bins (10 levels,
  float64): shear ``linspace(0, 0.3)`` resampled **bicubic**; translate ``linspace(0, 150/331)``
  times the image side, a fractional shift that nearest sampling rounds to
  ``floor(shift + 0.5)`` pixels (up to 15 at 32 px); rotate ``linspace(0, 30)`` degrees,
  **always counter-clockwise**; colour / contrast / sharpness / brightness factor
  ``1 +- linspace(0, 0.9)``; posterize ``round(linspace(8, 4))`` bits; solarize threshold
  ``linspace(256, 0)``. Random sign for shear, translate and the four enhancements; fill 128.
* ``torchvision``: ``torchvision.transforms.AutoAugment(CIFAR10, fill=128)``: nearest
  resampling everywhere, translations truncated to whole pixels (``int(shift)``: up to 14),
  rotation by ``+-`` the angle, solarize thresholds ``linspace(255, 0)``, float32 bins.

The reference policy translates about one pixel further and so brings in more fill (about
5.4 % of the pixels of an augmented CIFAR batch against 4.4 %).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms as T
from torchvision.transforms import AutoAugmentPolicy

__all__ = [
    "AUTOAUGMENT_POLICIES",
    "CIFAR10_SUB_POLICIES",
    "ReferenceAutoAugment",
    "autoaugment_transform",
    "reference_magnitudes",
    "reference_op",
]

#: ``data.autoaugment`` values: the DBM code's per-image policy, or torchvision's.
AUTOAUGMENT_POLICIES = ("reference", "torchvision")

#: The 25 sub-policies of AutoAugment's CIFAR-10 policy, each two ``(op, probability, bin)``
#: stages (``bin`` None for ops without a magnitude). Both policies use this table; it is read
#: from torchvision, whose table is the paper's.
CIFAR10_SUB_POLICIES: tuple = tuple(
    tuple(tuple(stage) for stage in sub) for sub in T.AutoAugment(AutoAugmentPolicy.CIFAR10).policies
)

#: Ops whose magnitude takes a random sign in the reference policy (rotation does not).
_REFERENCE_SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Brightness", "Color", "Contrast", "Sharpness"}
)


def reference_magnitudes(height: int, width: int) -> dict[str, tuple[np.ndarray, bool]]:
    """``op -> (value of each of the 10 bins (float64), takes a random sign)`` of the reference
    policy for ``height x width`` images. Translations are in pixels, rotations in degrees,
    the four enhancements are the ``m`` of the factor ``1 +- m``; ops without a magnitude
    (autocontrast, equalize, invert) get zeros."""
    zeros = np.zeros(10)
    translate = np.linspace(0.0, 150.0 / 331.0, 10)
    values = {
        "ShearX": np.linspace(0.0, 0.3, 10),
        "ShearY": np.linspace(0.0, 0.3, 10),
        "TranslateX": translate * width,
        "TranslateY": translate * height,
        "Rotate": np.linspace(0.0, 30.0, 10),
        "Brightness": np.linspace(0.0, 0.9, 10),
        "Color": np.linspace(0.0, 0.9, 10),
        "Contrast": np.linspace(0.0, 0.9, 10),
        "Sharpness": np.linspace(0.0, 0.9, 10),
        "Posterize": np.round(np.linspace(8.0, 4.0, 10)),
        "Solarize": np.linspace(256.0, 0.0, 10),
        "AutoContrast": zeros,
        "Equalize": zeros,
        "Invert": zeros,
    }
    return {op: (v.astype(np.float64), op in _REFERENCE_SIGNED) for op, v in values.items()}


def reference_op(img: Image.Image, op: str, value: float, fill: tuple[int, ...] = (128, 128, 128)) -> Image.Image:
    """One operation of the reference policy on a PIL image, with its signed ``value``.

    Geometric ops map output pixel ``(x, y)`` to input ``(x + value, y)`` (TranslateX),
    ``(x + value * y, y)`` (ShearX, bicubic) and their Y twins, Pillow's affine convention;
    ``Rotate`` turns counter-clockwise by ``value`` degrees about the centre (nearest).
    Enhancements use the factor ``1 + value``; Posterize keeps ``int(value)`` bits; Solarize
    inverts the values at or above ``value``.
    """
    size = img.size
    if op == "ShearX":
        return img.transform(size, Image.AFFINE, (1, value, 0, 0, 1, 0), Image.BICUBIC, fillcolor=fill)
    if op == "ShearY":
        return img.transform(size, Image.AFFINE, (1, 0, 0, value, 1, 0), Image.BICUBIC, fillcolor=fill)
    if op == "TranslateX":
        return img.transform(size, Image.AFFINE, (1, 0, value, 0, 1, 0), Image.NEAREST, fillcolor=fill)
    if op == "TranslateY":
        return img.transform(size, Image.AFFINE, (1, 0, 0, 0, 1, value), Image.NEAREST, fillcolor=fill)
    if op == "Rotate":
        return img.rotate(value, Image.NEAREST, fillcolor=fill)
    enhancers = {
        "Brightness": ImageEnhance.Brightness,
        "Color": ImageEnhance.Color,
        "Contrast": ImageEnhance.Contrast,
        "Sharpness": ImageEnhance.Sharpness,
    }
    if op in enhancers:
        return enhancers[op](img).enhance(1.0 + value)
    if op == "Posterize":
        return ImageOps.posterize(img, int(value))
    if op == "Solarize":
        return ImageOps.solarize(img, value)
    plain = {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}
    if op in plain:
        return plain[op](img)
    raise ValueError(f"unknown AutoAugment op {op!r}")


class ReferenceAutoAugment:
    """The reference CIFAR-10 policy on one PIL image (see the module docstring).

    Per image, from torch's default generator (so a loader's per-batch seeding applies): the
    sub-policy ``randint(25)``, then for each of its two stages a uniform draw (the op is
    applied when it is below the stage's probability) and a sign (``randint(2)``: 0 negative).
    """

    def __init__(self, fill: int = 128) -> None:
        self.fill = (int(fill),) * 3
        self._tables: dict[tuple[int, int], dict] = {}

    def _table(self, width: int, height: int) -> dict:
        if (width, height) not in self._tables:
            self._tables[(width, height)] = reference_magnitudes(height, width)
        return self._tables[(width, height)]

    @staticmethod
    def sample() -> tuple[int, list[float], list[int]]:
        """One image's draws: ``(sub-policy, [uniform draw of each stage], [sign of each
        stage])``, from torch's default generator."""
        sub = int(torch.randint(len(CIFAR10_SUB_POLICIES), ()))
        return sub, torch.rand(2, dtype=torch.float64).tolist(), torch.randint(2, (2,)).tolist()

    def apply(self, img: Image.Image, sub: int, draws: Sequence[float], signs: Sequence[int]) -> Image.Image:
        """Sub-policy ``sub`` on ``img``: stage ``i`` applied when ``draws[i]`` is below its
        probability, with a negative value when ``signs[i]`` is 0 (for the signed ops)."""
        if not isinstance(img, Image.Image):
            raise TypeError(f"ReferenceAutoAugment expects a PIL image, got {type(img).__name__}")
        table = self._table(*img.size)
        for (op, p, level), u, sign in zip(CIFAR10_SUB_POLICIES[sub], draws, signs):
            if u < p:
                values, signed = table[op]
                value = float(values[level or 0])
                img = reference_op(img, op, -value if signed and sign == 0 else value, self.fill)
        return img

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.apply(img, *self.sample())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy=CIFAR10, fill={self.fill[0]})"


def autoaugment_transform(policy: str = "reference", fill: int = 128) -> Any:
    """The per-image CIFAR-10 AutoAugment of ``policy`` (:data:`AUTOAUGMENT_POLICIES`)."""
    if policy == "reference":
        return ReferenceAutoAugment(fill)
    if policy == "torchvision":
        return T.AutoAugment(AutoAugmentPolicy.CIFAR10, fill=fill)
    raise ValueError(f"unknown AutoAugment policy {policy!r}; choose one of {', '.join(AUTOAUGMENT_POLICIES)}")
