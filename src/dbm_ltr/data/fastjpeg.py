"""Fast JPEG input for the large data sets: decode at reduced size where the crop allows it.

At ImageNet / iNaturalist scale the loader's time goes into decoding JPEGs and resizing the
decoded image. The split-file data sets (:mod:`dbm_ltr.data.splitfile`) therefore hand their
transform an :class:`EncodedImage`, a file that is not decoded yet, and the first step of the
large-scale recipes decodes it together with the crop:

* :class:`RandomResizedCropDecode` (the training crop): the crop box is drawn from the size in
  the JPEG header with exactly torchvision's ``RandomResizedCrop`` algorithm and random draws
  (:func:`random_resized_crop_box`), then the image is decoded with libjpeg-turbo's DCT-domain
  scaling by ``1/f`` (``f`` in 1, 2, 4, 8; PIL's ``Image.draft``), ``f`` the largest factor that
  keeps the crop at least as large as the output on both sides, and the box, scaled by ``1/f``
  (rounded to whole pixels), is cropped and resized (bilinear, antialiased) to the output size.
* :class:`ResizeCenterCropDecode` (the evaluation transform, ``Resize(256)`` +
  ``CenterCrop(224)``): the output geometry is computed from the header size as torchvision
  does; the image is decoded at the largest ``1/f`` that keeps its short side >= 256.

Both also accept PIL images and ``(C, H, W)`` tensors (any device), so the recipes work on any
data set and on images decoded on the GPU; they return a ``(3, size, size)`` uint8 tensor.

**Exactness.** The crop boxes have the same distribution as torchvision's (the same draws from
torch's generator: with the same seed the boxes are identical). Where ``f = 1`` (most crops of
images of ImageNet's typical 500 x 375 size) the decode is exactly the full-size one
(torchvision's ``decode_jpeg`` and PIL decode identically with libjpeg-turbo) and the resize
is torch's antialiased bilinear on uint8 tensors, as torchvision's tensor ``RandomResizedCrop``
(within 1 grey level of PIL's). Where ``f > 1`` pixels differ slightly from a full-size decode
+ crop + resize: (a) DCT scaling decodes each 8x8 block directly at ``8/f`` pixels, a slightly
different low-pass filter than bilinear antialiasing; (b) the box ``/ f`` is rounded to whole
reduced pixels, so the crop's edges move by at most ``f/2`` original pixels (under half an
output pixel). Measured on photographs at 224 px: mean absolute difference 2.6 grey levels of
255 (95th percentile 4.5; (b) dominates). ``exact=True`` removes (b) by resizing the
fractional box with PIL (0.9 grey levels, but PIL's resize costs ~0.3 ms more than torch's,
more than the reduced decode saves at ImageNet sizes). With ``reduced=False`` every image is
decoded at full size.

**Speed.** libjpeg-turbo's DCT scaling skips work after the entropy (Huffman) decoding, which
is most of a JPEG's decode time at quality 90: decoding a 700 x 700 photograph at 1/2 takes
~70 % of the full decode, at 1/4 ~65 %. Most of the gain over ``ImageFolder`` + PIL comes from
torchvision's decode straight into a tensor, torch's SIMD uint8 resize of only the crop (PIL's
resize of a 300 px crop to 224 px takes ~0.5 ms, torch's ~0.13 ms), images kept in the
channels-last layout they are decoded in (the resize reads it directly, and nothing is
transposed on the way to the batch), and a normalisation the training engine applies to whole
uint8 batches on the training device (``NormalizeToFloat(defer=True)``).
``benchmarks/jpeg_input.py``, one core, 300-500 px photographs: the loader's work for a
training image runs 2.0-2.1x and for an evaluation image 2.3-2.4x as fast as ``ImageFolder`` +
PIL (1.7-1.8x and ~2.0x when the batch normalisation runs on the same CPU instead of the GPU).
The full decode, ~0.7 ms of the ~1.2 ms a training image takes (the benchmark's last line), is
shared by both: only decoding just the crop's region would cut it further.

Images that are not JPEGs (a PNG named .JPEG, CMYK JPEGs torchvision cannot read, ...) are
decoded with PIL and converted to RGB, as torchvision's ``ImageFolder`` does. An unreadable
file raises :class:`CorruptImageError`, a missing one :class:`MissingImageError`, both naming
the file.

``decode="device"`` (CUDA): the data set returns the undecoded bytes (:class:`EncodedSample`),
:func:`collate_encoded` gathers them into an :class:`EncodedBatch` and :func:`decode_batch`
decodes the whole batch on the GPU with ``torchvision.io.decode_jpeg(..., device="cuda")``
and applies the transform there, each image with its own seed (drawn in the loader worker),
so an image's augmentation does not depend on the batch it lands in. This path has not run on a
GPU in this project's tests (its logic runs on the CPU with a CPU decoder in the tests).
torchvision 0.29 deprecates its image decoders in favour of TorchCodec (a warning per call,
silenced here); without them the CPU path falls back to PIL.
"""

