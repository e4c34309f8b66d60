"""Fast JPEG input: crop boxes as torchvision's, reduced-size decoding, the large-scale recipes,
RandAugment without timm, and the batched (GPU) decoding logic run on the CPU."""

import io
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F2

from dbm_ltr.data import IMAGENET_MEAN, IMAGENET_STD, INAT_MEAN, INAT_STD, MultiView, build_transform
from dbm_ltr.data.fastjpeg import (
    CorruptImageError,
    EncodedBatch,
    EncodedImage,
    EncodedSample,
    MissingImageError,
    NormalizeToFloat,
    RandomResizedCropDecode,
    ResizeCenterCropDecode,
    accepts_encoded,
    collate_encoded,
    dct_factor,
    decode_batch,
    jpeg_size,
    random_resized_crop_box,
    resized_output_size,
)
from dbm_ltr.data.randaugment import RAND_AUGMENT_OPS, RandAugmentPIL, parse_rand_augment, rand_augment


def photo(w, h, seed=0):
    """A smooth, photo-like RGB image (gradients + low-frequency blobs + mild noise)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            fx, fy, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
            img[..., c] += 40 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    img += 128 + rng.normal(0, 2, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg_file(tmp_path, w, h, name="a.jpg", seed=0, **save):
    path = tmp_path / name
    photo(w, h, seed).save(path, "JPEG", quality=95, **save)
    return str(path)


@pytest.mark.parametrize("height,width", [(375, 500), (500, 333), (40, 16), (1000, 30), (224, 224), (3, 900)])
def test_crop_box_is_torchvisions(height, width):
    img = Image.new("RGB", (width, height))
    for seed in range(200):
        torch.manual_seed(seed)
        want = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        torch.manual_seed(seed)
        assert random_resized_crop_box(height, width) == tuple(want)
    torch.manual_seed(1)  # another scale / ratio range
    want = T.RandomResizedCrop.get_params(img, (0.5, 0.9), (0.5, 2.0))
    torch.manual_seed(1)
    assert random_resized_crop_box(height, width, (0.5, 0.9), (0.5, 2.0)) == tuple(want)


def test_dct_factor_and_output_size():
    assert dct_factor(2000, 1900, 224, 224) == 8
    assert dct_factor(1000, 900, 224, 224) == 4
    assert dct_factor(448, 460, 224, 224) == 2
    assert dct_factor(447, 1000, 224, 224) == 1
    assert dct_factor(100, 100, 224, 224) == 1
    assert resized_output_size(375, 500, 256) == (256, 341)  # torchvision's Resize(256)
    assert resized_output_size(500, 333, 256) == (384, 256)
    img = Image.new("RGB", (333, 500))
    assert T.Resize(256)(img).size == (256, 384)


def test_jpeg_header_size(tmp_path):
    for kw in ({}, {"progressive": True}):
        path = jpeg_file(tmp_path, 37, 23, **kw)
        assert jpeg_size(open(path, "rb").read()) == (37, 23)
    gray = io.BytesIO()
    photo(19, 41).convert("L").save(gray, "JPEG")
    assert jpeg_size(gray.getvalue()) == (19, 41)
    png = io.BytesIO()
    photo(8, 8).save(png, "PNG")
    assert jpeg_size(png.getvalue()) is None and jpeg_size(b"\xff\xd8\xff") is None


@pytest.mark.parametrize("exact,bound", [(False, 4.0), (True, 1.5)])
def test_reduced_decoding_matches_a_full_decode(tmp_path, exact, bound):
    path = jpeg_file(tmp_path, 320, 256)
    full = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    crop = RandomResizedCropDecode(32, exact=exact)
    diffs, factors = [], set()
    for seed in range(40):
        torch.manual_seed(seed)
        image = EncodedImage(path)
        out = crop(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        factors |= set(image._cache)
        torch.manual_seed(seed)
        top, left, h, w = random_resized_crop_box(256, 320)
        ref = F2.resized_crop(full, top, left, h, w, [32, 32], antialias=True)
        diffs.append((out.float() - ref.float()).abs().mean().item())
        assert (out.float() - ref.float()).abs().max() <= 48
    assert {2, 4, 8} & factors  # large crops were decoded at reduced size
    assert np.mean(diffs) < bound, diffs  # grey levels, on a 0-255 scale (a high-contrast test image)


def test_full_size_decode_is_exact_and_test_crop_geometry(tmp_path):
    path = jpeg_file(tmp_path, 60, 44)
    pil = Image.open(path).convert("RGB")
    image = EncodedImage(path)
    decoded, f = image.decode(1)
    assert f == 1 and torch.equal(decoded.permute(1, 2, 0), torch.from_numpy(np.array(pil)))
    # Resize + CenterCrop: torchvision's geometry, here without reduction (short side 44 < 2 * 24)
    out = ResizeCenterCropDecode(24, 20)(EncodedImage(path))
    ref = T.Compose([T.Resize(24), T.CenterCrop(20), T.PILToTensor()])(pil)
    assert out.shape == ref.shape == (3, 20, 20)
    assert (out.float() - ref.float()).abs().max() <= 2  # torch vs PIL antialiased bilinear
    # reduced: short side 256 >= 2 * 64 -> 1/4 decode, still close to the full-size result
    path = jpeg_file(tmp_path, 320, 256, "b.jpg")
    big = EncodedImage(path)
    out = ResizeCenterCropDecode(64, 56)(big)
    assert set(big._cache) == {4}
    ref = T.Compose([T.Resize(64), T.CenterCrop(56), T.PILToTensor()])(Image.open(path).convert("RGB"))
    assert out.shape == ref.shape and (out.float() - ref.float()).abs().mean() < 1.5
    exact = ResizeCenterCropDecode(64, 56, exact=True)(EncodedImage(path))
    assert exact.shape == ref.shape and (exact.float() - ref.float()).abs().mean() < 1.5
    assert ResizeCenterCropDecode(64, 56, reduced=False)(Image.open(path)).shape == (3, 56, 56)


def test_resize_reads_channels_last_and_equals_torchs_plain_resize(tmp_path):
    """The uint8 resize feeds torch's kernel canonical channels-last memory (a decoded image, a
    crop of one, a plain (3, H, W) tensor): the pixels of torchvision's tensor resize on the
    same image, returned as a (3, H, W) view of (H, W, 3) memory."""
    from dbm_ltr.data.fastjpeg import _resize

    decoded = EncodedImage(jpeg_file(tmp_path, 90, 70)).decode(1)[0]
    assert decoded.permute(1, 2, 0).is_contiguous()  # torchvision decodes (H, W, 3)
    for image in (decoded, decoded[:, 5:60, 7:80], decoded.contiguous(), decoded[:, 3:40, 2:50].contiguous()):
        for size in ((32, 32), (100, 64), tuple(image.shape[-2:])):
            out = _resize(image, size)
            want = F2.resize(image.contiguous(), list(size), antialias=True)
            assert torch.equal(out, want)
            if size != tuple(image.shape[-2:]):
                assert out.permute(1, 2, 0).is_contiguous()


def test_views_share_decodes(tmp_path, monkeypatch):
    path = jpeg_file(tmp_path, 64, 48)
    calls = []
    original = EncodedImage._decode
    monkeypatch.setattr(EncodedImage, "_decode", lambda self, f: calls.append(f) or original(self, f))
    views = MultiView([RandomResizedCropDecode(16), RandomResizedCropDecode(16), ResizeCenterCropDecode(20, 16)])
    assert accepts_encoded(views) and not accepts_encoded(MultiView([T.ToTensor()]))
    out = views(EncodedImage(path))
    assert [v.shape for v in out] == [(3, 16, 16)] * 3
    assert 1 <= len(calls) == len(set(calls)) <= 2  # one decode per factor at most (1 or 2 here)
    image = EncodedImage(path)
    image.decode(1)
    assert image.decode(2)[1] == 1  # a finer decode is reused


def test_non_jpeg_grey_and_unreadable_files(tmp_path):
    png = tmp_path / "x.JPEG"  # a PNG named .JPEG, as a few ImageNet files
    photo(30, 20).save(png, "PNG")
    out = RandomResizedCropDecode(8)(EncodedImage(str(png)))
    assert out.shape == (3, 8, 8)
    grey = tmp_path / "g.jpg"
    photo(30, 20).convert("L").save(grey, "JPEG")
    assert EncodedImage(str(grey)).decode(1)[0].shape == (3, 20, 30)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CorruptImageError, match=f"cannot read image {bad}"):
        RandomResizedCropDecode(8)(EncodedImage(str(bad)))
    truncated = tmp_path / "t.jpg"
    data = open(jpeg_file(tmp_path, 64, 64, "ok.jpg"), "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="t.jpg"):
        EncodedImage(str(truncated)).decode(1)
    with pytest.raises(CorruptImageError, match="t.jpg"):
        EncodedImage(str(truncated)).pil()
    with pytest.raises(MissingImageError, match="nope.jpg: no such file"):
        EncodedImage(str(tmp_path / "nope.jpg")).size


def test_normalize_equals_totensor_normalize():
    img = photo(20, 12)
    want = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    norm = NormalizeToFloat(IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(norm(img), want, atol=1e-5)
    assert torch.allclose(norm(T.PILToTensor()(img)), want, atol=1e-5)
    unit = T.ToTensor()(img)
    kept = unit.clone()
    assert torch.allclose(norm(unit), want, atol=1e-5)
    assert torch.equal(unit, kept)  # a float input is not normalised in place
    channels_last = T.PILToTensor()(img)[None].contiguous(memory_format=torch.channels_last)[0]
    out = norm(channels_last)
    assert out.is_contiguous() and torch.allclose(out, want, atol=1e-5)


def test_batch_normalisation_against_a_naive_reference():
    """NormalizeToFloat(defer=True).batch: (N, H, W, 3) uint8 or [0, 1] float batches ->
    ((x / 255 - mean) / std) as (N, 3, H, W) channels-last float32, the same values as each
    image normalised alone; the cached rows follow the size and the input is left alone."""
    norm = NormalizeToFloat(IMAGENET_MEAN, IMAGENET_STD, defer=True)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    for h, w in ((5, 7), (4, 4), (5, 7)):
        batch = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8, generator=gen)
        batch[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
        naive = (batch.permute(0, 3, 1, 2).double() / 255 - mean.double()) / std.double()
        out = norm.batch(batch)
        assert out.shape == (2, 3, h, w) and out.dtype == torch.float32
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(out.double(), naive, atol=1e-5)
        alone = NormalizeToFloat(IMAGENET_MEAN, IMAGENET_STD)
        assert torch.equal(out, torch.stack([alone(x.permute(2, 0, 1)) for x in batch]))
        unit = batch.float() / 255
        kept = unit.clone()
        assert torch.allclose(norm.batch(unit).double(), naive, atol=1e-5) and torch.equal(unit, kept)
    empty = norm.batch(torch.zeros(0, 4, 4, 3, dtype=torch.uint8))
    assert empty.shape == (0, 3, 4, 4)
    for bad in (torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(2, 3, 4, 4, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"expected an \(N, H, W, 3\) batch"):
            norm.batch(bad)


@pytest.mark.parametrize("kind", ["train", "test", "randaug", "randaug_stack", "contrastive"])
def test_deferred_normalisation_gives_the_same_batches(tmp_path, kind):
    """A recipe built with defer_normalize passes (H, W, 3) uint8 images; its batch normaliser
    turns the collated batch into exactly the batch of the recipe that normalises each image
    (same random draws), in channels-last memory."""
    from torch.utils.data import default_collate

    from dbm_ltr.data import batch_normalizer
    from dbm_ltr.data.fastjpeg import _seeded as seeded  # random, NumPy and torch seeded alike

    paths = [jpeg_file(tmp_path, 60 + 9 * k, 48 + 5 * k, f"{k}.jpg", seed=k) for k in range(4)]
    plain, deferred = build_transform(f"inat_{kind}"), build_transform(f"inat_{kind}", defer_normalize=True)
    assert batch_normalizer(plain) is None
    normalize = batch_normalizer(deferred)
    want = torch.stack([seeded(k, lambda: plain(EncodedImage(p))) for k, p in enumerate(paths)])
    items = [seeded(k, lambda: deferred(EncodedImage(p))) for k, p in enumerate(paths)]
    assert all(x.dtype == torch.uint8 and x.shape == (224, 224, 3) for x in items)
    batch = default_collate(items)
    out = normalize(batch)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, want)
    # a MultiView normalises each deferred view and leaves the others as they are
    views = MultiView([deferred, build_transform("cifar_test")])
    raw = torch.rand(2, 3, 32, 32)
    out = batch_normalizer(views)([batch, raw])
    assert torch.equal(out[0], want) and out[1] is raw
    assert batch_normalizer(build_transform("cifar")) is None and batch_normalizer(None) is None
    with pytest.raises(ValueError, match=r"expected an \(N, H, W, 3\) batch .* got shape \(224, 224, 3\)"):
        normalize(items[0])


@pytest.mark.parametrize("prefix,mean,std", [("imagenet", IMAGENET_MEAN, IMAGENET_STD), ("inat", INAT_MEAN, INAT_STD)])
def test_large_recipes_shapes_and_normalisation(tmp_path, prefix, mean, std):
    path = jpeg_file(tmp_path, 40, 30)
    mean255 = tuple(round(255 * m) for m in mean)
    flat = Image.new("RGB", (50, 40), mean255)
    for kind in ("train", "test", "randaug", "randaug_stack", "contrastive"):
        t = build_transform(f"{prefix}_{kind}")
        assert accepts_encoded(t)
        for img in (EncodedImage(path), Image.open(path), T.PILToTensor()(Image.open(path))):
            out = t(img)
            assert out.shape == (3, 224, 224) and out.dtype == torch.float32
        if kind in ("train", "test"):  # a flat image at the mean normalises to ~0
            assert t(flat).abs().max() < 0.5 / 255 / min(std) + 1e-4
    # the same normalisation as ToTensor + Normalize on the test view
    want = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])(Image.open(path))
    got = build_transform(f"{prefix}_test")(EncodedImage(path))
    assert (got - want).abs().mul(torch.tensor(std).view(3, 1, 1) * 255).max() <= 2.01


@pytest.mark.parametrize("prefix", ["imagenet", "inat"])
def test_large_recipes_parameters(prefix):
    """The steps' settings, written out: RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3)
    and a p = 0.5 flip in every training view; ColorJitter(0.4, 0.4, 0.4, 0) before
    RandAugment; the contrastive view's ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 and
    Grayscale p 0.2."""
    for kind in ("train", "randaug", "randaug_stack", "contrastive"):
        steps = build_transform(f"{prefix}_{kind}").transforms
        crop, flip = steps[0], steps[1]
        assert crop.size == (224, 224) and crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
        assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    jitter = build_transform(f"{prefix}_randaug").transforms[3]
    assert jitter.brightness == jitter.contrast == jitter.saturation == pytest.approx((0.6, 1.4))
    assert jitter.hue is None
    applied, gray = build_transform(f"{prefix}_contrastive").transforms[3:5]
    assert isinstance(applied, T.RandomApply) and applied.p == 0.8
    cj = applied.transforms[0]
    assert cj.brightness == cj.contrast == cj.saturation == pytest.approx((0.6, 1.4)) and cj.hue == (-0.1, 0.1)
    assert isinstance(gray, T.RandomGrayscale) and gray.p == 0.2
    test = build_transform(f"{prefix}_test").transforms[0]
    assert (test.resize, test.crop) == (256, 224)


@pytest.mark.parametrize("name", ["imagenet_randaug", "inat_randaug", "inat_randaug_stack"])
def test_randaug_fill(name):
    """RandAugment fills with ImageNet's mean in 0-255 on every data set (iNaturalist too: the
    original code's ra_params)."""
    ra = build_transform(name).transforms[-2]
    fill = ra.fill if isinstance(ra, RandAugmentPIL) else ra.ops[0].kwargs["fillcolor"]
    assert tuple(fill) == (124, 116, 104)


