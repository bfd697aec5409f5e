"""Thin typed wrapper over the compiled CPU extension ``sodp_fast._cpu_ext`` (csrc/cpu/, always built). Like the
CUDA one it is built without torch headers (the CPU torch wheel has no usable C++ extension toolchain), so the
checks of device, dtype and layout are here and the kernels get raw pointers and sizes. The kernels are float32
(the op modules send other dtypes to their reference) and use the OpenMP runtime torch itself loaded, so
``torch.set_num_threads`` / ``OMP_NUM_THREADS`` apply to them too.
"""
from __future__ import annotations

import torch

from sodp_fast.ops.dispatch import load_extension

available, import_error, ext = load_extension(  # the build failed, or an old install predates the extension
    "sodp_fast._cpu_ext", "sodp_fast CPU extension is not built: {}. Reinstall the package (pip install .) with "
    "a C++ compiler and pybind11 available.")


def runs(*tensors: torch.Tensor | None) -> bool:
    """Whether the float32 kernels take these inputs (None = an absent optional input)."""
    return all(t is None or t.dtype == torch.float32 for t in tensors)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd must record the op (else the wrappers call the kernels directly, saving the autograd
    Function's overhead on every sampling call)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _bad(t: torch.Tensor, name: str) -> RuntimeError:
    if not t.is_cpu:
        return RuntimeError(f"{name}: the cpp backend needs CPU tensors, got device {t.device}")
    if t.dtype != torch.float32:
        return RuntimeError(f"{name}: the cpp backend needs float32, got {t.dtype}")
    return RuntimeError(f"{name}: the cpp backend needs a contiguous tensor")


# One combined test per tensor, the message built only on failure: these run several times per op call.
def ptr(t: torch.Tensor, name: str) -> int:
    """Pointer of a contiguous float32 CPU tensor (the caller keeps ``t`` alive over the call)."""
    if not (t.is_cpu and t.dtype == torch.float32 and t.is_contiguous()):
        raise _bad(t, name)
    return t.data_ptr()


def rows(t: torch.Tensor, name: str) -> tuple[torch.Tensor, int]:
    """A 2-D tensor the kernels can read row by row (unit stride along a row, any row stride: views such as
    ``noise[:, i]`` or the halves of a chunked tensor go in without a copy), and its row stride."""
    if not (t.is_cpu and t.dtype == torch.float32):
        raise _bad(t, name)
    if t.stride(1) != 1 and t.shape[1] > 1:
        t = t.contiguous()
    return t, t.stride(0)