from __future__ import annotations

import functools
import io
import math
import os
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

__all__ = [
    "CorruptImageError",
    "EncodedBatch",
    "EncodedImage",
    "EncodedSample",
    "ImageReadError",
    "MissingImageError",
    "NormalizeToFloat",
    "RandomResizedCropDecode",
    "ResizeCenterCropDecode",
    "ToPILImage",
    "accepts_encoded",
    "collate_encoded",
    "decode_batch",
    "dct_factor",
    "jpeg_size",
    "random_resized_crop_box",
    "resized_output_size",
    "to_uint8_tensor",
]

DCT_FACTORS = (8, 4, 2, 1)
_JPEG_SOI = b"\xff\xd8\xff"


class ImageReadError(DataError, OSError):
    """An image of a data set cannot be read; the message names the file. (Also a
    ``ValueError``, so the CLI reports it as a data error; ``ImageReadError(message)`` alone
    works too, as the ``DataLoader`` re-raises a worker's exception.)"""

    def __init__(self, path: str, reason: str | None = None) -> None:
        super().__init__(path if reason is None else f"cannot read image {path}: {reason}")
        self.path = path if reason is not None else ""
        self.reason = reason if reason is not None else path


class CorruptImageError(ImageReadError):
    """The file exists but does not decode (truncated, not an image, ...)."""


