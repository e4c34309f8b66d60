"""Models by name from a registry, so a config can name them::

    trunk = create_trunk("resnet32")                       # pooled 64-d features
    model = create_model("resnet32", num_classes=100, classifier="cosine")

Built-in trunks: ``resnet32``, ``resnet56`` (CIFAR, SPEC 3.1), ``small_cnn`` (the offline
demo), ``resnet50``, ``resnext50`` (torchvision architectures, ImageNet-style). A trunk
is an ``nn.Module`` mapping images to pooled features, with an ``out_features`` attribute.
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry
from .classifier import HEADS, TrunkClassifier, head_weights, make_head
from .heads import mlp_head
from .resnet_cifar import CifarResNet, resnet32, resnet56
from .small import SmallConvNet

__all__ = [
    "HEADS",
    "CifarResNet",
    "SmallConvNet",
    "TRUNKS",
    "TrunkClassifier",
    "create_model",
    "create_trunk",
    "head_weights",
    "list_trunks",
    "make_head",
    "mlp_head",
    "register_trunk",
]

TRUNKS = Registry("model")
register_trunk = TRUNKS.register
list_trunks = TRUNKS.names


def create_trunk(name: str, **kwargs) -> nn.Module:
    """Trunk ``name`` (pooled features, with an ``out_features`` attribute)."""
    trunk = TRUNKS.lookup(name)(**kwargs)
    if not hasattr(trunk, "out_features"):
        raise TypeError(f"trunk {name!r} must have an 'out_features' attribute")
    return trunk


def create_model(name: str, num_classes: int, classifier: str = "linear", **kwargs) -> TrunkClassifier:
    """Trunk ``name`` with a ``linear`` or ``cosine`` head for ``num_classes`` classes."""
    return TrunkClassifier(create_trunk(name, **kwargs), num_classes, classifier)


def _torchvision_trunk(arch: str):
    def factory(**kwargs) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, **kwargs)
        out = net.fc.in_features
        net.fc = nn.Identity()
        net.out_features = out
        return net

    return factory


register_trunk("resnet32", resnet32)
register_trunk("resnet56", resnet56)
register_trunk("small_cnn", SmallConvNet)
register_trunk("resnet50", _torchvision_trunk("resnet50"))
register_trunk("resnext50", _torchvision_trunk("resnext50_32x4d"))
