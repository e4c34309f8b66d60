import torch

from dbm_ltr.nn import CosineClassifier


def test_cosine_classifier_outputs_cosines():
    head = CosineClassifier(16, 5)
    x = torch.randn(8, 16)
    cos = head(x)
    want = torch.nn.functional.cosine_similarity(x[:, :, None], head.weight[None], dim=1)
    torch.testing.assert_close(cos, want)
    assert cos.abs().max() <= 1 + 1e-6
    assert not any("bias" in n for n, _ in head.named_parameters())


def test_init_unit_norm_class_vectors_and_zero_features():
    head = CosineClassifier(64, 10)
    torch.testing.assert_close(head.weight.norm(dim=0), torch.ones(10))
    assert torch.equal(head.class_vectors(), head.weight.t())  # row c: class c's raw vector
    x, vectors = torch.randn(4, 64), head.class_vectors().detach()
    angles = torch.rad2deg(torch.arccos(head(x).detach().clamp(-1, 1)))
    by_hand = [
        [torch.rad2deg(torch.arccos(torch.cosine_similarity(x[b], vectors[c], dim=0))) for c in range(10)]
        for b in range(4)
    ]
    torch.testing.assert_close(angles, torch.tensor(by_hand), atol=1e-3, rtol=0)
    out = head(torch.zeros(3, 64))  # a dead ReLU feature: cosines 0, no NaN
    assert torch.equal(out, torch.zeros(3, 10))


def test_cosines_are_float32_under_autocast_and_equal_the_float32_product():
    """Under bfloat16 autocast the head computes in float32: the margin is added to the angle of
    this cosine (a bfloat16 product rounds it by up to ~4e-3)."""
    torch.manual_seed(0)
    head = CosineClassifier(64, 10)
    features = torch.randn(512, 64).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos = head(features)
    want = torch.nn.functional.normalize(features.float(), dim=1) @ torch.nn.functional.normalize(head.weight, dim=0)
    assert cos.dtype == torch.float32 and torch.equal(cos, want)
    cos.sum().backward()
    assert features.grad.dtype == torch.bfloat16 and head.weight.grad.dtype == torch.float32
    assert head.double()(features.detach().double()).dtype == torch.float64
