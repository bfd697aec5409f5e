"""Thin typed wrapper over the compiled extension ``sodp_fast._cuda_ext``, built against the CUDA runtime only (never
torch), so it works with any CUDA build of torch: the checks are here, the kernels get raw device pointers plus
the current stream (which also makes every launch legal inside CUDA-graph capture).
"""
from __future__ import annotations

import torch

from sodp_fast.ops.dispatch import load_extension

available, import_error, ext = load_extension(  # built without nvcc, or with SODP_NO_CUDA=1
    "sodp_fast._cuda_ext", "sodp_fast CUDA extension is not built: {}. Reinstall with nvcc on PATH (and without "
    "SODP_NO_CUDA=1).")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


def check(t: torch.Tensor, name: str, dtype: torch.dtype | None = None) -> int:
    """Pointer of a contiguous CUDA tensor, with a one-line error for anything else."""
    if not t.is_cuda:
        raise RuntimeError(f"{name}: the cuda backend needs CUDA tensors, got device {t.device}")
    if not t.is_contiguous():
        raise RuntimeError(f"{name}: the cuda backend needs a contiguous tensor")
    if dtype is not None and t.dtype != dtype:
        raise RuntimeError(f"{name}: expected {dtype}, got {t.dtype}")
    return t.data_ptr()


def dtype_code(t: torch.Tensor, op: str) -> int:
    if t.dtype not in DTYPE_CODES:
        raise RuntimeError(f"{op}: the cuda backend supports {list(DTYPE_CODES)}, got {t.dtype}")
    return DTYPE_CODES[t.dtype]


def stream() -> int:
    return torch.cuda.current_stream().cuda_stream
