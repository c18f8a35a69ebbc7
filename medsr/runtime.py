"""Devices, seeds, mixed precision and the distributed process group, for the drivers only."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from medsr.errors import MedsrError

logger = logging.getLogger(__name__)

#: the environment variable that fixes cuBLAS's workspace, and the value PyTorch documents for
#: deterministic results (https://docs.pytorch.org/docs/stable/notes/randomness.html)
CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
DETERMINISTIC_WORKSPACE = ":4096:8"


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


Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX-512-BF16 or AMX), so that CPU autocast
    to bf16 is faster than float32 rather than emulated."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


_EMULATED_BF16_WARNED = [False]


def _warn_emulated_bf16() -> None:
    """Once per process: the api and the reconstruction (and every 4D frame) resolve again."""
    if not _EMULATED_BF16_WARNED[0]:
        _EMULATED_BF16_WARNED[0] = True
        logger.warning(
            "this CPU has no native bf16 (AVX-512-BF16 or AMX): bf16 is emulated and much "
            "slower than fp32 (the reconstruction runs it as asked, the per-scan fit in fp32); "
            "--precision auto picks fp32 here"
        )


def resolve_precision(precision: str, device: torch.device) -> str:
    """The reconstruction's arithmetic: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA's).

    ``"auto"``: on CUDA fp16 autocast (as always); on a CPU with native bf16
    (`cpu_supports_bf16`) bf16 autocast of the encoder's convolutions; float32 otherwise.
    ``"bf16"`` and ``"fp32"`` are taken as asked; ``"bf16"`` on a CPU without native bf16 is
    emulated (measured on an AVX2-only AMD EPYC: 0.3 GMAC/s against 27 in float32) and logs a
    warning saying so.

    Raises:
        MedsrError: an unknown value.
    """
    if precision not in PRECISIONS:
        raise MedsrError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        _warn_emulated_bf16()
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


def fit_precision(precision: str, device: torch.device, mixed_precision: bool = True) -> str:
    """The arithmetic of the per-scan fit for the run's `precision` (`resolve_precision`): on
    CUDA the model's own mixed-precision setting (``train.mixed_precision``: fp16 autocast or
    float32); on the CPU ``"bf16"`` (the encoder's convolutions, ``train.cpu_bf16``) where
    `precision` resolves to bf16 on a CPU with native bf16, else ``"fp32"`` (a fit in emulated
    bf16 would take many times longer)."""
    if device.type == "cuda":
        return "fp16" if mixed_precision else "fp32"
    bf16 = resolve_precision(precision, device) == "bf16" and cpu_supports_bf16()
    return "bf16" if bf16 else "fp32"


def precision_autocast(device: torch.device, precision: str):
    """Autocast for a resolved precision (`resolve_precision`); float32: a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def distributed_world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def init_distributed(device: torch.device) -> None:
    """Join the process group set up by torchrun (gloo on CPU, NCCL on CUDA)."""
    if distributed_world()[2] > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def close_distributed(*, synchronise: bool = False) -> None:
    """End the process group; with `synchronise`, first wait for every rank (a rank that
    leaves while another still writes its last checkpoint resets gloo's sockets, which
    aborts that rank). Not after an error: the other ranks may never arrive."""
    if dist.is_initialized():
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """On CUDA, deterministic kernels for the duration of the fit, then the caller's settings.

    cuBLAS is deterministic only with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``); a value the
    user set is kept, and the variable is removed again if it was set here. Kernels without a
    deterministic version warn instead of failing (``warn_only``). A no-op on the CPU, whose
    kernels are deterministic for a given thread count.
    """
    if device.type != "cuda":
        yield
        return
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    workspace = os.environ.get(CUBLAS_WORKSPACE)
    if workspace is None:
        os.environ[CUBLAS_WORKSPACE] = DETERMINISTIC_WORKSPACE
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)


@contextlib.contextmanager
def numpy_blas_threads(threads: int = 1) -> Iterator[None]:
    """numpy's BLAS (OpenBLAS, MKL, ...) limited to `threads` for the duration, then as it was.

    For loops that interleave numpy and torch, as a fit's training steps do (numpy draws and
    thickens each batch, torch trains on it): after a call, OpenBLAS's threads keep spinning for
    a while, and on a CPU that torch's own threads already fill they take cores from torch's next
    convolutions. Measured on the 2-core development CPU: a fit step took 138 ms with numpy's BLAS
    on 2 threads and 61 ms on 1 (docs/benchmarks.md, "The fit's steps at twice the speed"). Uses
    `threadpoolctl`, which reaches the BLAS numpy loaded at run time (an environment variable
    only works before numpy is imported). It limits every BLAS it finds, so where torch shares
    one with numpy (a conda build with MKL) torch's matrix products run on one thread too; the
    fit's convolutions run in oneDNN under torch's own threads either way."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def release_freed_memory() -> bool:
    """Hand the memory this process has freed back to the operating system (glibc's
    ``malloc_trim``): buffers a finished stage freed (the fit's activations and gradients) stay
    in the C heap otherwise, and add to the next stage's peak. True where it was done; on other
    C libraries, nothing."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
