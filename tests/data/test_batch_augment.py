"""Batched device-side CIFAR recipes (``dbm_ltr.data.batch_augment``) against the per-image
PIL path: op by op with the same parameters, whole recipes with the same draws, the sampling
statistics, determinism, input checks and the absence of host synchronisation."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from scipy import stats
from torchvision import transforms as T
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode
from torchvision.transforms import functional as F
from torchvision.transforms.autoaugment import _apply_op

from dbm_ltr.data import batch_augment as ba
from dbm_ltr.data import pixel_ops as po
from dbm_ltr.data.autoaugment import CIFAR10_SUB_POLICIES, ReferenceAutoAugment, reference_magnitudes, reference_op
from dbm_ltr.data.transforms import CIFAR_MEAN, CIFAR_STD
from dbm_ltr.registry import Registry

REAL = "/work/shared/data/cifar10_test_subset_lossless.npz"
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
GEO_FN = {
    "ShearX": po.shear_x,
    "ShearY": po.shear_y,
    "TranslateX": po.translate_x,
    "TranslateY": po.translate_y,
    "Rotate": po.rotate,
}
BLEND_FN = {
    "Brightness": po.adjust_brightness,
    "Color": po.adjust_saturation,
    "Contrast": po.adjust_contrast,
    "Sharpness": po.adjust_sharpness,
}


# ------------------------------------------------------------------------------------------
# images


def synthetic_images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    """Natural-looking RGB test images: gradients + blocky texture + noise + a saturated and
    a grey patch, plus a constant image and a two-level image (edge cases of equalize,
    autocontrast and hue).  ``(n, h, w, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(max(n - 2, 0)):
        img = (
            rng.uniform(40, 215, (1, 1, 3))
            + rng.uniform(-4, 4, (1, 1, 3)) * xx[..., None]
            + rng.uniform(-4, 4, (1, 1, 3)) * yy[..., None]
        )
        tex = rng.normal(0, 30, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
        img = img + tex + rng.normal(0, 6, (h, w, 3))
        y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
        img[y0 : y0 + 6, x0 : x0 + 6] = rng.permutation([255, 0, rng.integers(0, 256)])
        y1, x1 = rng.integers(0, h - 5), rng.integers(0, w - 5)
        img[y1 : y1 + 5, x1 : x1 + 5] = rng.integers(0, 256)
        out.append(np.clip(np.rint(img), 0, 255))
    if n >= 2:
        out.append(np.full((h, w, 3), 97.0))
        two = np.full((h, w, 3), 30.0)
        two[h // 2 :] = 200.0
        out.append(two)
    return np.stack(out).astype(np.uint8)[:n]


@pytest.fixture(scope="module")
def hwc() -> np.ndarray:
    """24 real CIFAR-10 test images when the shared file exists, and 24 synthetic ones."""
    synth = synthetic_images(24)
    if os.path.exists(REAL):
        real = np.load(REAL)["images"][:24]
        return np.concatenate([real, synth])
    return synthetic_images(48, seed=1)


def to_batch(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(0, 3, 1, 2).contiguous()


def pil_apply(hwc: np.ndarray, fn) -> torch.Tensor:
    """Apply ``fn`` to every image as a PIL image; back to a float (n, 3, H, W) batch."""
    outs = [np.asarray(fn(Image.fromarray(a)), dtype=np.uint8) for a in hwc]
    return to_batch(np.stack(outs)).float()


def assert_close_to_pil(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """At most one intensity level anywhere, and (nearly) always identical: the batched ops
    reproduce Pillow's arithmetic, so any systematic rounding error fails the mean bound."""
    assert ours.shape == ref.shape and ours.dtype == torch.float32, what
    d = (ours - ref).abs()
    assert d.max().item() <= 1.0, f"{what}: max |diff| {d.max().item()}"
    assert d.mean().item() <= 1e-3, f"{what}: mean |diff| {d.mean().item()}"


# ------------------------------------------------------------------------------------------
# AutoAugment tables


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_magnitudes_match_torchvision(hw):
    ours = ba.autoaugment_magnitudes(*hw)
    theirs = AutoAugment(AutoAugmentPolicy.CIFAR10)._augmentation_space(10, hw)
    assert set(ours) == set(theirs) == set(ba.AUTOAUGMENT_OPS)
    for op, (mags, signed) in theirs.items():
        assert ours[op][1] == signed, op
        if mags.dim() == 0:
            assert not ours[op][0].any(), op
        else:
            assert np.array_equal(ours[op][0], mags.double().numpy()), op


#: AutoAugment's CIFAR-10 policy as the paper (Cubuk et al. 2019) and the DBM code's
#: CIFAR10Policy list it: (p1, op1, bin1, p2, op2, bin2), written out here
PAPER_CIFAR10_POLICY = """
0.1 Invert 7 0.2 Contrast 6 | 0.7 Rotate 2 0.3 TranslateX 9 | 0.8 Sharpness 1 0.9 Sharpness 3
0.5 ShearY 8 0.7 TranslateY 9 | 0.5 AutoContrast 8 0.9 Equalize 2 | 0.2 ShearY 7 0.3 Posterize 7
0.4 Color 3 0.6 Brightness 7 | 0.3 Sharpness 9 0.7 Brightness 9 | 0.6 Equalize 5 0.5 Equalize 1
0.6 Contrast 7 0.6 Sharpness 5 | 0.7 Color 7 0.5 TranslateX 8 | 0.3 Equalize 7 0.4 AutoContrast 8
0.4 TranslateY 3 0.2 Sharpness 6 | 0.9 Brightness 6 0.2 Color 8 | 0.5 Solarize 2 0.0 Invert 3
0.2 Equalize 0 0.6 AutoContrast 0 | 0.2 Equalize 8 0.6 Equalize 4 | 0.9 Color 9 0.6 Equalize 6
0.8 AutoContrast 4 0.2 Solarize 8 | 0.1 Brightness 3 0.7 Color 0 | 0.4 Solarize 5 0.9 AutoContrast 3
0.9 TranslateY 9 0.7 TranslateY 9 | 0.9 AutoContrast 2 0.8 Solarize 3 | 0.8 Equalize 8 0.1 Invert 3
0.7 TranslateY 9 0.9 AutoContrast 1
"""


def test_policy_is_the_papers_cifar10_policy():
    """The 25 sub-policies, against the table written out above (ops without a magnitude carry
    no bin); torchvision's table, which the package reads, is the same."""
    no_magnitude = {"AutoContrast", "Equalize", "Invert"}
    want = []
    for sub in PAPER_CIFAR10_POLICY.replace("\n", " | ").split("|"):
        if sub.strip():
            p1, op1, b1, p2, op2, b2 = sub.split()
            stages = ((p1, op1, b1), (p2, op2, b2))
            want.append(tuple((op, float(p), None if op in no_magnitude else int(b)) for p, op, b in stages))
    assert len(want) == 25 and list(ba.CIFAR10_POLICY) == want
    pol = AutoAugment(AutoAugmentPolicy.CIFAR10).policies
    assert [tuple(map(tuple, s)) for s in pol] == list(ba.CIFAR10_POLICY)


# ------------------------------------------------------------------------------------------
# AutoAugment ops, one by one, against torchvision's PIL path (_apply_op on a PIL image)


@pytest.mark.parametrize("op", ba.AUTOAUGMENT_OPS)
def test_autoaugment_op_matches_pil(op, hwc):
    x = to_batch(hwc).float()
    n = len(hwc)
    mags, signed = ba.autoaugment_magnitudes(32, 32)[op]
    cases = [(float(m) * s) for m in mags for s in ((1, -1) if signed else (1,))]
    if op in ("AutoContrast", "Equalize", "Invert"):
        cases = [0.0]
    for m in cases:
        ref = pil_apply(hwc, lambda im: _apply_op(im, op, m, InterpolationMode.NEAREST, [128.0] * 3))
        mt = torch.full((n,), m)
        if op in GEOMETRIC:
            ours = GEO_FN[op](x, mt, 128.0)
        elif op in BLEND_FN:
            ours = BLEND_FN[op](x, 1.0 + mt)
        elif op == "Posterize":
            ours = po.posterize(x, torch.full((n,), float(int(m))))
        elif op == "Solarize":
            ours = po.solarize(x, mt)
        else:
            ours = {"AutoContrast": po.autocontrast, "Equalize": po.equalize, "Invert": po.invert}[op](x)
        assert_close_to_pil(ours, ref, f"{op} magnitude {m}")


@pytest.mark.parametrize("op", GEOMETRIC)
def test_geometric_ops_non_square_and_per_image_magnitudes(op):
    """Sizes read from the tensor (translate bins use W / H, rotation centre (W/2, H/2)),
    and different magnitudes within one call."""
    hwc = synthetic_images(12, h=24, w=40, seed=3)
    x = to_batch(hwc).float()
    mags = ba.autoaugment_magnitudes(24, 40)[op][0]
    per_image = np.array([mags[i % 10] * (1 if i % 3 else -1) for i in range(12)])
    ours = GEO_FN[op](x, torch.from_numpy(per_image))
    ref = torch.stack(
        [
            pil_apply(a[None], lambda im, m=float(m): _apply_op(im, op, m, InterpolationMode.NEAREST, [128.0] * 3))[0]
            for a, m in zip(hwc, per_image)
        ]
    )
    assert_close_to_pil(ours, ref, op)
    # a geometric op must actually move pixels and bring in the fill
    big = po.rotate(x[:1], torch.tensor([30.0]))
    assert (big == 128).all(1).any() and not torch.equal(big, x[:1])


def test_equalize_lut_overflow_is_clipped_like_pil():
    """511 pixels below the maximum: step 2, remainder 1, so the LUT entry of the maximum is
    (1 + 511) // 2 = 256, which Image.point clips to 255."""
    a = np.full((32, 32, 3), 200, np.uint8)
    a.reshape(-1, 3)[:511] = (np.arange(511) % 190)[:, None]
    ref = pil_apply(a[None], ImageOps.equalize)
    assert ref.max() == 255
    assert torch.equal(po.equalize(to_batch(a[None]).float()), ref)


def test_affine_fill_and_translation_semantics():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    out = po.translate_x(x, torch.tensor([2.9, -1.2]), fill=7.0)  # int(): 2 and -1
    assert torch.equal(out[0, :, :, 2:], x[0, :, :, :3]) and (out[0, :, :, :2] == 7).all()
    assert torch.equal(out[1, :, :, :4], x[1, :, :, 1:]) and (out[1, :, :, 4] == 7).all()


# ------------------------------------------------------------------------------------------
# the reference policy (the DBM code's per-image CIFAR10Policy)


def naive_reference_op(img: Image.Image, op: str, bin_: int, sign: int) -> Image.Image:
    """The DBM code's CIFAR policy op, written out from its definition: bins of 10 levels,
    magnitudes linspace(0, 0.3) shear (bicubic), linspace(0, 150/331) * side translate
    (nearest), linspace(0, 30) rotate (always +, RGBA rotated and pasted on grey),
    linspace(0, 0.9) enhancements, round(linspace(8, 4)) posterize, linspace(256, 0) solarize."""
    fill = (128, 128, 128)
    lin = lambda a, b: np.linspace(a, b, 10)[bin_]  # noqa: E731
    if op in ("ShearX", "ShearY"):
        m = lin(0, 0.3) * sign
        coeffs = (1, m, 0, 0, 1, 0) if op == "ShearX" else (1, 0, 0, m, 1, 0)
        return img.transform(img.size, Image.AFFINE, coeffs, Image.BICUBIC, fillcolor=fill)
    if op in ("TranslateX", "TranslateY"):
        m = lin(0, 150 / 331) * sign
        coeffs = (1, 0, m * img.size[0], 0, 1, 0) if op == "TranslateX" else (1, 0, 0, 0, 1, m * img.size[1])
        return img.transform(img.size, Image.AFFINE, coeffs, fillcolor=fill)
    if op == "Rotate":
        rot = img.convert("RGBA").rotate(lin(0, 30))
        return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert("RGB")
    from PIL import ImageEnhance

    enhance = {
        "Color": ImageEnhance.Color,
        "Contrast": ImageEnhance.Contrast,
        "Sharpness": ImageEnhance.Sharpness,
        "Brightness": ImageEnhance.Brightness,
    }
    if op in enhance:
        return enhance[op](img).enhance(1 + lin(0.0, 0.9) * sign)
    if op == "Posterize":
        return ImageOps.posterize(img, int(np.round(lin(8, 4))))
    if op == "Solarize":
        return ImageOps.solarize(img, lin(256, 0))
    return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize, "Invert": ImageOps.invert}[op](img)


def test_reference_magnitudes_are_the_policys_bins():
    table = reference_magnitudes(24, 40)
    assert set(table) == set(ba.AUTOAUGMENT_OPS)
    assert np.array_equal(table["TranslateX"][0], np.linspace(0, 150 / 331, 10) * 40)
    assert np.array_equal(table["TranslateY"][0], np.linspace(0, 150 / 331, 10) * 24)
    assert list(table["Posterize"][0]) == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert table["Solarize"][0][0] == 256 and table["Solarize"][0][-1] == 0
    assert table["Rotate"][1] is False and table["ShearX"][1] and table["Color"][1]
    assert table["Rotate"][0].dtype == np.float64


@pytest.mark.parametrize("op", ba.AUTOAUGMENT_OPS)
def test_reference_op_is_the_written_out_definition_and_the_batched_twin_matches(op, hwc):
    x = to_batch(hwc).float()
    n = len(hwc)
    values, signed = reference_magnitudes(32, 32)[op]
    bins = range(10) if values.any() else [0]
    for b in bins:
        for sign in (1, -1) if signed else (1,):
            value = float(values[b]) * sign
            naive = pil_apply(hwc, lambda im: naive_reference_op(im, op, b, sign))
            ref = pil_apply(hwc, lambda im: reference_op(im, op, value))
            assert torch.equal(ref, naive), f"{op} bin {b} sign {sign}"
            v = torch.full((n,), value, dtype=torch.float64)
            if op in ("ShearX", "ShearY"):
                ours = po.affine_bicubic(x, po.reference_affine_matrix(op, v, 32, 32))
            elif op in GEOMETRIC:
                ours = po.affine_nearest(x, po.reference_affine_matrix(op, v, 32, 32))
            elif op in BLEND_FN:
                ours = BLEND_FN[op](x, 1.0 + v)
            elif op == "Posterize":
                ours = po.posterize(x, v)
            elif op == "Solarize":
                ours = po.solarize(x, v)
            else:
                ours = {"AutoContrast": po.autocontrast, "Equalize": po.equalize, "Invert": po.invert}[op](x)
            assert_close_to_pil(ours, ref, f"{op} bin {b} sign {sign}")
            if op in GEOMETRIC:  # Pillow's geometry is reproduced exactly
                assert torch.equal(ours, ref), f"{op} bin {b} sign {sign}"


def test_reference_translation_rounds_to_the_nearest_pixel():
    """Pillow's nearest float path samples x + 0.5 + v, floored: a whole-pixel shift of
    floor(v + 0.5): 14.5015 px (the largest bin at 32 px) moves 15 pixels either way, where
    torchvision's int() moves 14."""
    top = float(reference_magnitudes(32, 32)["TranslateX"][0][-1])
    assert 14.5 < top < 14.51
    x = torch.arange(32, dtype=torch.float32).repeat(1, 3, 32, 1)
    for v, shift in ((top, 15), (-top, -15), (4.834, 5), (-4.834, -5), (0.4, 0), (-0.4, 0)):
        out = po.affine_nearest(
            x, po.reference_affine_matrix("TranslateX", torch.tensor([v], dtype=torch.float64), 32, 32), fill=7.0
        )
        expect = torch.tensor([c + shift if 0 <= c + shift < 32 else 7.0 for c in range(32)])
        assert torch.equal(out[0, 0, 0], expect), (v, out[0, 0, 0])
    tv = po.translate_x(x, torch.tensor([top]), fill=7.0)  # torchvision: int(14.5) = 14 to the right
    assert torch.equal(tv[0, 0, 0, 14:], torch.arange(18, dtype=torch.float32))


def test_affine_bicubic_semantics():
    """Identity keeps the image; a half-pixel shift interpolates with Pillow's a = -1 cubic;
    outside the image the fill stays; a row below the image repeats the row before."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 9, 11), generator=g).float()
    ident = torch.tensor([[1, 0, 0, 0, 1, 0]] * 2, dtype=torch.float64)
    assert torch.equal(po.affine_bicubic(x, ident), x)
    half = torch.tensor([[1, 0, 0.5, 0, 1, 0]] * 2, dtype=torch.float64)
    out = po.affine_bicubic(x, half, fill=7.0)
    a, b, c, d = (x[..., k : k + 7] for k in range(4))  # taps x-1 .. x+2 at dx = 0.5, inner columns
    cubic = b + 0.5 * ((c - a) + 0.5 * ((2 * (a - b) + c - d) + 0.5 * (b - a - c + d)))
    assert torch.equal(out[..., 1:8], torch.trunc(cubic.clamp(0, 255)))
    assert (out[..., -1] == 7.0).all()  # x + 0.5 + 0.5 = 11: outside
    for v in (255.0, 0.0):  # overshoot is clipped
        flat = torch.full((1, 3, 9, 11), v)
        flat[..., 5] = 255.0 - v
        assert po.affine_bicubic(flat, half[:1]).min() >= 0 and po.affine_bicubic(flat, half[:1]).max() <= 255
    # the image's last row, sampled half a pixel further down, interpolates against itself
    down = torch.tensor([[1, 0, 0, 0, 1, 0.5]], dtype=torch.float64)
    ref = pil_apply(
        x[:1].permute(0, 2, 3, 1).to(torch.uint8).numpy(),
        lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, 0.5), Image.BICUBIC, fillcolor=(7, 7, 7)),
    )
    assert torch.equal(po.affine_bicubic(x[:1], down, fill=7.0), ref)


def test_reference_policy_per_image_and_batched_sampling_agree():
    """Sub-policy frequencies of the per-image policy's draws and the batched twin's are both
    uniform and alike (chi-square over 20,000 draws each), and so are the apply rates."""
    torch.manual_seed(0)
    draws = [ReferenceAutoAugment.sample() for _ in range(N)]
    per_image = np.bincount([d[0] for d in draws], minlength=25)
    batched = ba.BatchCifarTrain(autoaugment="reference").sample(N, 32, 32, torch.Generator().manual_seed(1))
    batched_counts = np.bincount(batched.sub_policy, minlength=25)
    assert stats.chisquare(per_image).pvalue > 1e-3 and stats.chisquare(batched_counts).pvalue > 1e-3
    assert stats.chi2_contingency(np.stack([per_image, batched_counts])).pvalue > 1e-3
    probs = np.array([[s[1] for s in sub] for sub in CIFAR10_SUB_POLICIES])
    per_image_applied = np.array([[u < probs[k, i] for i, u in enumerate(us)] for k, us, _ in draws])
    for stage in range(2):
        a = int(per_image_applied[:, stage].sum())
        b = int(batched.applied[:, stage].sum())
        assert binom_ok(a, N, probs[:, stage].mean()) and binom_ok(b, N, probs[:, stage].mean())
    assert binom_ok(sum(s[0] == 0 for _, _, s in draws), N, 0.5)


def test_reference_per_image_policy_applies_its_draws(hwc):
    policy = ReferenceAutoAugment()
    img = Image.fromarray(hwc[0])
    k = next(i for i, sub in enumerate(CIFAR10_SUB_POLICIES) if sub[0][0] == "TranslateY")
    assert policy.apply(img, k, [0.99, 0.99], [1, 1]) is img  # nothing applied
    out = policy.apply(img, k, [0.0, 0.99], [0, 1])
    value = -float(reference_magnitudes(32, 32)["TranslateY"][0][CIFAR10_SUB_POLICIES[k][0][2]])
    assert np.array_equal(np.asarray(out), np.asarray(reference_op(img, "TranslateY", value)))
    with pytest.raises(TypeError, match="PIL image"):
        policy(torch.zeros(3, 32, 32))


# ------------------------------------------------------------------------------------------
# contrastive ops


@pytest.mark.parametrize("factor", [0.6, 0.77, 1.0, 1.23, 1.4])
def test_colour_jitter_ops_match_pil(factor, hwc):
    x = to_batch(hwc).float()
    f = torch.full((len(hwc),), factor)
    assert_close_to_pil(
        po.adjust_brightness(x, f), pil_apply(hwc, lambda im: F.adjust_brightness(im, factor)), "brightness"
    )
    assert_close_to_pil(po.adjust_contrast(x, f), pil_apply(hwc, lambda im: F.adjust_contrast(im, factor)), "contrast")
    assert_close_to_pil(
        po.adjust_saturation(x, f), pil_apply(hwc, lambda im: F.adjust_saturation(im, factor)), "saturation"
    )


@pytest.mark.parametrize("hue", [-0.1, -0.0613, -0.013, 0.0, 0.004, 0.05, 0.1])
def test_hue_matches_pil(hue, hwc):
    """torchvision's PIL hue: 8-bit HSV round trip with H += int(255 h); reproduced exactly
    (no tensor-path approximation needed)."""
    h = float(np.float32(hue))
    ours = po.adjust_hue(to_batch(hwc).float(), torch.full((len(hwc),), h))
    assert_close_to_pil(ours, pil_apply(hwc, lambda im: F.adjust_hue(im, h)), f"hue {h}")


def test_grayscale_matches_pil(hwc):
    ours = po.rgb_to_grayscale(to_batch(hwc).float())
    assert_close_to_pil(ours, pil_apply(hwc, lambda im: F.rgb_to_grayscale(im, 3)), "grayscale")
    assert torch.equal(ours[:, 0], ours[:, 1]) and torch.equal(ours[:, 0], ours[:, 2])


def test_resized_crop_matches_pil(hwc):
    g = torch.Generator().manual_seed(5)
    boxes = ba._sample_resized_crop(len(hwc), 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), g)
    boxes[:4] = [[0, 0, 32, 32], [5, 3, 14, 20], [18, 18, 14, 14], [0, 9, 32, 23]]
    ours = po.resized_crop(to_batch(hwc).float(), torch.from_numpy(boxes), (32, 32))
    ref = torch.stack(
        [
            pil_apply(a[None], lambda im, b=b: F.resized_crop(im, *map(int, b), [32, 32], InterpolationMode.BILINEAR))[
                0
            ]
            for a, b in zip(hwc, boxes)
        ]
    )
    assert_close_to_pil(ours, ref, "resized_crop")
    assert torch.equal(ours[0], to_batch(hwc[:1]).float()[0])  # full box: identity


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 1.37, 2.0])
def test_blur_matches_pil_gaussian_blur(sigma, hwc):
    """Pillow's GaussianBlur: 3 extended box passes per axis, 8.24 fixed point, uint8 after
    every pass; reproduced pass by pass, so pixel-exact up to the 1-level bound."""
    s = float(np.float32(sigma))
    ours = po.gaussian_blur(to_batch(hwc).float(), torch.full((len(hwc),), s))
    ref = pil_apply(hwc, lambda im: im.filter(ImageFilter.GaussianBlur(radius=s)))
    assert_close_to_pil(ours, ref, f"blur sigma {s}")


def _response_std(resp: np.ndarray, centre: int) -> tuple[float, float]:
    r = np.asarray(resp, dtype=np.float64)
    ys, xs = np.mgrid[0 : r.shape[0], 0 : r.shape[1]]
    m = r.sum()
    return (math.sqrt((r * (xs - centre) ** 2).sum() / m), math.sqrt((r * (ys - centre) ** 2).sum() / m))


def test_effective_blur_width():
    """Std of the response to one bright pixel: equals PIL's for every sigma, follows sigma
    (about 2 px at sigma 2), unlike torchvision's 3x3 kernel that saturates near 0.8 px."""
    a = np.zeros((33, 33, 3), np.uint8)
    a[16, 16] = 255
    x = to_batch(a[None]).float()
    for sigma in (0.5, 1.0, 1.5, 2.0):
        ours = po.gaussian_blur(x, torch.tensor([sigma]))[0, 0].numpy()
        pil = np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius=sigma)))[..., 0]
        sx, sy = _response_std(ours, 16)
        px, py = _response_std(pil, 16)
        assert abs(sx - px) <= 0.02 and abs(sy - py) <= 0.02, (sigma, sx, sy, px, py)
        assert 0.85 * sigma <= sx <= 1.1 * sigma and 0.85 * sigma <= sy <= 1.1 * sigma
    assert min(sx, sy) >= 1.8  # sigma 2 -> ~2 px
    tv = np.asarray(T.GaussianBlur(3, sigma=(2.0, 2.0))(Image.fromarray(a)))[..., 0]
    assert max(_response_std(tv, 16)) < 0.85 < min(sx, sy)


def test_blur_box_radius_bound():
    """gaussian_blur sizes its taps from max_sigma: the integer box radius must be monotone
    in sigma and never exceed floor(sigma)."""
    s = torch.arange(1, 40001, dtype=torch.float64).float() * 5e-4  # up to 20
    rf = po._pil_box_radius(s)
    assert bool((rf[1:] >= rf[:-1]).all())
    assert bool((rf.long() <= s.floor().long()).all())


def test_blur_box_parameters_match_pillow_c_arithmetic():
    """Radius, box weight and end weight against a scalar float32 re-statement of
    ``_gaussian_blur_radius`` / ``ImagingHorizontalBoxBlur`` for sigma 0.1 .. 2 (step 1e-4)."""
    f32 = np.float32
    sig = (torch.arange(1000, 20001, dtype=torch.float64) * 1e-4).float()
    want = []
    for s in sig.numpy():
        s2 = f32(s * s) / f32(3)
        big_l = f32(math.sqrt(12.0 * float(s2) + 1.0))
        small_l = f32(math.floor((float(big_l) - 1.0) / 2.0))
        a = (f32(2) * small_l + f32(1)) * (small_l * (small_l + f32(1)) - f32(3) * s2)
        rf = f32(small_l + a / (f32(6) * (s2 - (small_l + f32(1)) * (small_l + f32(1)))))
        ww = int(f32(16777216.0) / (rf * f32(2) + f32(1)))
        want.append((int(rf), ww, ((1 << 24) - (2 * int(rf) + 1) * ww) // 2))
    rf = po._pil_box_radius(sig)
    r = rf.long()
    ww = po._div(po._num(16777216.0, rf), rf * 2 + 1).long()
    fw = ((1 << 24) - (2 * r + 1) * ww) // 2
    assert np.array_equal(torch.stack([r, ww, fw], 1).numpy(), np.array(want))


def test_resample_coefficients_match_pillow_c_arithmetic():
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` (BILINEAR) restated with
    Python doubles, for every box size 1..32 onto 32 and some downscales."""
    for out_size, sizes in ((32, range(1, 33)), (8, (9, 16, 23, 32))):
        offs, kint = po._bilinear_coeffs(torch.tensor(list(sizes)), out_size, 32)
        for row, in_size in enumerate(sizes):
            scale = in_size / out_size
            fscale = max(scale, 1.0)
            support = 1.0 * fscale
            for xx in range(out_size):
                center = (xx + 0.5) * scale
                xmin = max(int(center - support + 0.5), 0)
                xmax = min(int(center + support + 0.5), in_size) - xmin
                w = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * (1.0 / fscale))) for x in range(xmax)]
                total = sum(w)
                want = [int(0.5 + wi / total * (1 << 22)) for wi in w]
                k = kint[row, xx].tolist()
                assert k[:xmax] == want and not any(k[xmax:]), (in_size, xx)
                assert offs[row, xx, :xmax].tolist() == list(range(xmin, xmin + xmax))


def test_crop_flip_cutout_normalise_match_torchvision(hwc):
    n = len(hwc)
    g = torch.Generator().manual_seed(2)
    off = torch.randint(0, 9, (n, 2), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    ours = po.pad_crop(to_batch(hwc).float(), off, 4, flip=flip)
    ref = torch.stack(
        [
            pil_apply(
                a[None],
                lambda im, o=o, f=f: (F.hflip if f else (lambda t: t))(
                    F.crop(F.pad(im, 4, fill=0), int(o[0]), int(o[1]), 32, 32)
                ),
            )[0]
            for a, o, f in zip(hwc, off, flip)
        ]
    )
    assert torch.equal(ours, ref)
    assert torch.equal(po.hflip(ours, flip), torch.where(flip.view(-1, 1, 1, 1), ours.flip(-1), ours))
    unit = po.normalize(po.to_unit(to_batch(hwc)), CIFAR_MEAN, CIFAR_STD)
    tv = torch.stack([T.Normalize(CIFAR_MEAN, CIFAR_STD)(F.to_tensor(a)) for a in hwc])
    assert torch.equal(unit, tv)


def test_cutout_hole_at_corner_and_centre():
    x = torch.full((3, 3, 32, 32), 9.0)
    out = po.cutout(x, torch.tensor([[1, 30], [16, 16], [31, 0]]), 16)
    zero = out[:, 0] == 0
    assert (out == 0).all(1).eq(zero).all()  # all channels together
    assert zero[0].nonzero()[:, 0].unique().tolist() == list(range(0, 9))  # rows y-8..y+7 clipped
    assert zero[0].nonzero()[:, 1].unique().tolist() == list(range(22, 32))
    assert int(zero[0].sum()) == 9 * 10
    assert int(zero[1].sum()) == 256 and bool(zero[1, 8:24, 8:24].all())
    assert zero[2].nonzero()[:, 0].unique().tolist() == list(range(23, 32))
    assert zero[2].nonzero()[:, 1].unique().tolist() == list(range(0, 8))
    assert (x == 9).all()  # input untouched


# ------------------------------------------------------------------------------------------
# whole recipes against the PIL recipes, given the same draws


def pil_reference_cifar(hwc: np.ndarray, p: ba.CifarTrainParams) -> torch.Tensor:
    norm = T.Normalize(CIFAR_MEAN, CIFAR_STD)
    ops, applied, mags = p.ops, p.applied, p.magnitudes
    outs = []
    for b, a in enumerate(hwc):
        im = F.crop(F.pad(Image.fromarray(a), 4, fill=0), int(p.crop[b, 0]), int(p.crop[b, 1]), 32, 32)
        if p.flip[b]:
            im = F.hflip(im)
        for s in range(2):
            if applied[b, s] and p.policy == "torchvision":
                im = _apply_op(
                    im, ba.AUTOAUGMENT_OPS[ops[b, s]], float(mags[b, s]), InterpolationMode.NEAREST, [128.0] * 3
                )
            elif applied[b, s]:
                im = reference_op(im, ba.AUTOAUGMENT_OPS[ops[b, s]], float(mags[b, s]))
        t = F.to_tensor(im)
        y, x = (int(v) for v in p.cutout[b])
        t[:, max(0, y - 8) : max(0, y + 8), max(0, x - 8) : max(0, x + 8)] = 0
        outs.append(norm(t))
    return torch.stack(outs)


def pil_reference_contrastive(hwc: np.ndarray, p: ba.CifarContrastiveParams) -> torch.Tensor:
    norm = T.Normalize(CIFAR_MEAN, CIFAR_STD)
    jitter = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    outs = []
    for b, a in enumerate(hwc):
        im = F.resized_crop(Image.fromarray(a), *map(int, p.boxes[b]), [32, 32], InterpolationMode.BILINEAR)
        if p.flip[b]:
            im = F.hflip(im)
        if p.jitter[b]:
            for fn in p.order[b]:
                im = jitter[fn](im, float(p.factors[b, fn]))
        if p.gray[b]:
            im = F.rgb_to_grayscale(im, 3)
        if p.blur[b]:
            im = im.filter(ImageFilter.GaussianBlur(radius=float(p.sigma[b])))
        outs.append(norm(F.to_tensor(im)))
    return torch.stack(outs)


def assert_recipe_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Normalised outputs within one intensity level, (nearly) all identical."""
    level = torch.tensor([1 / 255 / s for s in CIFAR_STD]).view(1, 3, 1, 1)
    d = (ours - ref).abs()
    assert (d <= level * 1.0001).all(), d.max()
    assert (d > 1e-6).float().mean() <= 1e-3


@pytest.mark.parametrize("policy", ["reference", "torchvision"])
def test_cifar_recipe_equals_pil_recipe_with_same_draws(hwc, policy):
    recipe = ba.create_batch_recipe("cifar", autoaugment=policy)
    hwc = np.concatenate([hwc] * 4)  # 192 images; with this seed every op kind shows up
    p = recipe.sample(len(hwc), 32, 32, torch.Generator().manual_seed(0))
    assert p.policy == policy
    used = {ba.AUTOAUGMENT_OPS[o] for o in p.ops[p.applied]}
    assert len(used) == 13  # all ops of the CIFAR10 policy took part (no ShearX in it)
    assert_recipe_close(recipe.apply(to_batch(hwc), p), pil_reference_cifar(hwc, p))


def test_the_default_recipe_is_the_reference_policy():
    assert ba.create_batch_recipe("cifar").autoaugment == "reference"
    with pytest.raises(ValueError, match="unknown AutoAugment policy 'tv'; choose one of reference, torchvision"):
        ba.create_batch_recipe("cifar", autoaugment="tv")


def test_contrastive_recipe_equals_pil_recipe_with_same_draws(hwc):
    recipe = ba.create_batch_recipe("cifar_contrastive")
    p = recipe.sample(len(hwc), 32, 32, torch.Generator().manual_seed(12))
    assert p.jitter.any() and p.gray.any() and p.blur.any() and (~p.jitter).any()
    assert_recipe_close(recipe.apply(to_batch(hwc), p), pil_reference_contrastive(hwc, p))


# ------------------------------------------------------------------------------------------
# sampling statistics (host draws only, no images)

N = 20_000


def binom_ok(k: int, n: int, p: float, z: float = 4.5) -> bool:
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("policy", ["reference", "torchvision"])
def test_cifar_sampling_statistics(policy):
    p = ba.BatchCifarTrain(autoaugment=policy).sample(N, 32, 32, torch.Generator().manual_seed(0))
    assert stats.chisquare(np.bincount(p.sub_policy, minlength=25)).pvalue > 1e-3
    # apply frequency of every (sub-policy, stage) against the policy probability
    probs = np.array([[s[1] for s in sub] for sub in ba.CIFAR10_POLICY])
    chi2, dof = 0.0, 0
    for k in range(25):
        rows = p.sub_policy == k
        for s in range(2):
            n_k, hits, q = rows.sum(), p.applied[rows, s].sum(), probs[k, s]
            if q in (0.0, 1.0):
                assert hits == n_k * q, (k, s)
                continue
            chi2 += (hits - n_k * q) ** 2 / (n_k * q * (1 - q))
            dof += 1
    assert stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)
    for col in range(2):
        assert binom_ok(int((p.signs[:, col] == 0).sum()), N, 0.5)
        assert stats.chisquare(np.bincount(p.crop[:, col], minlength=9)).pvalue > 1e-3
        assert p.crop[:, col].min() == 0 and p.crop[:, col].max() == 8
    assert binom_ok(int(p.flip.sum()), N, 0.5)
    cells = np.bincount(p.cutout[:, 0] * 32 + p.cutout[:, 1], minlength=1024)
    assert stats.chisquare(cells).pvalue > 1e-3 and cells.size == 1024
    # signed magnitudes from the bins: torchvision rotates both ways, the reference policy
    # counter-clockwise only; both shift both ways
    mags = p.magnitudes[p.ops == ba.AUTOAUGMENT_OPS.index("Rotate")]
    assert set(np.round(np.abs(mags), 4)) == {round(30 * 2 / 9, 4)}
    assert (mags < 0).any() == (policy == "torchvision")
    shifts = p.magnitudes[p.ops == ba.AUTOAUGMENT_OPS.index("TranslateY")]
    assert (shifts < 0).any() and (shifts > 0).any()


def test_contrastive_sampling_statistics():
    recipe = ba.BatchCifarContrastive()
    p = recipe.sample(N, 32, 32, torch.Generator().manual_seed(1))
    assert binom_ok(int(p.jitter.sum()), N, 0.8)
    assert binom_ok(int(p.gray.sum()), N, 0.2)
    assert binom_ok(int(p.blur.sum()), N, 0.5)
    assert binom_ok(int(p.flip.sum()), N, 0.5)
    for j, (lo, hi) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
        f = p.factors[:, j]
        assert f.min() >= lo and f.max() <= hi
        assert stats.kstest(f, "uniform", args=(lo, hi - lo)).pvalue > 1e-3
    assert stats.kstest(p.sigma, "uniform", args=(0.1, 1.9)).pvalue > 1e-3
    perms = p.order @ np.array([64, 16, 4, 1])
    assert all(sorted(o) == [0, 1, 2, 3] for o in p.order[:50])
    assert stats.chisquare(np.unique(perms, return_counts=True)[1]).pvalue > 1e-3
    assert len(np.unique(perms)) == 24


def test_resized_crop_sampling_matches_torchvision():
    """The vectorised 10 attempts give torchvision's RandomResizedCrop.get_params distribution."""
    n = 6000
    ours = ba._sample_resized_crop(n, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3))
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    assert (h * w >= 0.15 * 1024).all()
    torch.manual_seed(4)
    img = torch.zeros(3, 32, 32)
    ref = np.array([T.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    for ours_col, ref_col in (
        (h * w, ref[:, 2] * ref[:, 3]),
        (w - h, ref[:, 3] - ref[:, 2]),
        (top + h / 2, ref[:, 0] + ref[:, 2] / 2),
        (left, ref[:, 1]),
    ):
        assert stats.ks_2samp(ours_col, ref_col).pvalue > 1e-3
    # fallback: no attempt fits -> central crop clipped to the ratio range
    wide = ba._sample_resized_crop(200, 4, 40, (0.99, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert (wide == [0, 18, 4, 4]).all()


# ------------------------------------------------------------------------------------------
# recipe behaviour


@pytest.fixture(scope="module")
def batch(hwc) -> torch.Tensor:
    return to_batch(hwc[:16])


@pytest.mark.parametrize("name", ["cifar", "cifar_contrastive", "cifar_test"])
def test_determinism_shape_dtype_device(name, batch):
    recipe = ba.create_batch_recipe(name)
    before = batch.clone()
    a = recipe(batch, torch.Generator().manual_seed(7))
    b = recipe(batch, torch.Generator().manual_seed(7))
    c = recipe(batch, torch.Generator().manual_seed(8))
    assert a.shape == batch.shape and a.dtype == torch.float32 and a.device == batch.device
    assert torch.equal(a, b)
    assert torch.equal(a, c) == (name == "cifar_test")
    assert torch.equal(batch, before)  # input untouched
    one = recipe(batch[:1], torch.Generator().manual_seed(7))
    assert one.shape == (1, 3, 32, 32)
    odd = recipe(torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8), torch.Generator())
    assert odd.shape == (3, 3, 24, 40) and torch.isfinite(odd).all()


def test_cifar_test_values(batch):
    out = ba.create_batch_recipe("cifar_test", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))(batch, None)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    assert torch.equal(out, (batch.float() / 255 - mean) / std)


def test_cutout_through_the_recipe():
    recipe = ba.BatchCifarTrain(cutout=16)
    p = recipe.sample(2, 32, 32, torch.Generator().manual_seed(0))
    p.crop[:] = 4  # no shift
    p.flip[:] = False
    p.probs[:] = 1.0  # 1.0 < p never holds in the CIFAR10 policy: no AutoAugment op
    p.cutout[:] = [[0, 31], [20, 10]]
    x = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    out = recipe.apply(x, p)
    zero_level = torch.tensor([-m / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)]).view(3, 1, 1)
    hole = torch.isclose(out, zero_level.expand(3, 32, 32)).all(1)
    assert int(hole[0].sum()) == 8 * 9 and bool(hole[0, 0:8, 23:32].all())
    assert int(hole[1].sum()) == 256 and bool(hole[1, 12:28, 2:18].all())
    assert torch.allclose(out[:, :, 31, 0], ((200 / 255 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)))


def test_registry_and_factories():
    assert isinstance(ba.BATCH_RECIPES, Registry)
    assert ba.list_batch_recipes() == ["cifar", "cifar_contrastive", "cifar_test"]
    r = ba.create_batch_recipe("cifar", cutout=8, mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert r.cutout == 8 and r.mean == (0.1, 0.2, 0.3)
    assert "AutoAugment" in repr(r) and "cutout=8" in repr(r)
    assert "blur" in repr(ba.create_batch_recipe("cifar_contrastive"))
    assert "normalize" in repr(ba.create_batch_recipe("cifar_test"))
    with pytest.raises(ValueError, match="unknown batch recipe 'cifar_foo'; available: cifar"):
        ba.create_batch_recipe("cifar_foo")
    with pytest.raises(ValueError, match="cutout"):
        ba.create_batch_recipe("cifar", cutout=-1)
    with pytest.raises(ValueError, match="3 values"):
        ba.create_batch_recipe("cifar_test", mean=(0.5, 0.5))


@pytest.mark.parametrize("name", ["cifar", "cifar_contrastive", "cifar_test"])
def test_bad_input_errors(name, batch):
    recipe = ba.create_batch_recipe(name)
    g = torch.Generator()
    with pytest.raises(ValueError, match="uint8"):
        recipe(batch.float(), g)
    with pytest.raises(ValueError, match="4-D"):
        recipe(batch[0], g)
    with pytest.raises(ValueError, match="3 channels"):
        recipe(batch[:, :1], g)
    with pytest.raises(ValueError, match="3 channels"):
        recipe(batch.permute(0, 2, 3, 1).contiguous(), g)
    with pytest.raises(TypeError, match="torch.Tensor"):
        recipe(batch.numpy(), g)
    if name != "cifar_test":
        with pytest.raises(TypeError, match="CPU torch.Generator"):
            recipe(batch, None)
    with pytest.raises(TypeError, match="CPU torch.Generator"):
        recipe(batch, np.random.default_rng(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")
def test_cuda_generator_rejected(batch):
    with pytest.raises(TypeError, match="CPU"):
        ba.create_batch_recipe("cifar")(batch, torch.Generator(device="cuda"))


# ------------------------------------------------------------------------------------------
# no host synchronisation


@pytest.mark.parametrize("name", ["cifar", "cifar_contrastive", "cifar_test"])
def test_recipes_run_on_meta_device(name, batch, monkeypatch):
    """On the meta device tensors hold no values: any .item(), .tolist(), .nonzero(),
    bool(), boolean-mask index or data-dependent shape on a device tensor raises.  The whole
    recipe running there proves it never reads the batch or its parameters back; and the
    parameters reach the device in at most two copies."""
    images = batch.to("meta")
    copies = []
    to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "meta":
            copies.append(tuple(self.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    out = ba.create_batch_recipe(name)(images, torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == batch.shape and out.dtype == torch.float32
    assert 1 <= len(copies) <= 2, copies
    with pytest.raises(Exception):  # the premise: reading a meta tensor fails
        out.sum().item()


@pytest.mark.parametrize("name", ["cifar", "cifar_contrastive"])
def test_recipes_never_call_syncing_methods(name, batch, monkeypatch):
    """The same on a CPU batch with the syncing tensor methods patched to raise."""

    def boom(*args, **kwargs):
        raise AssertionError("host synchronisation inside a recipe")

    recipe = ba.create_batch_recipe(name)
    for attr in (
        "item",
        "tolist",
        "nonzero",
        "__bool__",
        "__int__",
        "__float__",
        "unique",
        "masked_select",
        "argwhere",
    ):
        monkeypatch.setattr(torch.Tensor, attr, boom)
    for fn in ("nonzero", "unique", "masked_select", "argwhere", "bincount"):
        monkeypatch.setattr(torch, fn, boom)
    out = recipe(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
