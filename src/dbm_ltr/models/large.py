"""Large-scale trunks: timm models by name and local pretrained weights.

* ``timm:NAME`` trunks: ``timm.create_model(NAME, pretrained=False, num_classes=0)`` (pooled
  features, ``out_features`` their width); timm is optional (``pip install 'dbm-ltr[timm]'``).
* :func:`load_pretrained`: a local state dict into a trunk. Nothing is ever downloaded.
* :func:`pretrained_trunks`: while active, every trunk of a given name that
  :func:`~dbm_ltr.models.create_trunk` builds is loaded from a file (so the methods, which build
  their models themselves, need no change).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import DbmLtrError, MissingDependencyError, UnsafeCheckpointError
from ..serialization import safe_load

__all__ = [
    "HEAD_PREFIXES",
    "TIMM_PREFIX",
    "PretrainedNotFoundError",
    "TimmNotInstalledError",
    "load_pretrained",
    "pretrained_trunks",
    "timm_trunk",
]

TIMM_PREFIX = "timm:"
#: keys of classification heads, ignored when the trunk has no such parameters
HEAD_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.", "head_dist.")
#: wrappers around a trunk's keys tried when the file's keys do not match as they are
_WRAPPERS = ("", "module.", "model.", "trunk.", "model.trunk.", "backbone.", "encoder.", "module.encoder_q.")
_active: list[tuple[str, str]] = []  # (trunk name, path) of pretrained_trunks()


class PretrainedNotFoundError(DbmLtrError, FileNotFoundError, ValueError):
    """The pretrained weights file does not exist (a ``ValueError`` too: a configuration error)."""


class TimmNotInstalledError(MissingDependencyError, ValueError):
    """``timm:NAME`` without timm (a ``ValueError`` too: a configuration error)."""


def timm_trunk(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)`` with
    ``out_features`` the width of what it returns: ``head_hidden_size`` where the model has a
    layer after its pooling (timm 1.0: MobileNetV3/V4, ...), else ``num_features``."""
    try:
        import timm
    except ImportError:
        raise TimmNotInstalledError(
            f"model.name={TIMM_PREFIX}{name} needs timm, which is not installed: pip install 'dbm-ltr[timm]' "
            "(or pip install timm)"
        ) from None
    if not name:
        raise ValueError(f"'{TIMM_PREFIX}' must be followed by a timm model name, e.g. {TIMM_PREFIX}resnet50")
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models(); e.g. {TIMM_PREFIX}resnet50)")
    net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    net.out_features = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return net


def _read_state(path: str) -> dict[str, torch.Tensor]:
    if os.path.isdir(path):  # a dbm-ltr run directory: its checkpoint
        if not os.path.isfile(os.path.join(path, "checkpoint.pt")):
            raise PretrainedNotFoundError(
                f"pretrained weights {os.path.abspath(path)} is a folder without checkpoint.pt (model.pretrained); "
                "give a weights file, or a dbm-ltr run directory"
            )
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise PretrainedNotFoundError(
            f"pretrained weights {os.path.abspath(path)} not found (model.pretrained); nothing is downloaded: "
            "save a state dict there first (torch.save(model.state_dict(), PATH))"
        )
    try:
        with open(path, "rb") as f:
            state = safe_load(f.read(), f"pretrained weights {path} (model.pretrained)")
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(
            f"pretrained weights {path}: not a readable torch state dict ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''})"
        ) from None
    for key in ("state_dict", "model", "model_state", "model_state_dict", "module", "method"):  # method: dbm-ltr
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained weights {path}: expected a state dict (parameter name -> tensor)")
    return state


def load_pretrained(module: nn.Module, path: str | os.PathLike, name: str = "trunk") -> dict:
    """Load the local state dict at ``path`` into ``module`` (torchvision-style keys).

    A ``state_dict`` / ``model`` wrapper and key prefixes such as ``module.`` (DDP) or
    ``model.trunk.`` (a dbm-ltr checkpoint's method) are removed when that makes the keys
    match; classification-head keys (``fc.``, ``head.``, ``classifier.``, ...) the trunk does
    not have are ignored. Anything else missing, unexpected or of another shape is a
    ``ValueError`` naming examples. Returns ``{"loaded": n, "ignored": [keys]}``.
    """
    path = os.fspath(path)
    state = _read_state(path)
    own = module.state_dict()

    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    candidates = [strip(p) for p in _WRAPPERS]
    state = max(candidates, key=lambda s: (len(set(s) & set(own)), len(s)))
    ignored = [k for k in state if k not in own and k.startswith(HEAD_PREFIXES)]
    state = {k: v for k, v in state.items() if k not in ignored}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise ValueError(
            f"pretrained weights {path} do not match {name}: {'; '.join(parts)} "
            "(a state dict of the same architecture is needed)"
        )
    module.load_state_dict(state, strict=False)
    return {"loaded": len(state), "ignored": ignored}


@contextlib.contextmanager
def pretrained_trunks(path: str | os.PathLike, name: str) -> Iterator[None]:
    """While active, :func:`~dbm_ltr.models.create_trunk` loads ``path`` into every trunk
    named ``name`` it builds (nothing happens for ``path=""``)."""
    if not path:
        yield
        return
    _active.append((str(name), os.fspath(path)))
    try:
        yield
    finally:
        _active.pop()


def active_pretrained(name: str) -> str | None:
    """The path :func:`pretrained_trunks` sets for trunks named ``name`` (innermost), if any."""
    for trunk, path in reversed(_active):
        if trunk == name:
            return path
    return None
