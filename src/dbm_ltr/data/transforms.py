"""CIFAR augmentation recipes: the regular recipe of the DBM code and the contrastive view of
the BCL / NCL code.

* ``cifar``: RandomCrop(32, pad 4, zero fill) -> HFlip -> AutoAugment(CIFAR10, fill 128)
  -> ToTensor -> Cutout(16) -> Normalize. ``autoaugment``: the DBM code's per-image policy
  (``"reference"``, default) or torchvision's (``"torchvision"``), see :mod:`.autoaugment`.
* ``cifar_contrastive`` (SimCLR-style view): RandomResizedCrop(32, scale 0.2-1) -> HFlip
  -> ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 -> Grayscale p 0.2
  -> Gaussian blur (PIL's filter, sigma uniform in 0.1-2) with p 0.5 -> ToTensor -> Normalize,
  as the BCL and NCL code (MoCo v2's recipe). torchvision's ``GaussianBlur`` needs a kernel
  size; at size 3 it caps the effective blur at about 0.8 px even at sigma 2.
* ``cifar_test``: ToTensor -> Normalize.
* ``none``: PIL image / ndarray -> tensor (ToTensor); tensors pass through unchanged.

Normalisation uses mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010), the values of
the LDAM-DRW / DBM code.

Large-scale recipes (ImageNet-LT and Places-LT: ``imagenet_*``, ImageNet's mean and std;
iNaturalist 2018: ``inat_*``, mean (0.466, 0.471, 0.380), std (0.195, 0.194, 0.192)), as the
BCL code at ImageNet scale:

* ``*_train``: RandomResizedCrop(224) -> HFlip -> ToTensor -> Normalize.
* ``*_test``: Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize.
* ``*_randaug`` (BCL / GML classification view): RandomResizedCrop(224) -> HFlip ->
  ColorJitter(0.4, 0.4, 0.4, 0) -> RandAugment ``rand-n2-m10-mstd0.5`` (timm's operations and
  draws, without importing timm: :mod:`dbm_ltr.data.randaugment`; fill = ImageNet's mean in 0-255,
  for iNaturalist too, as the original code) ->
  ToTensor -> Normalize.
* ``*_contrastive`` (BCL views 2-3): RandomResizedCrop(224) -> HFlip -> ColorJitter(0.4, 0.4,
  0.4, 0.1) with p 0.8 -> Grayscale p 0.2 -> ToTensor -> Normalize (no blur).
* ``*_randaug_stack`` (GML views 2-3, the GML code's ``randnclsstack``): ``*_randaug`` with
  Grayscale p 0.2 and Gaussian blur (sigma 0.1-2) p 0.5 between ColorJitter and RandAugment.

Their first step decodes an undecoded JPEG (:class:`~dbm_ltr.data.fastjpeg.EncodedImage`, what
the split-file data sets hand them) at reduced size where the crop allows
(:mod:`dbm_ltr.data.fastjpeg`); PIL images and (3, H, W) tensors on any device work as well.
Crops and resizes run on uint8 tensors (torchvision's tensor semantics: bilinear,
antialiased); colour jitter, grayscale and RandAugment on PIL images for CPU inputs (faster
there) and on tensors for GPU inputs (RandAugment always on PIL).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from ..registry import Registry
from .autoaugment import autoaugment_transform
from .fastjpeg import NormalizeToFloat, RandomResizedCropDecode, ResizeCenterCropDecode, ToPILImage
from .randaugment import rand_augment

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INAT_MEAN",
    "INAT_STD",
    "Recipe",
    "TRANSFORMS",
    "Cutout",
    "EnsureTensor",
    "MultiView",
    "RandomGaussianBlur",
    "batch_normalizer",
    "build_transform",
    "cifar_contrastive_transform",
    "cifar_test_transform",
    "cifar_train_transform",
    "large_contrastive_transform",
    "large_randaug_transform",
    "large_test_transform",
    "large_train_transform",
    "list_transforms",
    "register_transform",
]

CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INAT_MEAN: tuple[float, float, float] = (0.466, 0.471, 0.380)
INAT_STD: tuple[float, float, float] = (0.195, 0.194, 0.192)


class Cutout:
    """Zero one square hole of side ``size`` in a ``(..., H, W)`` tensor (DeVries & Taylor).

    The centre ``(y, x)`` is drawn uniformly over all pixels with ``torch.randint`` (``y``
    first), the hole covers rows ``y - size//2 .. y - size//2 + size - 1`` (same for columns)
    clipped at the borders, so holes near an edge are smaller.  Applied with probability 1.
    Meant for the ``[0, 1]`` tensor after ``ToTensor`` and before ``Normalize``.  Returns a new
    tensor; the input is not modified.
    """

    def __init__(self, size: int = 16) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"Cutout size must be a positive integer, got {size!r}")
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"Cutout expects a (C, H, W) tensor (put it after ToTensor), got {type(img).__name__}")
        if img.dim() < 2:
            raise ValueError(f"Cutout expects a (..., H, W) tensor, got shape {tuple(img.shape)}")
        h, w = img.shape[-2], img.shape[-1]
        y = int(torch.randint(h, (1,)).item())
        x = int(torch.randint(w, (1,)).item())
        y1, x1 = y - self.size // 2, x - self.size // 2
        y2, x2 = min(h, y1 + self.size), min(w, x1 + self.size)
        y1, x1 = max(0, y1), max(0, x1)
        out = img.clone()
        out[..., y1:y2, x1:x2] = 0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class EnsureTensor:
    """``ToTensor`` for PIL images / ndarrays; tensors are returned unchanged."""

    def __init__(self) -> None:
        self._to_tensor = T.ToTensor()

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            return img
        return self._to_tensor(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomGaussianBlur:
    """Gaussian blur of a PIL image with ``sigma`` drawn uniformly from ``sigma=(lo, hi)``.

    ``img.filter(ImageFilter.GaussianBlur(radius=sigma))``: PIL's filter, three passes of an
    extended box blur whose variance is ``sigma**2`` (edge pixels repeated), so the blur has no
    kernel-size cap. The draw uses ``torch``'s generator, like torchvision's transforms, so the
    loader's per-worker seeding applies.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        lo, hi = (float(s) for s in sigma)
        if not 0 < lo <= hi:
            raise ValueError(f"sigma must be (lo, hi) with 0 < lo <= hi, got {sigma!r}")
        self.sigma = (lo, hi)

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"RandomGaussianBlur expects a PIL image, got {type(img).__name__}")
        lo, hi = self.sigma
        sigma = lo + (hi - lo) * float(torch.rand(()))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


