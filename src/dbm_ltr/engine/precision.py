"""Mixed precision: which reduced dtype a device trains in, and the autocast context."""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["amp_dtype", "autocast"]


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 (no loss scaling needed) on the CPU and on GPUs that support it, else float16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """``torch.autocast`` in :func:`amp_dtype` where ``enabled`` (``train.amp``), else nothing."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))
