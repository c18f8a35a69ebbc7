"""Devices, seeds, mixed precision and the distributed process group, for the drivers only."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from medsr.errors import MedsrError


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"``/None -> CUDA if present else CPU; ``"cpu"``; ``"cuda"``/``"cuda:N"``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise MedsrError(f"unknown device '{name}' (use auto, cpu or cuda:N)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsrError(f"device '{name}' asked for, but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (called by drivers, never at import)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA only; a no-op context on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def distributed_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def init_distributed(device: torch.device) -> None:
    """Join the process group set up by torchrun (gloo on CPU, NCCL on CUDA)."""
    if distributed_world()[2] > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
