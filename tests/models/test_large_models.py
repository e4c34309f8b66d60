"""Large-scale trunks: ResNeXt-101, local pretrained weights, timm trunks."""

import sys

import pytest
import torch
import torchvision

from dbm_ltr.models import (
    create_model,
    create_trunk,
    is_trunk_name,
    list_trunks,
    load_pretrained,
    pretrained_trunks,
)


def test_resnext101_builds_with_2048_features():
    assert {"resnet50", "resnext50", "resnext101"} <= set(list_trunks())
    trunk = create_trunk("resnext101").eval()
    assert trunk.out_features == 2048
    assert trunk.layer1[0].conv2.groups == 32 and trunk.layer1[0].conv2.out_channels == 256  # 32x8d
    with torch.no_grad():
        assert trunk(torch.randn(1, 3, 32, 32)).shape == (1, 2048)


def test_pretrained_state_dict_loads_and_ignores_the_head(tmp_path):
    source = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        source.conv1.weight.normal_()
        source.layer4[2].bn3.running_mean.uniform_()
    path = tmp_path / "r50.pth"
    torch.save(source.state_dict(), path)  # torchvision keys, with fc.weight / fc.bias
    trunk = create_trunk("resnet50", pretrained=str(path))
    assert torch.equal(trunk.conv1.weight, source.conv1.weight)
    assert torch.equal(trunk.layer4[2].bn3.running_mean, source.layer4[2].bn3.running_mean)
    model = create_model("resnet50", 7, "cosine", pretrained=str(path))
    assert torch.equal(model.trunk.conv1.weight, source.conv1.weight)
    # DDP / checkpoint wrappers are unwrapped
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, wrapped)
    report = load_pretrained(create_trunk("resnet50"), wrapped)
    assert report["ignored"] == ["fc.weight", "fc.bias"] and report["loaded"] == len(source.state_dict()) - 2


def test_pretrained_errors(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"pretrained weights .*missing.pth not found \(model.pretrained\); "
        "nothing is downloaded",
    ) as err:
        create_trunk("resnet32", pretrained=str(tmp_path / "missing.pth"))
    assert isinstance(err.value, ValueError)  # the CLI reports it as a configuration error
    other = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(
        ValueError, match=r"r18.pth do not match trunk 'resnet50': .*missing \(e.g. layer1.0.conv3.weight"
    ):
        create_trunk("resnet50", pretrained=str(other))
    resnext = tmp_path / "rx50.pth"
    torch.save(torchvision.models.resnext50_32x4d(weights=None).state_dict(), resnext)
    with pytest.raises(
        ValueError,
        match=r"of another shape \(e.g. layer1.0.conv1.weight: file \(128, 64, 1, 1\) "
        r"vs model \(64, 64, 1, 1\)\)",
    ):
        create_trunk("resnet50", pretrained=str(resnext))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable torch state dict"):
        create_trunk("resnet32", pretrained=str(junk))


def test_pretrained_trunks_context_names_one_trunk(tmp_path):
    source = create_trunk("resnet32")
    path = tmp_path / "r32.pth"
    torch.save(source.state_dict(), path)
    with pretrained_trunks(str(path), "resnet32"):
        loaded = create_model("resnet32", 10)
        other = create_trunk("resnet56")  # another name: untouched (e.g. GML's teacher)
    fresh = create_trunk("resnet32")
    first = next(iter(source.state_dict()))
    assert torch.equal(loaded.trunk.state_dict()[first], source.state_dict()[first])
    assert not torch.equal(fresh.state_dict()[first], source.state_dict()[first])
    assert other.out_features == 64
    with pretrained_trunks("", "resnet32"):  # no path: nothing happens
        create_trunk("resnet32")


def test_timm_names_and_missing_timm(monkeypatch):
    assert is_trunk_name("resnet50") and is_trunk_name("timm:convnext_tiny")
    assert not is_trunk_name("timm:") and not is_trunk_name("resnet33")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(
        ImportError,
        match=r"model.name=timm:resnet18 needs timm, which is not installed: "
        r"pip install 'dbm-ltr\[timm\]'",
    ) as err:
        create_trunk("timm:resnet18")
    assert isinstance(err.value, ValueError)  # the CLI reports it as a configuration error


def test_timm_trunk_when_installed():
    timm = pytest.importorskip("timm")
    trunk = create_trunk("timm:resnet18").eval()
    assert trunk.out_features == 512 == timm.create_model("resnet18", num_classes=0).num_features
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nonexistent'"):
        create_trunk("timm:resnet_nonexistent")


def test_a_timm_model_with_a_layer_after_its_pooling_reports_that_width(monkeypatch):
    """timm >= 1.0 MobileNetV3/V4 and the like return head_hidden_size features with
    num_classes=0, not num_features; the head is built for what the trunk returns."""
    import types

    class AfterPooling(torch.nn.Module):  # stands in for timm's mobilenetv3_small_100
        num_features, head_hidden_size = 576, 1024

        def __init__(self):
            super().__init__()
            self.conv_head = torch.nn.Linear(3, self.head_hidden_size)

        def forward(self, x):
            return self.conv_head(x.mean(dim=(2, 3)))

    fake = types.SimpleNamespace(is_model=lambda name: True, create_model=lambda name, **kwargs: AfterPooling())
    monkeypatch.setitem(sys.modules, "timm", fake)
    model = create_model("timm:mobilenetv3_small_100", 10, "cosine")
    assert model.trunk.out_features == 1024
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_a_dbm_ltr_run_or_its_checkpoint_is_a_pretrained_trunk(fake_cifar10, tmp_path):
    from fakes import tiny_overrides

    from dbm_ltr.engine import Trainer, load_config

    run = tmp_path / "run"
    trainer = Trainer(load_config("cifar10_lt/ce", tiny_overrides(fake_cifar10, epochs=1)), run, log=lambda m: None)
    trainer.fit()
    want = trainer.method.model.trunk.state_dict()
    for source in (run, run / "checkpoint.pt"):
        trunk = create_trunk("resnet32", pretrained=str(source))
        assert all(torch.equal(trunk.state_dict()[k], want[k]) for k in want)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder without checkpoint.pt"):
        create_trunk("resnet32", pretrained=str(tmp_path / "empty"))