def test_randaug_stack_is_randaug_with_grayscale_and_blur_before_randaugment():
    """GML's query and key views at ImageNet scale (the GML code's randnclsstack): the
    classification view's steps with RandomGrayscale(0.2) and a p = 0.5 Gaussian blur (sigma
    0.1-2) between ColorJitter and RandAugment."""
    from dbm_ltr.data.transforms import RandomGaussianBlur

    plain, stack = build_transform("imagenet_randaug").transforms, build_transform("imagenet_randaug_stack").transforms
    assert [type(t) for t in stack[:4]] == [type(t) for t in plain[:4]]
    assert isinstance(plain[3], T.ColorJitter)
    gray, blur = stack[4], stack[5]
    assert isinstance(gray, T.RandomGrayscale) and gray.p == 0.2
    assert isinstance(blur, T.RandomApply) and blur.p == 0.5 and isinstance(blur.transforms[0], RandomGaussianBlur)
    assert blur.transforms[0].sigma == (0.1, 2.0)
    assert [type(t) for t in stack[6:]] == [type(t) for t in plain[4:]]


def test_randaugment_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    monkeypatch.setitem(sys.modules, "timm.data.auto_augment", None)
    ra = rand_augment("rand-n2-m10-mstd0.5", fill=(124, 116, 104))  # ours: timm is never imported
    assert isinstance(ra, RandAugmentPIL) and ra.num_ops == 2 and ra.magnitude == 10 and ra.magnitude_std == 0.5
    with pytest.raises(ImportError, match=r"pip install 'dbm-ltr\[timm\]'"):
        rand_augment(use_timm=True)
    img = photo(32, 24)
    outs = []
    for seed in range(2):
        random.seed(seed)
        np.random.seed(seed)
        outs.append(np.asarray(ra(img)))
    random.seed(0)
    np.random.seed(0)
    assert np.array_equal(np.asarray(ra(img)), outs[0])  # seeded -> reproducible
    assert outs[0].shape == (24, 32, 3)
    # every operation at full magnitude keeps size and mode; a few exact checks
    for name in RAND_AUGMENT_OPS:
        single = RandAugmentPIL(1, 10, 0.0, 1.0, fill=(1, 2, 3), ops=[name])
        out = single(img)
        assert out.size == img.size and out.mode == "RGB", name
    inv = RandAugmentPIL(1, 10, 0.0, 1.0, ops=["Invert"])(img)
    assert np.array_equal(np.asarray(inv), 255 - np.asarray(img))
    add = np.asarray(RandAugmentPIL(1, 10, 0.0, 1.0, ops=["SolarizeAdd"])(img)).astype(int)
    src = np.asarray(img).astype(int)
    assert np.array_equal(add, np.where(src < 128, np.minimum(src + 110, 255), src))
    moved = np.asarray(RandAugmentPIL(1, 10, 0.0, 1.0, fill=(1, 2, 3), ops=["TranslateXRel"])(img))
    assert (moved == [1, 2, 3]).all(axis=2).any()  # the fill shows where the image moved away
    assert parse_rand_augment("rand-n3-m9-mstd0.5-p1")["p"] == 1.0
    with pytest.raises(ValueError, match="unknown RandAugment config section"):
        parse_rand_augment("rand-n2-x4")