class MultiView:
    """Apply every transform to the same input; returns the tuple of views.

    ``MultiView([t1, t2, t2])(img) == (t1(img), t2(img), t2(img))`` (independent random
    draws), e.g. the three views of BCL (one regular, two contrastive).
    """

    def __init__(self, transforms: Sequence[Callable]) -> None:
        transforms = list(transforms)
        if not transforms:
            raise ValueError("MultiView needs at least one transform")
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"MultiView: transform {i} is not callable: {t!r}")
        self.transforms = transforms

    def __call__(self, img: Any) -> tuple:
        return tuple(t(img) for t in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"{type(self).__name__}([{inner}])"


def cifar_train_transform(
    cutout: int = 16,
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
    autoaugment: str = "reference",
) -> T.Compose:
    """Regular CIFAR recipe (LDAM-DRW / DBM code); input a PIL image, output a normalised
    3x32x32 tensor. ``autoaugment``: ``"reference"`` (the DBM code's policy) or
    ``"torchvision"``."""
    return T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            autoaugment_transform(autoaugment, fill=128),
            T.ToTensor(),
            Cutout(cutout),
            T.Normalize(mean, std),
        ]
    )


def cifar_contrastive_transform(
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
) -> T.Compose:
    """SimCLR-style contrastive view of BCL and NCL on CIFAR (views 2 and 3 of BCL, the key
    view of NCL); PIL image -> tensor."""
    return T.Compose(
        [
            T.RandomResizedCrop(32, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=0.5),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def cifar_test_transform(
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
) -> T.Compose:
    """Evaluation transform: ToTensor -> Normalize."""
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


class Recipe(T.Compose):
    """``Compose`` whose first step also takes an undecoded
    :class:`~dbm_ltr.data.fastjpeg.EncodedImage` (the split-file data sets then skip decoding)."""

    accepts_encoded = True


class PILOnCPU:
    """CPU images -> PIL (colour jitter and grayscale are faster there); tensors on a GPU stay
    tensors (torchvision's colour ops work on both)."""

    def __call__(self, img: Any) -> Any:
        if isinstance(img, torch.Tensor) and img.device.type != "cpu":
            return img
        return ToPILImage()(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def large_train_transform(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size: int = 224,
    defer_normalize: bool = False,
) -> Recipe:
    """RandomResizedCrop(size) -> HFlip -> ToTensor -> Normalize, decoding at reduced size
    (``defer_normalize``: see :func:`batch_normalizer`)."""
    return Recipe(
        [RandomResizedCropDecode(size), T.RandomHorizontalFlip(), NormalizeToFloat(mean, std, defer_normalize)]
    )


def large_test_transform(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: int = 256,
    crop: int = 224,
    defer_normalize: bool = False,
) -> Recipe:
    """Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize, decoding at reduced size."""
    return Recipe([ResizeCenterCropDecode(resize, crop), NormalizeToFloat(mean, std, defer_normalize)])


def large_randaug_transform(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size: int = 224,
    config: str = "rand-n2-m10-mstd0.5",
    use_timm: bool = False,
    defer_normalize: bool = False,
    stack: bool = False,
    fill_mean: Sequence[float] = IMAGENET_MEAN,
) -> Recipe:
    """The BCL / GML classification view at ImageNet scale: RandomResizedCrop -> HFlip ->
    ColorJitter(0.4, 0.4, 0.4, 0) -> RandAugment(``config``, fill = ``fill_mean`` in 0-255,
    translate constant 0.45 * size) -> ToTensor -> Normalize; ``stack``: Grayscale p 0.2 and
    Gaussian blur p 0.5 before RandAugment (:func:`large_randaug_stack_transform`). The fill is
    ImageNet's mean for every data set, as the BCL, DBM and GML code (iNaturalist too)."""
    fill = tuple(min(255, round(255 * m)) for m in fill_mean)
    stacked = [T.RandomGrayscale(p=0.2), T.RandomApply([RandomGaussianBlur((0.1, 2.0))], p=0.5)] if stack else []
    return Recipe(
        [
            RandomResizedCropDecode(size),
            T.RandomHorizontalFlip(),
            ToPILImage(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.0),
            *stacked,
            rand_augment(config, fill=fill, translate_const=int(size * 0.45), use_timm=use_timm),
            NormalizeToFloat(mean, std, defer_normalize),
        ]
    )


def large_randaug_stack_transform(**options: Any) -> Recipe:
    """The GML code's query and key views at ImageNet scale (its ``randnclsstack``):
    :func:`large_randaug_transform` with Grayscale p 0.2 and Gaussian blur (sigma 0.1-2) p 0.5
    after ColorJitter, before RandAugment."""
    return large_randaug_transform(stack=True, **options)


def large_contrastive_transform(
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size: int = 224,
    defer_normalize: bool = False,
) -> Recipe:
    """The SimCLR-style view of BCL at ImageNet scale: RandomResizedCrop -> HFlip ->
    ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8 -> Grayscale p 0.2 -> ToTensor -> Normalize."""
    return Recipe(
        [
            RandomResizedCropDecode(size),
            T.RandomHorizontalFlip(),
            PILOnCPU(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            NormalizeToFloat(mean, std, defer_normalize),
        ]
    )


def batch_normalizer(transform: Any) -> Callable | None:
    """The batch-side half of a transform built with ``defer_normalize=True`` (its last step a
    :class:`~dbm_ltr.data.fastjpeg.NormalizeToFloat` with ``defer``), or ``None`` when the
    transform normalises each image itself. The returned function normalises a collated batch
    (an ``(N, H, W, 3)`` uint8 tensor, or the list of a ``MultiView``'s view batches) wherever
    it is, e.g. on the GPU after the transfer, into ``(N, 3, H, W)`` float32 in channels-last
    memory. The training engine builds the large-scale recipes deferred."""
    views = transform.transforms if isinstance(transform, MultiView) else [transform]
    steps = [getattr(v, "transforms", None) or [v] for v in views]
    deferred = [s[-1] if isinstance(s[-1], NormalizeToFloat) and s[-1].defer else None for s in steps]
    if not any(deferred):
        return None

    def normalize(images: Any) -> Any:
        if isinstance(transform, MultiView):
            return [x if d is None else d.batch(x) for d, x in zip(deferred, images)]
        return deferred[0].batch(images)

    return normalize


def _with_stats(factory: Callable[..., Callable], mean, std) -> Callable[..., Callable]:
    """``factory`` with the data set's normalisation filled in (its other keywords, such as
    ``size``, stay open)."""
    return functools.partial(factory, mean=mean, std=std)


#: name -> zero-argument factory returning a fresh transform
TRANSFORMS = Registry("transform")
register_transform = TRANSFORMS.register
list_transforms = TRANSFORMS.names
register_transform("cifar", cifar_train_transform)
register_transform("cifar_contrastive", cifar_contrastive_transform)
register_transform("cifar_test", cifar_test_transform)
register_transform("none", EnsureTensor)
for _prefix, _mean, _std in (("imagenet", IMAGENET_MEAN, IMAGENET_STD), ("inat", INAT_MEAN, INAT_STD)):
    register_transform(f"{_prefix}_train", _with_stats(large_train_transform, _mean, _std))
    register_transform(f"{_prefix}_test", _with_stats(large_test_transform, _mean, _std))
    register_transform(f"{_prefix}_randaug", _with_stats(large_randaug_transform, _mean, _std))
    register_transform(f"{_prefix}_randaug_stack", _with_stats(large_randaug_stack_transform, _mean, _std))
    register_transform(f"{_prefix}_contrastive", _with_stats(large_contrastive_transform, _mean, _std))


def build_transform(name: str, **options: Any) -> Callable:
    """A fresh instance of the transform registered as ``name`` (``options``: keywords of its
    factory, e.g. ``size`` of the large-scale recipes)."""
    return TRANSFORMS.lookup(name)(**options)
