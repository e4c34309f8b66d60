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
    assert head.class_vectors().shape == (10, 64)
    out = head(torch.zeros(3, 64))  # a dead ReLU feature: cosines 0, no NaN
    assert torch.equal(out, torch.zeros(3, 10))
