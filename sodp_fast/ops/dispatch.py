"""One dispatch layer for every fused op: ``backend = "auto" | "torch" | "cpp" | "triton" | "cuda"``.

Each op module registers its implementations here under an op name; callers ask for an op by name and a
backend. ``auto`` walks ``AUTO_PREFERENCE`` for the tensor's device and takes the first backend that is
present and registered (the Triton interpreter is for tests only, never picked by ``auto``).

On CPU ``auto`` picks the "cpp" kernels: they win every op (geometric means 2.3–3.3x, the FiLM epilogue 1.65x;
``profiles/2026-12-02-cpu-2core-ops/``) and whole chains by 1.04–1.31x
(``profiles/2026-12-02-cpu-2core-sampler-1thread/``), and their results are bitwise the same for any thread count
and input alignment (``tests/test_ops_cpp.py``), so a killed and resumed run matches a straight one
(``profiles/2026-12-02-cpu-2core-cpp-reproducibility/``). On CUDA ``auto`` picks the reference:
no GPU has yet validated and timed the fused kernels (they are tested against float64 references in the CPU
interpreter and by GPU-only tests), and a default must not rest on an unmeasured prior. Once
``benchmarks/gpu_session.sh`` has put that run in ``profiles/``, its order goes into ``AUTO_PREFERENCE["cuda"]``;
until then ask for ``backend="cuda"`` or ``"triton"`` (or ``SODP_BACKEND``) explicitly.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

import torch

try:  # the op modules take triton from here
    import triton
    import triton.language as tl
except ImportError:  # the references still work; triton is reported absent
    triton = tl = None

BACKENDS = ("torch", "cpp", "triton", "cuda")
_DEVICE_ONLY = {"cpp": "cpu", "cuda": "cuda"}  # backends that run on one device type only
AUTO_PREFERENCE = {"cuda": ("torch",), "cpu": ("cpp", "torch")}

_REGISTRY: dict[str, dict[str, Callable]] = {}
_default_backend = os.environ.get("SODP_BACKEND", "auto")


def load_extension(module: str, missing: str) -> tuple[Callable, Callable, Callable]:
    """(available, import_error, ext) of an optional compiled extension; ``ext()`` raises ``missing`` (formatted
    with the import error) where it did not build, so importing the package never needs a compiler."""
    try:
        mod, error = importlib.import_module(module), None
    except ImportError as e:
        mod, error = None, str(e)

    def ext():
        if mod is None:
            raise RuntimeError(missing.format(error))
        return mod

    return (lambda: mod is not None), (lambda: error), ext


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: make ``fn`` the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY.setdefault(op, {})[backend] = fn
        return fn

    return deco


def backend_present(backend: str) -> bool:
    """Whether a backend can run at all in this process (library importable, GPU present where needed)."""
    from sodp_fast.ops import _cpp, _cuda

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    gpu = torch.cuda.is_available()
    return {"torch": True, "cpp": _cpp.available(), "cuda": _cuda.available() and gpu,
            "triton": triton is not None and (gpu or os.environ.get("TRITON_INTERPRET") == "1")}[backend]


def set_default_backend(backend: str) -> None:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    global _default_backend
    _default_backend = backend


def resolve(op: str, backend: str | None, device: torch.device) -> str:
    """The concrete backend ``get`` would use; raises a one-line error for a backend that cannot run.

    A backend named in the call is strict. The process-wide default (``set_default_backend`` /
    ``SODP_BACKEND``) is a preference: where that backend cannot serve the op (not registered, absent, or for
    another device type: cpp is CPU-only, cuda GPU-only) it falls back along ``BACKENDS`` towards the reference
    (cuda → triton → cpp → torch).
    """
    impls = _REGISTRY.get(op)
    if impls is None:
        raise KeyError(f"no fused op named {op!r}; registered: {sorted(_REGISTRY)}")
    if backend is None and _default_backend != "auto":
        order = BACKENDS[: BACKENDS.index(_default_backend) + 1][::-1]  # e.g. cuda → triton → torch
    elif (backend or _default_backend) == "auto":
        order = AUTO_PREFERENCE.get(device.type, ("torch",))
    else:
        order = None
    if order is not None:
        return next((cand for cand in order if cand in impls and _DEVICE_ONLY.get(cand, device.type) == device.type
                     and backend_present(cand)), "torch")
    if backend not in impls:
        raise RuntimeError(f"op {op!r} has no {backend!r} implementation (has: {sorted(impls)})")
    if not backend_present(backend):
        raise RuntimeError(f"backend {backend!r} is not available here: {describe_backends()[backend]}")
    if _DEVICE_ONLY.get(backend, device.type) != device.type:
        raise RuntimeError(f"backend {backend!r} runs on {_DEVICE_ONLY[backend]} tensors only, not {device.type}")
    return backend


def get(op: str, backend: str | None = None, device: torch.device | str = "cpu") -> Callable:
    device = torch.device(device)
    return _REGISTRY[op][resolve(op, backend, device)]


def describe_backends() -> dict[str, str]:
    """Human-readable presence of each backend, for ``sodp info`` and error messages."""
    from sodp_fast.ops import _cpp, _cuda

    gpu = torch.cuda.is_available()
    return {
        "torch": f"present (torch {torch.__version__})",
        "cpp": (f"extension built (CPU, OpenMP, {torch.get_num_threads()} threads)" if _cpp.available()
                else f"extension not built ({_cpp.import_error()})"),
        "triton": "not installed" if triton is None else f"installed (triton {triton.__version__}); " + (
            "GPU" if gpu else "CPU interpreter" if os.environ.get("TRITON_INTERPRET") == "1"
            else "no GPU (set TRITON_INTERPRET=1 to interpret)"),
        "cuda": (f"extension not built ({_cuda.import_error()})" if not _cuda.available()
                 else "extension built; " + ("CUDA device present" if gpu else "no CUDA device visible to torch")),
    }
