"""Models by name from a registry, so a config can name them::

    trunk = create_trunk("resnet32")                       # pooled 64-d features
    model = create_model("resnet32", num_classes=100, classifier="cosine")

Built-in trunks: ``resnet32``, ``resnet56`` (CIFAR, He et al. 2016), ``small_cnn`` (the offline
demo), ``resnet50``, ``resnext50`` (32x4d), ``resnext101`` (32x8d) (torchvision
architectures, ImageNet-style, random init), and ``timm:NAME`` for any timm model when timm is
installed (:mod:`~dbm_ltr.models.large`). A trunk is an ``nn.Module`` mapping images to pooled
features, with an ``out_features`` attribute.

``pretrained=PATH`` (``create_trunk`` / ``create_model``) loads a local state dict into the
trunk (torchvision-style keys, the ``fc.`` head ignored; nothing is downloaded);
:func:`pretrained_trunks` does the same for every trunk of a name built inside a ``with``
block (for methods that build their models themselves).
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry
from .classifier import HEADS, TrunkClassifier, head_weights, make_head
from .large import TIMM_PREFIX, active_pretrained, load_pretrained, pretrained_trunks, timm_trunk
from .projection import HEAD_INITS, projection_mlp
from .resnet_cifar import CifarResNet, resnet32, resnet56
from .small import SmallConvNet

__all__ = [
    "HEADS",
    "HEAD_INITS",
    "CifarResNet",
    "SmallConvNet",
    "TRUNKS",
    "TrunkClassifier",
    "create_model",
    "create_trunk",
    "head_weights",
    "is_trunk_name",
    "list_trunks",
    "load_pretrained",
    "make_head",
    "projection_mlp",
    "pretrained_trunks",
    "register_trunk",
]

TRUNKS = Registry("model")
register_trunk = TRUNKS.register
list_trunks = TRUNKS.names


def is_trunk_name(name: str) -> bool:
    """A registered trunk, or ``timm:NAME`` (checked against timm when the trunk is built)."""
    return name in TRUNKS or (isinstance(name, str) and name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))


def create_trunk(name: str, pretrained: str = "", **kwargs) -> nn.Module:
    """Trunk ``name`` (pooled features, with an ``out_features`` attribute); ``pretrained``:
    a local state dict to load (else one set by :func:`pretrained_trunks` for this name)."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        trunk = timm_trunk(name[len(TIMM_PREFIX) :], **kwargs)
    else:
        trunk = TRUNKS.lookup(name)(**kwargs)
    if not hasattr(trunk, "out_features"):
        raise TypeError(f"trunk {name!r} must have an 'out_features' attribute")
    path = pretrained or active_pretrained(name)
    if path:
        load_pretrained(trunk, path, name=f"trunk {name!r}")
    return trunk


def create_model(
    name: str,
    num_classes: int,
    classifier: str = "linear",
    pretrained: str = "",
    **kwargs,
) -> TrunkClassifier:
    """Trunk ``name`` (``pretrained``: see :func:`create_trunk`) with a ``linear`` or
    ``cosine`` head for ``num_classes`` classes."""
    return TrunkClassifier(create_trunk(name, pretrained=pretrained, **kwargs), num_classes, classifier)


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
register_trunk("resnext101", _torchvision_trunk("resnext101_32x8d"))
