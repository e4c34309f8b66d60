"""Cutout, the CIFAR recipes, MultiView and the transform registry."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from dbm_ltr.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    TRANSFORMS,
    Cutout,
    MultiView,
    RandomGaussianBlur,
    build_transform,
    cifar_contrastive_transform,
    cifar_test_transform,
    cifar_train_transform,
    list_transforms,
)
from dbm_ltr.data.autoaugment import ReferenceAutoAugment


def hole(y, x, h, w, size):
    """Expected zero mask: rows y - size//2 .. y - size//2 + size - 1, clipped (same for x)."""
    m = torch.zeros(h, w, dtype=torch.bool)
    y1, x1 = y - size // 2, x - size // 2
    m[max(0, y1) : max(0, y1 + size), max(0, x1) : max(0, x1 + size)] = True
    return m


def centre_for_seed(seed, h, w):
    torch.manual_seed(seed)
    return int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))


def find_seed(pred, h=32, w=32):
    for seed in range(10_000):
        if pred(*centre_for_seed(seed, h, w)):
            return seed
    raise AssertionError("no seed found")


@pytest.mark.parametrize("h,w,size", [(32, 32, 16), (20, 40, 16), (32, 32, 5), (8, 8, 1)])
def test_cutout_matches_torch_draws(h, w, size):
    img = torch.rand(3, h, w) + 0.5  # no zeros before cutout
    for seed in range(60):
        y, x = centre_for_seed(seed, h, w)
        torch.manual_seed(seed)
        out = Cutout(size)(img)
        zero = out == 0
        want = hole(y, x, h, w, size)
        assert torch.equal(zero, want.expand(3, h, w)), (seed, y, x)
        assert torch.equal(out[~zero], img[~zero])


def test_cutout_corner_centre_is_clipped():
    seed = find_seed(lambda y, x: y < 3 and x > 29)
    y, x = centre_for_seed(seed, 32, 32)
    img = torch.ones(3, 32, 32)
    torch.manual_seed(seed)
    out = Cutout(16)(img)
    rows = (out[0] == 0).any(1).nonzero().flatten()
    cols = (out[0] == 0).any(0).nonzero().flatten()
    assert rows.tolist() == list(range(0, y + 8))
    assert cols.tolist() == list(range(x - 8, 32))
    assert int((out == 0).sum()) == 3 * (y + 8) * (32 - x + 8)
    assert torch.equal(img, torch.ones(3, 32, 32))  # input untouched


def test_cutout_middle_centre_is_full_square():
    seed = find_seed(lambda y, x: 8 <= y <= 24 and 8 <= x <= 24)
    y, x = centre_for_seed(seed, 32, 32)
    img = torch.ones(3, 32, 32)
    torch.manual_seed(seed)
    out = Cutout(16)(img)
    assert out is not img
    assert int((out == 0).sum()) == 3 * 16 * 16
    assert (out[:, y - 8 : y + 8, x - 8 : x + 8] == 0).all()
    assert (img == 1).all()


def test_cutout_bad_input():
    with pytest.raises(ValueError, match="positive integer"):
        Cutout(0)
    with pytest.raises(ValueError, match="unknown AutoAugment policy 'pil'; choose one of reference, torchvision"):
        cifar_train_transform(autoaugment="pil")
    with pytest.raises(TypeError, match="after ToTensor"):
        Cutout(16)(Image.new("RGB", (32, 32)))


def pil_image(seed=0, size=32):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("policy", ["reference", "torchvision"])
def test_train_recipe_structure_and_output(policy):
    t = cifar_train_transform(autoaugment=policy)
    kinds = [type(s) for s in t.transforms]
    augment = ReferenceAutoAugment if policy == "reference" else T.AutoAugment
    assert kinds == [T.RandomCrop, T.RandomHorizontalFlip, augment, T.ToTensor, Cutout, T.Normalize]
    crop, _, aa, _, cut, norm = t.transforms
    assert crop.padding == 4 and crop.size == (32, 32) and crop.fill == 0
    if policy == "torchvision":
        assert aa.policy == T.AutoAugmentPolicy.CIFAR10 and aa.fill == 128
    else:
        assert aa.fill == (128, 128, 128)
    assert cut.size == 16
    assert tuple(norm.mean) == CIFAR_MEAN and tuple(norm.std) == CIFAR_STD
    hole_value = -torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)
    for i in range(20):  # AutoAugment runs on PIL images with many sub-policies
        x = t(pil_image(i))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        for ch in range(3):  # cutout hole (>= 8x8) before Normalize -> -mean/std
            assert int(torch.isclose(x[ch], hole_value[ch], atol=1e-5).sum()) >= 64


def test_contrastive_recipe_structure_and_output():
    t = cifar_contrastive_transform()
    kinds = [type(s) for s in t.transforms]
    assert kinds == [
        T.RandomResizedCrop,
        T.RandomHorizontalFlip,
        T.RandomApply,
        T.RandomGrayscale,
        T.RandomApply,
        T.ToTensor,
        T.Normalize,
    ]
    rrc, _, jitter, gray, blur, _, _ = t.transforms
    assert rrc.size == (32, 32) and rrc.scale == (0.2, 1.0)
    assert jitter.p == 0.8 and isinstance(jitter.transforms[0], T.ColorJitter)
    assert gray.p == 0.2
    assert blur.p == 0.5 and isinstance(blur.transforms[0], RandomGaussianBlur)
    assert blur.transforms[0].sigma == (0.1, 2.0)
    cj = jitter.transforms[0]  # ColorJitter(0.4, 0.4, 0.4, 0.1) of BCL's and NCL's code
    assert cj.brightness == cj.contrast == cj.saturation == pytest.approx((0.6, 1.4)) and cj.hue == (-0.1, 0.1)
    flip = t.transforms[1]
    assert flip.p == 0.5 and rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    for i in range(10):
        x = t(pil_image(i, size=32))
        assert x.shape == (3, 32, 32)


