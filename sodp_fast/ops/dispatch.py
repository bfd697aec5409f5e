"""One dispatch layer for every fused op: ``backend = "auto" | "torch" | "triton" | "cuda"``.

Each op module registers its implementations here under an op name; callers ask for an op by name and a
backend. ``auto`` walks ``AUTO_PREFERENCE`` for the tensor's device and takes the first backend that is
present and registered, so a CPU-only install always lands on the PyTorch reference (the Triton interpreter
is for tests only, never picked by ``auto``). The order on CUDA devices is NOT yet measured: it is the prior
that a fused kernel (one launch, one pass over memory) beats eager PyTorch's chain of ~5–15 launches on these
small, launch-bound tensors. ``benchmarks/bench_ops.py`` prints the fastest backend per op on a GPU; it is a
plain list so a measurement that says otherwise changes one line.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

BACKENDS = ("torch", "triton", "cuda")
AUTO_PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("torch",)}

_REGISTRY: dict[str, dict[str, Callable]] = {}
_default_backend = os.environ.get("SODP_BACKEND", "auto")


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
    if backend == "torch":
        return True
    if backend == "cuda":
        from sodp_fast.ops import _cuda

        return _cuda.available() and torch.cuda.is_available()
    if backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def set_default_backend(backend: str) -> None:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected 'auto' or one of {BACKENDS}")
    global _default_backend
    _default_backend = backend


def resolve(op: str, backend: str | None, device: torch.device) -> str:
    """The concrete backend ``get`` would use; raises a one-line error for a backend that cannot run."""
    backend = backend or _default_backend
    impls = _REGISTRY.get(op)
    if impls is None:
        raise KeyError(f"no fused op named {op!r}; registered: {sorted(_REGISTRY)}")
    if backend == "auto":
        for cand in AUTO_PREFERENCE.get(device.type, ("torch",)):
            if cand in impls and backend_present(cand):
                return cand
        return "torch"
    if backend not in impls:
        raise RuntimeError(f"op {op!r} has no {backend!r} implementation (has: {sorted(impls)})")
    if not backend_present(backend):
        raise RuntimeError(f"backend {backend!r} is not available here: {describe_backends()[backend]}")
    return backend


def get(op: str, backend: str | None = None, device: torch.device | str = "cpu") -> Callable:
    device = torch.device(device)
    return _REGISTRY[op][resolve(op, backend, device)]


def describe_backends() -> dict[str, str]:
    """Human-readable presence of each backend, for ``sodp info`` and error messages."""
    from sodp_fast.ops import _cuda

    out = {"torch": f"present (torch {torch.__version__})"}
    try:
        import triton

        where = "GPU" if torch.cuda.is_available() else (
            "CPU interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "no GPU (set TRITON_INTERPRET=1 to interpret)")
        out["triton"] = f"installed (triton {triton.__version__}); {where}"
    except ImportError:
        out["triton"] = "not installed"
    if not _cuda.available():
        out["cuda"] = f"extension not built ({_cuda.import_error()})"
    elif not torch.cuda.is_available():
        out["cuda"] = "extension built; no CUDA device visible to torch"
    else:
        out["cuda"] = "extension built; CUDA device present"
    return out
