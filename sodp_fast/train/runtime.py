"""Where training runs: device choice, torchrun/DDP process group, TF32 and bf16 autocast.

Under ``torchrun --nproc_per_node=N`` (WORLD_SIZE > 1) the process group is initialised from the environment
variables torchrun sets: NCCL with one GPU per process (LOCAL_RANK) on CUDA, Gloo on CPU.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sodp_fast.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None  # autocast dtype, or None for full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def check_device(name: str) -> None:
    """A device name torch can parse: auto, cpu, cuda, cuda:N (checked at the command line, before any work)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: only cpu and cuda are supported")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else CPU; anything else is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but this torch has no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def setup(device: str = "auto", amp: str = "auto") -> Runtime:
    """Pick the device (per rank under torchrun), join the process group, enable TF32 on CUDA. ``amp`` (checked by
    the caller's flags): ``auto`` = bf16 autocast on CUDA, full precision elsewhere; ``bf16`` / ``off`` force it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if world > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    bf16 = amp == "bf16" or (amp == "auto" and dev.type == "cuda")
    return Runtime(dev, rank, world, torch.bfloat16 if bf16 else None)


def teardown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