def test_test_recipe_is_totensor_normalize():
    img = pil_image(3)
    x = cifar_test_transform()(img)
    raw = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    want = (raw - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]
    assert torch.allclose(x, want, atol=1e-6)


def test_multiview():
    mv = MultiView([cifar_train_transform(), cifar_contrastive_transform(), cifar_contrastive_transform()])
    assert len(mv) == 3
    views = mv(pil_image(1))
    assert isinstance(views, tuple) and len(views) == 3
    assert all(v.shape == (3, 32, 32) for v in views)
    assert not torch.equal(views[1], views[2])  # independent draws
    assert MultiView([lambda v: v + 1, lambda v: v * 2])(3) == (4, 6)
    with pytest.raises(ValueError, match="at least one"):
        MultiView([])
    with pytest.raises(TypeError, match="transform 1 is not callable"):
        MultiView([str, 5])


def test_registry_builds_every_cifar_recipe():
    assert list_transforms() == sorted(TRANSFORMS)
    assert {"cifar", "cifar_contrastive", "cifar_test", "none"} <= set(TRANSFORMS)
    img = pil_image(2)
    for name in ("cifar", "cifar_contrastive", "cifar_test", "none"):  # large-scale: test_fastjpeg.py
        t = build_transform(name)
        assert build_transform(name) is not t  # fresh instance
        x = t(img)
        assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32)
    none = build_transform("none")
    assert torch.equal(none(img), T.ToTensor()(img))
    tensor = torch.rand(1, 8, 8)
    assert none(tensor) is tensor  # tensors (digits) pass through


def effective_blur(blur, size=33):
    """Standard deviation (px) of a blur's response to one bright pixel in the centre of a
    black image: the width of the blur that an image actually receives."""
    img = np.zeros((size, size, 3), np.uint8)
    img[size // 2, size // 2] = 255
    out = np.asarray(blur(Image.fromarray(img)), dtype=np.float64)[..., 0]
    offsets = np.arange(size) - size // 2
    weight = out.sum(axis=1)  # mass per row
    return float(np.sqrt((weight * offsets**2).sum() / weight.sum()))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5, 2.0])
def test_contrastive_blur_reaches_the_sigma_of_the_pil_recipe(sigma):
    """The BCL / NCL code blurs with PIL's GaussianBlur(radius=sigma); our blur is that filter,
    so its effective width is sigma (within the 8-bit rounding of a one-pixel impulse). A 3x3
    torchvision kernel, the earlier recipe, stays below 0.82 px whatever sigma."""
    ours = effective_blur(RandomGaussianBlur((sigma, sigma)))
    pil = effective_blur(lambda im: im.filter(ImageFilter.GaussianBlur(radius=sigma)))
    assert ours == pytest.approx(pil, abs=1e-12)
    assert ours == pytest.approx(sigma, rel=0.1)
    capped = effective_blur(T.GaussianBlur(3, sigma=sigma))
    assert capped < 0.82 and (sigma < 1 or ours > 1.2 * capped)


def test_contrastive_blur_draws_sigma_uniformly_and_checks_input():
    blur = RandomGaussianBlur((0.1, 2.0))
    torch.manual_seed(0)
    widths = [effective_blur(blur) for _ in range(200)]
    assert min(widths) < 0.4 and 1.7 < max(widths) < 2.1  # tiny sigmas round to no blur
    assert 0.85 < float(np.median(widths)) < 1.25  # uniform on [0.1, 2]: median 1.05
    with pytest.raises(ValueError, match="0 < lo <= hi"):
        RandomGaussianBlur((2.0, 0.1))
    with pytest.raises(TypeError, match="PIL image"):
        blur(torch.zeros(3, 8, 8))


def test_normalisation_statistics_are_those_of_the_authors_code():
    """Written out, not imported: CIFAR's are the DBM code's (not the published std 0.2470,
    0.2435, 0.2616 of the 50,000 images); ImageNet's and iNaturalist's those of the
    large-scale code."""
    from dbm_ltr.data import transforms as tr

    assert tr.CIFAR_MEAN == (0.4914, 0.4822, 0.4465) and tr.CIFAR_STD == (0.2023, 0.1994, 0.2010)
    assert tr.IMAGENET_MEAN == (0.485, 0.456, 0.406) and tr.IMAGENET_STD == (0.229, 0.224, 0.225)
    assert tr.INAT_MEAN == (0.466, 0.471, 0.380) and tr.INAT_STD == (0.195, 0.194, 0.192)
    for name, (mean, std) in {
        "imagenet_test": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        "inat_test": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
    }.items():
        last = build_transform(name).transforms[-1]
        assert last.mean == pytest.approx(mean) and last.std == pytest.approx(std)
