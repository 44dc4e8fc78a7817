"""Where and in what precision the tensors run: the device for train.device, and bf16 autocast."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

from textvae.errors import UserError

log = logging.getLogger(__name__)


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


def bf16_units(cpuinfo: str) -> tuple[str, ...]:
    """The bf16 matmul units (amx_bf16, avx512_bf16) among the flags of a /proc/cpuinfo text."""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return tuple(unit for unit in ("amx_bf16", "avx512_bf16") if unit in flags)


@functools.cache
def cpu_bf16_units() -> tuple[str, ...]:
    """This CPU's bf16 matmul units; () where there are none or /proc/cpuinfo is missing (not Linux)."""
    try:
        return bf16_units(Path("/proc/cpuinfo").read_text())
    except OSError:
        return ()


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU in a few words: model name, cores, and its bf16 matmul units or widest vector unit (matmul rates
    differ several-fold between machines of one kind), from a /proc/cpuinfo text (default: this machine's)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown CPU"
    lines = cpuinfo.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    cores = sum(line.startswith("processor") for line in lines)
    widest = next((unit for unit in ("avx512f", "avx2") if unit in flags), "no AVX2")
    units = ", ".join(bf16_units(cpuinfo)) or f"{widest.removesuffix('f')}, no bf16 matmul units"
    return f"{name}, {cores} core{'s' * (cores != 1)} ({units})"


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run on units made for them: a CUDA device that supports bf16, or a CPU with AMX or
    AVX512-BF16. Without them oneDNN converts to fp32 and back: on a 2-core Ice Lake (AVX512, no BF16) a 2048^2
    bf16 matmul ran at 59 GFLOP/s against 222 in fp32, and the default PTB VAE trained 25% slower in bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(cpu_bf16_units())


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision as it runs on `device`: auto is bf16 where the device has bf16 matmul units, else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def report_precision(precision: str, device: torch.device) -> str:
    """Resolve train.precision once for a run and log what it runs in (a warning for bf16 without bf16 units)."""
    resolved = resolve_precision(precision, device)
    if resolved == "bf16" and not native_bf16(device):
        log.warning("train.precision bf16 on a %s without bf16 matmul units: emulated, slower than fp32 here "
                    "(train.precision auto picks fp32 on such a machine)", device.type)  # fmt: skip
    else:
        chosen = " (train.precision auto)" if precision == "auto" else ""
        log.info("training in %s on %s%s", resolved, device.type, chosen)
    return resolved


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CPU or CUDA when asked for (or by auto, where the device has bf16 units); a no-op context
    for fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def backward_in_eval_mode():
    """A context for gradients through modules in eval mode (SVI, the encoder refit: no dropout): cuDNN's RNN
    backward refuses eval mode ("cudnn RNN backward can only be called in training mode"), so cuDNN is off inside
    (PyTorch's own RNN kernels on a GPU; nothing changes on a CPU). Its other settings are kept."""
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=False, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=cudnn.allow_tf32)  # fmt: skip


def transfer(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a batch tensor to `device`; to CUDA through pinned memory, so the copy does not block the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
