import pytest
import torch

from dbm_ltr.models import create_model, create_trunk, list_trunks
from dbm_ltr.models.resnet_cifar import _PadShortcut
from dbm_ltr.nn import CosineClassifier


def test_resnet32_size_and_outputs():
    model = create_model("resnet32", 100, "cosine")
    n = sum(p.numel() for p in model.parameters())
    assert 0.45e6 < n < 0.48e6  # about 0.46 M, as the CIFAR ResNet-32
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (3, 64) and (feats >= 0).all()  # post-ReLU pooled features
    cos = model(x)
    assert cos.shape == (3, 100) and cos.abs().max() <= 1 + 1e-6
    assert isinstance(model.head, CosineClassifier)
    assert model.class_weights().shape == (100, 64)


def test_resnet_depths_and_option_a_shortcut():
    r32, r56 = create_trunk("resnet32"), create_trunk("resnet56")
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())
    assert convs(r32) == 31 and convs(r56) == 55  # + the head = 32 / 56 layers
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).reshape(2, 16, 4, 4)
    y = _PadShortcut(8)(x)
    assert y.shape == (2, 32, 2, 2)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and y[:, :8].abs().sum() == 0
    assert not any(p.numel() for p in _PadShortcut(8).parameters())


def test_linear_head_and_registry():
    model = create_model("small_cnn", 10, "linear")
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert model.class_weights().shape == (10, 64)
    assert {"resnet32", "resnet56", "small_cnn", "resnet50", "resnext50"} <= set(list_trunks())
    with pytest.raises(ValueError, match="unknown model 'resnet33'"):
        create_trunk("resnet33")
    with pytest.raises(ValueError, match="unknown classifier 'norm'"):
        create_model("resnet32", 10, "norm")
