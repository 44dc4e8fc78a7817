"""Where and in what precision the tensors run: the device for train.device, and bf16 autocast."""

from __future__ import annotations

import contextlib

import torch

from textvae.errors import UserError


def resolve_device(name: str) -> torch.device:
    """The torch device for train.device; on CUDA, fp32 matmuls and cuDNN run as TF32 (the loss stays fp32)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA when asked for; a no-op context for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def transfer(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch tensor to `device`; to CUDA through pinned memory, so the copy does not block the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
