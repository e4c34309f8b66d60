"""Mixed precision: which reduced dtype a device trains in, and the autocast context."""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["amp_dtype", "autocast"]


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 (no loss scaling needed) on the CPU and on GPUs with bfloat16 arithmetic
    (compute capability 8 and above: Ampere on), else float16. The capability of ``device``
    itself: ``torch.cuda.is_bf16_supported()`` asks about the current device and, by default,
    also says yes where bfloat16 is only emulated (V100, T4), slowly."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool):
    """``torch.autocast`` in :func:`amp_dtype` where ``enabled`` (``train.amp``), else nothing."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(device))
