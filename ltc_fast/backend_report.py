"""Which implementation each part of ltc_fast uses in this process: `ltc_fast.backends()`, `ltc-fast info`.

A model run in "auto" takes the fast path wherever it applies; this says, for this machine, where that is.
"""

from __future__ import annotations

import torch

from .attention import flash_attn_varlen, torch_varlen_attn
from .ops import dispatch, loss_extension, triton_support


def backends(device: torch.device | str | None = None) -> dict[str, str]:
    """Per part, the path "auto" takes for tensors on `device` (default: CUDA when present, else the CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    forced = dispatch.environment_backend() == dispatch.TORCH
    if forced:
        kernels = loss = f"torch ({dispatch.ENV_VAR}=torch)"
    else:
        if not triton_support.triton_available():
            kernels = "torch (triton is not installed)"
        elif device.type == "cuda":
            kernels = f"triton {triton_support.triton.__version__}"
        else:
            kernels = "torch (Triton kernels run on CUDA tensors" + (
                "; backend='triton' runs them in the interpreter)" if triton_support.interpreting() else ")")
        status = loss_extension.extension_status()
        if loss_extension.runs_on(device):
            loss = f"extension ({status})"
        else:
            loss = f"torch (extension {status})"
    if device.type == "cuda":
        if flash_attn_varlen() is not None:
            packed = "flash_attn_varlen_func (fp16/bf16, heads <= 256)"
        elif torch_varlen_attn() is not None:
            packed = "torch varlen_attn (fp16/bf16, heads <= 256, without attention dropout)"
        else:
            packed = f"per-sequence SDPA (torch {torch.__version__} has no varlen_attn with scale=: 2.10 or later)"
        packed += "; auto packing only there, padded SDPA elsewhere"
    else:
        packed = "per-sequence SDPA (auto packing is off on the CPU)"
    return {
        "tensors on": str(device),
        "label injection / label head": kernels,
        "loss": loss,
        "padded attention": "SDPA",
        "packed attention": packed,
    }