class MissingImageError(ImageReadError, FileNotFoundError):
    """A listed image does not exist."""


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[-1] if text else ""
    # torchvision prefixes its messages with the C++ source location
    if ".cpp:" in first:
        first = first.split(", ")[-1] if ", " in first else first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _hwc_to_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) tensor view (channels-last memory: the fastest layout
    for torch's uint8 antialiased resize)."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    if img.mode != "RGB":
        img = img.convert("RGB")
    return _hwc_to_chw(np.array(img))


def to_uint8_tensor(img: Any) -> torch.Tensor:
    """A PIL image / HWC ndarray / (C, H, W) tensor as a (3, H, W) tensor (uint8 unless it was
    a float tensor; grey images repeated to 3 channels)."""
    if isinstance(img, EncodedImage):
        return img.decode(1)[0]
    if isinstance(img, Image.Image):
        return _pil_to_tensor(img)
    if isinstance(img, np.ndarray):
        return _hwc_to_chw(img.astype(np.uint8, copy=False))
    if isinstance(img, torch.Tensor):
        if img.dim() != 3:
            raise ValueError(f"expected a (C, H, W) image tensor, got shape {tuple(img.shape)}")
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        return img
    raise TypeError(f"expected an image (PIL, ndarray, tensor or EncodedImage), got {type(img).__name__}")


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header (the SOF segment), or ``None`` if
    ``data`` does not start like a JPEG or no frame header precedes the scan."""
    if data[:3] != _JPEG_SOI:
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF_MARKERS:
            if i + 9 > n or length < 7:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return width, height
        if marker == 0xDA or length < 2:  # start of scan: no frame header before it
            return None
        i += 2 + length
    return None


def _torchvision_decode(data: bytearray) -> torch.Tensor | None:
    """``torchvision.io.decode_jpeg`` (libjpeg-turbo, straight into a tensor) or ``None`` if it
    fails or is unavailable. torchvision >= 0.29 marks its image decoding as deprecated (in
    favour of TorchCodec) with a warning per call, silenced here; should it be removed, the
    decode falls back to PIL (same pixels, ~20 % slower)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # pragma: no cover - a future torchvision without image decoding
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            return None


class EncodedImage:
    """An image file not decoded yet: its bytes are read on first use, its size comes from the
    header, and :meth:`decode` decodes it at full size or scaled by ``1/f`` in the DCT domain.

    Decodes are cached on the object, so several views of one image (``MultiView``) decode it
    once per distinct factor at most: a view that allows ``1/f`` reuses any finer decode
    already made (the crop box is scaled accordingly).
    """

    def __init__(self, path: str, data: bytes | None = None) -> None:
        self.path = path
        self._data = bytearray(data) if data is not None else None
        self._size: tuple[int, int] | None = None
        self._is_jpeg: bool | None = None
        self._cache: dict[int, torch.Tensor | Image.Image] = {}

    # ------------------------------------------------------------------ raw data
    @property
    def data(self) -> bytearray:
        if self._data is None:
            try:
                with open(self.path, "rb") as f:
                    buf = bytearray(os.fstat(f.fileno()).st_size)
                    n = f.readinto(buf)
                    self._data = buf if n == len(buf) else buf[:n]
            except FileNotFoundError:
                raise MissingImageError(self.path, "no such file") from None
            except IsADirectoryError:
                raise MissingImageError(self.path, "is a directory, not an image file") from None
            except OSError as err:
                raise CorruptImageError(self.path, _reason(err)) from None
        return self._data

    def _open(self) -> Image.Image:
        data = self.data
        try:
            return Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise CorruptImageError(self.path, f"not a readable image ({_reason(err)})") from None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` from the header (PIL's convention)."""
        if self._size is None:
            size = jpeg_size(self.data)
            if size is not None:
                self._size, self._is_jpeg = size, True
            else:  # not a baseline/progressive JPEG header we can read: ask PIL
                img = self._open()
                self._size = img.size
                self._is_jpeg = img.format == "JPEG"
            if self._size[0] < 1 or self._size[1] < 1:
                raise CorruptImageError(self.path, f"empty image of size {self._size}")
        return self._size

    @property
    def is_jpeg(self) -> bool:
        if self._is_jpeg is None:
            self.size  # noqa: B018 - reads the header
        return bool(self._is_jpeg)

    # ------------------------------------------------------------------ decoding
    def pil(self) -> Image.Image:
        """The full-size RGB PIL image (torchvision's ``ImageFolder`` loader)."""
        img = self._open()
        try:
            return img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise CorruptImageError(self.path, _reason(err)) from None

    def decode(self, factor: int = 1, pil: bool = False) -> tuple[torch.Tensor | Image.Image, int]:
        """``(image, f)``: decoded at ``1/f`` of its size with the largest ``f <= factor``
        available (a cached finer decode, or a new one at ``factor``; f = 1 for non-JPEG
        files), as a (3, H', W') uint8 tensor, or with ``pil=True`` and ``f > 1`` as the RGB
        PIL image. ``H' = ceil(H / f)``; reduced pixel ``k`` covers original pixels
        ``k*f .. k*f+f-1``."""
        factor = max(f for f in DCT_FACTORS if f <= max(1, int(factor)))
        usable = [f for f in self._cache if f <= factor]
        if usable:
            f = max(usable)
        else:
            image, f = self._decode(factor)
            self._cache[f] = image
        image = self._cache[f]
        if isinstance(image, Image.Image) and not pil:
            image = self._cache[f] = _pil_to_tensor(image)
        elif pil and f > 1 and isinstance(image, torch.Tensor):
            image = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy(), "RGB")
        return image, f

    def _decode(self, factor: int) -> tuple[torch.Tensor | Image.Image, int]:
        width, height = self.size
        if not self.is_jpeg:
            return _pil_to_tensor(self.pil()), 1
        if factor > 1:
            img = self._open()
            img.draft("RGB", (max(1, width // factor), max(1, height // factor)))
            config = getattr(img, "decoderconfig", None)
            scale = (int(config[0]) or 1) if config else 1
            try:
                img.load()
                img = img if img.mode == "RGB" else img.convert("RGB")
            except (OSError, SyntaxError, ValueError) as err:
                raise CorruptImageError(self.path, _reason(err)) from None
            return (img, scale) if scale > 1 else (_pil_to_tensor(img), 1)
        image = _torchvision_decode(self.data)
        if image is None:  # e.g. a JPEG flavour torchvision does not read: PIL decides
            return _pil_to_tensor(self.pil()), 1
        if image.shape[-2:] != (height, width):  # pragma: no cover - inconsistent header
            raise CorruptImageError(self.path, f"decoded size {tuple(image.shape[-2:])} != header {(height, width)}")
        return image, 1

    def __repr__(self) -> str:
        return f"EncodedImage({self.path!r})"


def accepts_encoded(transform: Any) -> bool:
    """Whether ``transform`` (or every view of a ``MultiView``) takes an :class:`EncodedImage`."""
    views = getattr(transform, "transforms", None)
    if getattr(transform, "accepts_encoded", False):
        return True
    if type(transform).__name__ == "MultiView" and views:
        return all(accepts_encoded(t) for t in views)
    return False


def _dims(img: Any) -> tuple[int, int]:
    """``(height, width)`` of any supported image."""
    if isinstance(img, (EncodedImage, Image.Image)):
        w, h = img.size
        return h, w
    if isinstance(img, np.ndarray):
        return int(img.shape[0]), int(img.shape[1])
    if isinstance(img, torch.Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    raise TypeError(f"expected an image, got {type(img).__name__}")


@functools.lru_cache(maxsize=16)
def _log_ratio(lo: float, hi: float) -> tuple[float, float]:
    """torchvision's ``torch.log(torch.tensor(ratio))`` (float32, as the bounds of its draws)."""
    return tuple(torch.log(torch.tensor([lo, hi])).tolist())


def random_resized_crop_box(
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop, the algorithm of torchvision's
    ``RandomResizedCrop.get_params`` with the same draws from torch's global generator: up to
    10 tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)), a try kept when it fits,
    then a uniform position; else the largest centred crop within the ratio range."""
    area = height * width
    log_lo, log_hi = _log_ratio(float(ratio[0]), float(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_lo, log_hi)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def dct_factor(crop_h: float, crop_w: float, out_h: int, out_w: int) -> int:
    """The largest ``f`` in 8, 4, 2, 1 with ``crop / f >= output`` on both sides."""
    for f in DCT_FACTORS:
        if crop_h / f >= out_h and crop_w / f >= out_w:
            return f
    return 1


def resized_output_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(new_h, new_w)`` of torchvision's ``Resize(size)`` (an int: the short side becomes
    ``size``, the long side ``int(size * long / short)``)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _resize(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (C, H, W) tensor (torchvision's tensor semantics)."""
    size = [int(size[0]), int(size[1])]
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if image.dtype == torch.uint8 and image.device.type == "cpu":
        # torch's uint8 kernel (what torchvision's resize calls for uint8 CPU tensors), fed a
        # (1, 3, H, W) batch in canonical channels-last memory, which its SIMD path reads
        # directly: ~30 % faster, same pixels. A decoded image is a view of (H, W, 3) memory
        # already (``image[None]`` would not look channels-last to torch); a crop of one is
        # copied. The output keeps the layout, a (3, H, W) view of (H, W, 3) memory.
        batch = image.permute(1, 2, 0)[None].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return F.interpolate(batch, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    from torchvision.transforms.v2 import functional as F2

    return F2.resize(image, size, antialias=True)


class RandomResizedCropDecode:
    """``RandomResizedCrop(size, scale, ratio)`` (bilinear, antialiased) that decodes an
    :class:`EncodedImage` at reduced size when the crop allows it (see the module docstring);
    PIL images, arrays and tensors are cropped as they are. Returns a ``(3, size, size)``
    tensor (uint8 for images).

    At ``f > 1`` the box ``/ f`` is rounded to whole reduced pixels and resized with torch
    (fast; the crop's edges move by at most ``f / 2`` original pixels, i.e. under half an
    output pixel), or with ``exact=True`` resized as the fractional box with PIL (exact
    geometry, ~0.3 ms slower at 224 px)."""

    accepts_encoded = True

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        reduced: bool = True,
        exact: bool = False,
    ) -> None:
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale and ratio must be (lo, hi) with 0 < lo <= hi, got {scale}, {ratio}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.reduced, self.exact = bool(reduced), bool(exact)

    def __call__(self, img: Any) -> torch.Tensor:
        height, width = _dims(img)
        top, left, h, w = random_resized_crop_box(height, width, self.scale, self.ratio)
        if not isinstance(img, EncodedImage):
            return _resize(to_uint8_tensor(img)[:, top : top + h, left : left + w], self.size)
        image, f = img.decode(dct_factor(h, w, *self.size) if self.reduced else 1, pil=self.exact)
        if f > 1 and self.exact:  # the fractional box in the reduced image: PIL's box resize
            box = (left / f, top / f, (left + w) / f, (top + h) / f)
            return _pil_to_tensor(image.resize(self.size[::-1], Image.Resampling.BILINEAR, box=box))
        if f > 1:
            rh, rw = image.shape[-2:]
            t, b = min(round(top / f), rh - 1), round((top + h) / f)
            lft, r = min(round(left / f), rw - 1), round((left + w) / f)
            b, r = min(max(b, t + 1), rh), min(max(r, lft + 1), rw)
            top, left, h, w = t, lft, b - t, r - lft
        return _resize(image[:, top : top + h, left : left + w], self.size)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, "
            f"ratio=({self.ratio[0]:.4f}, {self.ratio[1]:.4f}), reduced={self.reduced}, exact={self.exact})"
        )


class ResizeCenterCropDecode:
    """``Resize(resize)`` (short side, bilinear, antialiased) + ``CenterCrop(crop)`` that
    decodes an :class:`EncodedImage` at the largest ``1/f`` keeping the short side >= ``resize``.
    The output geometry is computed from the full size, as torchvision does. Returns a
    ``(3, crop, crop)`` tensor. At ``f > 1`` the reduced image (whose last row / column may
    cover less than ``f`` original pixels) is resized as a whole with torch, or with
    ``exact=True`` resize + crop run as one fractional-box resize with PIL."""

    accepts_encoded = True

    def __init__(self, resize: int = 256, crop: int = 224, reduced: bool = True, exact: bool = False) -> None:
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop = int(resize), int(crop)
        self.reduced, self.exact = bool(reduced), bool(exact)

    def __call__(self, img: Any) -> torch.Tensor:
        height, width = _dims(img)
        new_h, new_w = resized_output_size(height, width, self.resize)
        top = int(round((new_h - self.crop) / 2.0))
        left = int(round((new_w - self.crop) / 2.0))
        if isinstance(img, EncodedImage):
            short = min(height, width)
            image, f = img.decode(
                dct_factor(short, short, self.resize, self.resize) if self.reduced else 1, pil=self.exact
            )
            if f > 1 and self.exact:
                sy, sx = height / new_h / f, width / new_w / f
                box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
                return _pil_to_tensor(image.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=box))
        else:
            image = to_uint8_tensor(img)
        image = _resize(image, (new_h, new_w))
        return image[:, top : top + self.crop, left : left + self.crop]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(resize={self.resize}, crop={self.crop}, reduced={self.reduced}, exact={self.exact})"
        )


class ToPILImage:
    """A (3, H, W) uint8 tensor (any device) or PIL image -> RGB PIL image, for PIL-only steps."""

    def __call__(self, img: Any) -> Image.Image:
        if isinstance(img, Image.Image):
            return img if img.mode == "RGB" else img.convert("RGB")
        image = to_uint8_tensor(img)
        if image.dtype != torch.uint8:
            image = image.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return Image.fromarray(image.permute(1, 2, 0).cpu().contiguous().numpy(), "RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NormalizeToFloat:
    """Image -> float32 ``(x / 255 - mean) / std``, i.e. ``ToTensor()`` + ``Normalize(mean,
    std)`` in one step (uint8 tensors and PIL images; float tensors are taken as [0, 1]; the
    input is never modified).

    ``defer=True`` leaves the normalisation to the consumer of the batches: the image passes as
    an ``(H, W, 3)`` uint8 tensor (channels last, the layout it was decoded and resized in), the
    ``DataLoader`` collates those into ``(N, H, W, 3)`` and :meth:`batch` normalises the whole
    batch, on the training device, with the same arithmetic (identical values), returning it as
    ``(N, 3, H, W)`` in channels-last memory. The training engine builds the large-scale recipes
    so: the loader processes skip the float conversion and every transposition, and batches
    cross from the loader processes and to the GPU as uint8, a quarter of the bytes
    (``benchmarks/jpeg_input.py``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], defer: bool = False) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {std}")
        self.defer = bool(defer)
        m = torch.tensor(self.mean).view(-1, 1, 1)
        s = torch.tensor(self.std).view(-1, 1, 1)
        self._scale = {torch.uint8: 1.0 / (255.0 * s), torch.float32: 1.0 / s}
        self._shift = -m / s
        self._rows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _key(image: torch.Tensor) -> torch.dtype:
        return torch.uint8 if image.dtype == torch.uint8 else torch.float32

    def __call__(self, img: Any) -> torch.Tensor:
        image = to_uint8_tensor(img)
        if self.defer:
            return image.permute(1, 2, 0)
        # (C, H, W) memory first: a per-channel affine map over channels-last memory runs ~3x slower
        scale, shift = self._scale[self._key(image)].to(image.device), self._shift.to(image.device)
        return image.to(torch.float32, memory_format=torch.contiguous_format, copy=True).mul_(scale).add_(shift)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise an ``(N, H, W, 3)`` batch of images this transform passed on with
        ``defer=True`` (any device) into an ``(N, 3, H, W)`` float32 tensor in channels-last
        memory. The per-channel scale and shift are laid out along whole ``H * W * 3`` rows
        (cached per size and device), so the map runs at the speed of a contiguous one."""
        channels = len(self.mean)
        if images.dim() != 4 or images.shape[-1] != channels:
            raise ValueError(
                f"expected an (N, H, W, {channels}) batch of images passed on by "
                f"{self!r}, got shape {tuple(images.shape)}"
            )
        n, h, w, _ = images.shape
        key = (self._key(images), h, w, images.device)
        rows = self._rows.get(key)
        if rows is None:
            rows = tuple(
                t.reshape(channels).repeat(h * w).to(images.device) for t in (self._scale[key[0]], self._shift)
            )
            self._rows = {key: rows}  # one size at a time: the training or the test crops
        flat = images.reshape(n, h * w * channels).to(torch.float32, copy=True)
        return flat.mul_(rows[0]).add_(rows[1]).view(n, h, w, channels).permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        defer = ", defer=True" if self.defer else ""
        return f"{type(self).__name__}(mean={self.mean}, std={self.std}{defer})"


# ---------------------------------------------------------------------------- GPU decoding


class EncodedSample:
    """One undecoded sample of ``decode="device"``: the file's bytes (a 1-D uint8 tensor, or an
    already decoded (3, H, W) tensor for non-JPEG files), its path and the seed of its
    augmentation (drawn in the loader worker)."""

    __slots__ = ("data", "path", "seed", "decoded")

    def __init__(self, data: torch.Tensor, path: str, seed: int, decoded: bool = False) -> None:
        self.data, self.path, self.seed, self.decoded = data, path, int(seed), bool(decoded)

    @classmethod
    def read(cls, image: EncodedImage) -> EncodedSample:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        data = image.data
        if data[:3] == _JPEG_SOI:
            return cls(torch.frombuffer(data, dtype=torch.uint8), image.path, seed)
        return cls(_pil_to_tensor(image.pil()).contiguous(), image.path, seed, decoded=True)


class EncodedBatch:
    """A batch of :class:`EncodedSample` (``collate_encoded``); :func:`decode_batch` turns it
    into image tensors on the GPU. ``pin_memory`` is a no-op (nvJPEG reads host memory)."""

    def __init__(self, samples: Sequence[EncodedSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def pin_memory(self, device: Any = None) -> EncodedBatch:
        return self

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]


def collate_encoded(batch: Sequence[tuple]) -> tuple:
    """``DataLoader`` collate of ``decode="device"`` items ``(EncodedSample, target, ...)``:
    ``(EncodedBatch, targets, ...)`` (the other fields collated as usual)."""
    from torch.utils.data import default_collate

    first = [item[0] for item in batch]
    rest = [tuple(item[1:]) for item in batch]
    return (EncodedBatch(first), *default_collate(rest))


def _seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` with torch's, NumPy's and Python's global generators seeded from ``seed``,
    restored afterwards."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's are left as they are
    try:
        return fn()
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def decode_batch(
    batch: EncodedBatch,
    transform: Callable | None,
    device: torch.device | str,
    skip_corrupt: bool = False,
    on_corrupt: Callable[[str], None] | None = None,
    jpeg_decoder: Callable | None = None,
    with_source: bool = False,
):
    """Decode ``batch`` on the CUDA ``device`` (nvJPEG through ``torchvision.io.decode_jpeg``,
    whole batch at once) and apply ``transform`` to each image (one tensor per image, or a
    tuple of views for ``MultiView``) with the image's own seed. Returns the stacked batch, or
    a list of stacked views. A file nvJPEG rejects is decoded on the CPU with PIL; if that
    fails too it raises :class:`CorruptImageError`, or with ``skip_corrupt`` is replaced by the
    next decodable image of the batch and reported to ``on_corrupt(path)``; ``with_source=True``
    returns ``(images, source)`` with ``source[i]`` the sample whose image position ``i``
    holds (for the labels: ``targets[source]``).

    Untested on a GPU in this project's CI (written for torchvision >= 0.19's batched
    ``decode_jpeg(list, device="cuda")``). ``jpeg_decoder(data or list of data, device)``
    replaces that call (tests run the rest of this function on the CPU with it)."""
    device = torch.device(device)
    if jpeg_decoder is None:
        if device.type != "cuda":
            raise ValueError(
                f"decode='device' decodes JPEGs with nvJPEG on a CUDA device, got {device}; use "
                "decode='cpu' (data.decode=cpu) on this machine"
            )
        from torchvision.io import ImageReadMode, decode_jpeg

        def jpeg_decoder(data, device):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    samples = batch.samples
    images: list[torch.Tensor | None] = [None] * len(samples)
    todo = [i for i, s in enumerate(samples) if not s.decoded]
    for i, s in enumerate(samples):
        if s.decoded:
            images[i] = s.data.to(device, non_blocking=True)
    if todo:
        try:
            out = jpeg_decoder([samples[i].data for i in todo], device)
            for i, image in zip(todo, out):
                images[i] = image
        except RuntimeError:
            for i in todo:  # find the culprit(s): one at a time, then the CPU
                try:
                    images[i] = jpeg_decoder(samples[i].data, device)
                except RuntimeError:
                    try:
                        cpu = EncodedImage(samples[i].path, bytes(samples[i].data.numpy())).pil()
                        images[i] = _pil_to_tensor(cpu).to(device)
                    except ImageReadError as err:
                        if not skip_corrupt:
                            raise CorruptImageError(samples[i].path, err.reason) from None
                        if on_corrupt is not None:
                            on_corrupt(samples[i].path)
    good = [i for i, image in enumerate(images) if image is not None]
    if not good:
        raise CorruptImageError(samples[0].path, "no image of the batch could be decoded")
    source = list(range(len(samples)))
    for i, image in enumerate(images):
        if image is None:  # skip_corrupt: the next decodable image of the batch
            source[i] = min((g for g in good if g > i), default=good[0])
            images[i] = images[source[i]]
    if transform is None:
        out = images
    else:
        results = [_seeded(s.seed, lambda im=im: transform(im)) for s, im in zip(samples, images)]
        if isinstance(results[0], tuple):
            out = [torch.stack([r[v].to(device) for r in results]) for v in range(len(results[0]))]
        else:
            out = torch.stack([r.to(device) for r in results])
    return (out, source) if with_source else out