@pytest.mark.parametrize(
    "config", ["rand-n2-m10-mstd0.5", "rand-n3-m9-mstd0.5-p1", "rand-n1-m5", "rand-n2-m9-mmax8-mstd1"]
)
def test_randaugment_equals_timm_when_installed(config):
    """The same images as timm's transform under the same seeds (the presets' configuration
    first); the default never imports timm."""
    timm_aa = pytest.importorskip("timm.data.auto_augment")
    img = photo(40, 30)
    ours = rand_augment(config)
    assert isinstance(ours, RandAugmentPIL) and isinstance(rand_augment(config, use_timm=True), timm_aa.RandAugment)
    theirs = timm_aa.rand_augment_transform(config, {"translate_const": 100, "img_mean": (124, 116, 104)})
    for seed in range(50):
        random.seed(seed)
        np.random.seed(seed)
        a = np.asarray(ours(img))
        random.seed(seed)
        np.random.seed(seed)
        assert np.array_equal(a, np.asarray(theirs(img))), seed


def test_randaugment_posterize_to_no_bits_is_black():
    """mstd above 100 draws magnitudes down to 0, where Posterize keeps no bit: a black image
    (Pillow 12 and later refuse 0 bits, and timm's transform fails there)."""
    ra = RandAugmentPIL(1, 0, 0.0, 1.0, ops=["Posterize"])
    img = photo(20, 16)
    assert not np.asarray(ra(img)).any() and ra(img).size == img.size


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its decoders
def test_batched_decode_logic_on_cpu(tmp_path):
    """decode="device" minus the GPU: collate, per-image seeds, corrupt handling."""
    from torchvision.io import ImageReadMode, decode_jpeg

    paths = [jpeg_file(tmp_path, 30 + 4 * i, 24, f"{i}.jpg", seed=i) for i in range(3)]
    png = tmp_path / "p.JPEG"
    photo(20, 20).save(png, "PNG")
    torch.manual_seed(0)
    samples = [EncodedSample.read(EncodedImage(p)) for p in paths + [str(png)]]
    assert [s.decoded for s in samples] == [False, False, False, True]
    batch, targets = collate_encoded([(s, k) for k, s in enumerate(samples)])
    assert isinstance(batch, EncodedBatch) and len(batch) == 4 and targets.tolist() == [0, 1, 2, 3]
    assert batch.pin_memory() is batch

    def cpu_decoder(data, device):
        if isinstance(data, list):
            return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]
        return decode_jpeg(data, mode=ImageReadMode.RGB)

    views = MultiView([build_transform("imagenet_train"), build_transform("imagenet_contrastive")])
    out = decode_batch(batch, views, "cpu", jpeg_decoder=cpu_decoder)
    assert [v.shape for v in out] == [(4, 3, 224, 224)] * 2
    again = decode_batch(batch, views, "cpu", jpeg_decoder=cpu_decoder)
    assert all(torch.equal(a, b) for a, b in zip(out, again))  # each image its own seed
    with pytest.raises(ValueError, match="CUDA device"):
        decode_batch(batch, views, "cpu")
    # a file neither the decoder nor PIL reads: an error naming it, or replaced and reported
    broken = EncodedSample(
        torch.frombuffer(bytearray(b"\xff\xd8\xff" + b"x" * 50), dtype=torch.uint8), "/data/broken.jpg", 7
    )
    bad = EncodedBatch([broken] + samples[:2])
    with pytest.raises(CorruptImageError, match="/data/broken.jpg"):
        decode_batch(bad, None, "cpu", jpeg_decoder=cpu_decoder)
    seen = []
    images, source = decode_batch(
        bad, None, "cpu", skip_corrupt=True, on_corrupt=seen.append, jpeg_decoder=cpu_decoder, with_source=True
    )
    assert seen == ["/data/broken.jpg"] and torch.equal(images[0], images[1]) and source == [1, 1, 2]


def test_seeding_a_decode_leaves_the_cuda_generators_alone(monkeypatch):
    """The per-sample seeding reseeds the CPU generators and restores them; CUDA's (which
    torch.manual_seed would reseed too, and nothing restores) are not touched."""
    from dbm_ltr.data.fastjpeg import _seeded

    def touched(*args):
        raise AssertionError("a CUDA generator was reseeded")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", touched)
    monkeypatch.setattr(torch.cuda, "manual_seed", touched)
    before = torch.get_rng_state()
    first = _seeded(7, lambda: torch.rand(3))
    assert torch.equal(first, _seeded(7, lambda: torch.rand(3)))
    assert torch.equal(torch.get_rng_state(), before)
