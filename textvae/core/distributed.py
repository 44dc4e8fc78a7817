"""torch.distributed helpers: one process per device, launched by torchrun (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str) -> torch.device | None:
    """Join the process group torchrun set up; return this rank's device (None when not distributed)."""
    if not launched_by_torchrun():
        return None
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _end_with_launcher()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _end_with_launcher() -> None:
    """Have Linux SIGTERM this worker when its torchrun launcher dies. torchrun starts each worker in a
    session of its own, so a kill of the launcher's process group (SIGKILL, a crash) would leave the
    workers training on, writing the run directory while the same command resumes it; SIGTERM stops them
    after their current step with last.pt written."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() == 1:  # the launcher died before the call: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over all ranks (a copy; the identity when not distributed)."""
    if not active():
        return values
    # NCCL reduces only CUDA tensors; the evaluation's sums are kept on the CPU
    on_gpu = dist.get_backend() == "nccl" and values.device.type != "cuda"
    work = values.to(torch.device("cuda", torch.cuda.current_device())) if on_gpu else values.clone()
    dist.all_reduce(work)
    return work.to(values.device)


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
