"""Fused DDIM step with the Gaussian log-prob of the transition (PyTorch reference + backend registrations).

One DDIM transition x_t → x_prev, written per row of a [N, D] batch (D = Tp·A, the whole action latent):

    x̂0    = (x_t − c1·ε̂) · c0                    c0 = 1/√ᾱ_t, c1 = √(1 − ᾱ_t)
    x̂0    = clamp(x̂0, −clip, clip)               (action bounds; skipped when clip is None)
    ε̃     = (x_t − c5·x̂0) / c1                   c5 = √ᾱ_t  (ε consistent with the clipped x̂0)
    mean  = c2·x̂0 + c3·ε̃                         c2 = √ᾱ_prev, c3 = √(1 − ᾱ_prev − σ_t²)
    x_prev = mean + c4·z,  z ~ N(0, I)            c4 = max(σ_t, σ_min)
    log p = Σ_D [−½((x_prev − mean)/c4)² − log c4 − ½ log 2π]

``coef`` holds (c0 … c5) per row, [N, 6] (or [6], broadcast), so one call serves a sampling step (all rows at
one timestep) and the PPO path (rows at different denoising steps of stored chains).

Backends: "torch" (reference, differentiable everywhere), "triton" (one pass per call: sampling writes x_prev
and log p together; ``ddim_logprob`` is an autograd Function with a Triton forward and a Triton backward that
gives ∂log p/∂ε̂ only — x, x_prev and coef are data), "cuda" (sampling here, ``ddim_logprob`` in
``cuda_backend.py``), "cpp" (CPU kernels of both, ``ddim_logprob`` differentiable in ε̂ only like triton; float32,
other dtypes run the reference). The compiled kernels (cuda, cpp) share their per-element math
(``csrc/kernel_math.h``) and report the log-prob of the stored x_prev. The Triton kernels take z = noise
directly instead of recomputing (x_prev − mean)/std, use ε̃ = ε̂ where the clamp is inactive (see
``_ddim_mean``), compute in float32 whatever the input dtype, and return
log p in float32 (a bf16 log-prob of ≈ −50 is off by ≈ 0.2, useless for PPO ratios).

Tolerances against a float64 reference on the same (rounded) inputs (‖out − ref‖/‖ref‖): float32 ≲ 1e-5 for
x_prev, log p and ∂log p/∂ε̂, bf16 ≲ 1e-2 — or, where float32 itself is ill-conditioned (clip=None and
|x̂0| ≫ 1, e.g. ≈ 1e3 at the first step with a poor ε̂), no worse than twice PyTorch's own float32 error.
An x̂0 within rounding of ±clip may fall on the other side of the clamp than in the reference (gradient 0 vs
not). The compiled kernels round x − c1·ε̂ once (``ddim_x0`` in ``csrc/kernel_math.h``), so that is ~1e-7 per
element for them; the plain float32 form (torch, triton) rounds it twice before c0 ≈ 2e3 magnifies the error at
the first step, so with a good ε̂ (x ≈ c1·ε̂) its x̂0 errs by ~1e-4 and clamp decisions flip that close to ±clip
(∂log p/∂ε̂ off the clamp edge, worst of 200 seeded draws: torch float32 1.1e-5, cpp 1.7e-7 relative).
"""
from __future__ import annotations

import math

import torch

from sodp_fast.ops import _cpp, _cuda
from sodp_fast.ops.dispatch import get, register

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference still works; dispatch reports triton as absent
    triton = tl = None

NUM_COEF = 6
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _split(coef: torch.Tensor, n: int):
    coef = coef.reshape(-1, NUM_COEF).expand(n, NUM_COEF)
    return [coef[:, i : i + 1] for i in range(NUM_COEF)]


def ddim_mean_torch(x: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, clip: float | None):
    """Mean and std of p(x_prev | x_t) for rows of x, eps: [N, D]."""
    c0, c1, c2, c3, c4, c5 = _split(coef.to(x.dtype), x.shape[0])
    x0 = (x - c1 * eps) * c0
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    eps_c = (x - c5 * x0) / c1
    return c2 * x0 + c3 * eps_c, c4


def gaussian_logprob_torch(x_prev: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    z = (x_prev - mean) / std
    return (-0.5 * z * z - torch.log(std) - HALF_LOG_2PI).sum(dim=1)


@register("ddim_step", "torch")
def ddim_step_torch(x, eps, noise, coef, clip):
    mean, std = ddim_mean_torch(x, eps, coef, clip)
    x_prev = mean if noise is None else mean + std * noise
    return x_prev, gaussian_logprob_torch(x_prev, mean, std)


@register("ddim_logprob", "torch")
def ddim_logprob_torch(x, eps, x_prev, coef, clip):
    mean, std = ddim_mean_torch(x, eps, coef, clip)
    return gaussian_logprob_torch(x_prev, mean, std)


def _clip_arg(clip: float | None) -> float:
    """The compiled kernels' encoding of ``clip``: ≤ 0 means no clamp."""
    return -1.0 if clip is None else float(clip)


@register("ddim_step", "cuda")
def ddim_step_cuda(x, eps, noise, coef, clip):
    if torch.is_grad_enabled() and eps.requires_grad:
        raise RuntimeError("the cuda ddim_step is for sampling (no autograd); use ddim_logprob for the PPO path")
    n, d = x.shape
    x, eps = x.contiguous(), eps.contiguous()
    coef = coef.to(device=x.device, dtype=torch.float32).reshape(-1, NUM_COEF).contiguous()
    coef_stride = 0 if coef.shape[0] == 1 else NUM_COEF
    if coef_stride and coef.shape[0] != n:
        raise ValueError(f"coef has {coef.shape[0]} rows for {n} rows of x")
    out = torch.empty_like(x)
    logp = torch.empty(n, device=x.device, dtype=torch.float32)
    noise_ptr = 0 if noise is None else _cuda.check(noise.contiguous(), "noise", x.dtype)
    _cuda.ext().ddim_step(_cuda.check(x, "x"), _cuda.check(eps, "eps", x.dtype), noise_ptr,
                          _cuda.check(coef, "coef"), coef_stride, _cuda.check(out, "x_prev"),
                          _cuda.check(logp, "logp"), n, d, _clip_arg(clip),
                          _cuda.DTYPE_CODES[x.dtype], _cuda.stream())
    return out, logp


if triton is not None:

    @triton.jit
    def _ddim_mean(x, eps, c0, c1, c2, c3, c5, clip, HAS_CLIP: tl.constexpr):
        """Returns (mean, unclamped x̂0); the caller masks the gradient where the clamp is active.

        Where the clamp is inactive ε̃ = ε̂ exactly (c0·c5 = 1), so ε̂ is used as is: recomputing it from a large
        x̂0 (c0 ≈ 2e3 at the first step) cancels ~4 digits in float32.
        """
        x0_raw = (x - c1 * eps) * c0
        x0 = x0_raw
        eps_c = eps
        if HAS_CLIP:
            x0 = tl.minimum(tl.maximum(x0_raw, -clip), clip)
            eps_c = tl.where(x0 == x0_raw, eps, (x - c5 * x0) / c1)
        return c2 * x0 + c3 * eps_c, x0_raw

    @triton.jit
    def _load_rows(ptr, rows, cols, s_row, s_col, mask):
        return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _load_coef(coef_ptr, rows, s_coef, rmask):
        c = coef_ptr + rows * s_coef
        return (tl.load(c, mask=rmask, other=1.0), tl.load(c + 1, mask=rmask, other=1.0),
                tl.load(c + 2, mask=rmask, other=1.0), tl.load(c + 3, mask=rmask, other=1.0),
                tl.load(c + 4, mask=rmask, other=1.0), tl.load(c + 5, mask=rmask, other=1.0))

    @triton.jit
    def _ddim_step_kernel(x_ptr, eps_ptr, noise_ptr, coef_ptr, out_ptr, logp_ptr, n, d,
                          sx0, sx1, se0, se1, sz0, sz1, s_coef, clip, log_norm,
                          HAS_NOISE: tl.constexpr, HAS_CLIP: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_D: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < n
        mask = rmask[:, None] & (cols[None, :] < d)
        c0, c1, c2, c3, c4, c5 = _load_coef(coef_ptr, rows, s_coef, rmask)
        x = _load_rows(x_ptr, rows, cols, sx0, sx1, mask)
        eps = _load_rows(eps_ptr, rows, cols, se0, se1, mask)
        mean, _ = _ddim_mean(x, eps, c0[:, None], c1[:, None], c2[:, None], c3[:, None], c5[:, None], clip,
                             HAS_CLIP)
        if HAS_NOISE:
            z = _load_rows(noise_ptr, rows, cols, sz0, sz1, mask)
            x_prev = mean + c4[:, None] * z
            sq = tl.sum(z * z, axis=1)
        else:
            x_prev = mean
            sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        tl.store(out_ptr + rows[:, None] * d + cols[None, :], x_prev.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(logp_ptr + rows, -0.5 * sq - d * (tl.log(c4) + log_norm), mask=rmask)

    @triton.jit
    def _ddim_logprob_kernel(x_ptr, eps_ptr, xp_ptr, coef_ptr, gout_ptr, logp_ptr, geps_ptr, n, d,
                             sx0, sx1, se0, se1, sp0, sp1, s_coef, s_gout, clip, log_norm,
                             BACKWARD: tl.constexpr, HAS_CLIP: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_D: tl.constexpr):
        """Forward writes log p [N]; backward writes ∂L/∂ε̂ = g · (z/σ) · (c3 − c2·c1·c0) · [x̂0 in bounds]."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < n
        mask = rmask[:, None] & (cols[None, :] < d)
        c0, c1, c2, c3, c4, c5 = _load_coef(coef_ptr, rows, s_coef, rmask)
        x = _load_rows(x_ptr, rows, cols, sx0, sx1, mask)
        eps = _load_rows(eps_ptr, rows, cols, se0, se1, mask)
        x_prev = _load_rows(xp_ptr, rows, cols, sp0, sp1, mask)
        mean, x0_raw = _ddim_mean(x, eps, c0[:, None], c1[:, None], c2[:, None], c3[:, None], c5[:, None], clip,
                                  HAS_CLIP)
        z = (x_prev - mean) / c4[:, None]
        if BACKWARD:
            g = tl.load(gout_ptr + rows * s_gout, mask=rmask, other=0.0).to(tl.float32)
            dmean_deps = c3 - c2 * c1 * c0
            grad = (g * dmean_deps / c4)[:, None] * z
            if HAS_CLIP:  # torch's clamp passes gradient on the closed interval
                grad = tl.where((x0_raw >= -clip) & (x0_raw <= clip), grad, 0.0)
            tl.store(geps_ptr + rows[:, None] * d + cols[None, :], grad.to(geps_ptr.dtype.element_ty), mask=mask)
        else:
            z = tl.where(mask, z, 0.0)
            tl.store(logp_ptr + rows, -0.5 * tl.sum(z * z, axis=1) - d * (tl.log(c4) + log_norm), mask=rmask)


def _launch_shape(n: int, d: int):
    """Whole rows per program (D = 48 pads to 64 lanes); enough rows that a program moves a few KB."""
    block_d = triton.next_power_of_2(d)
    block_n = min(triton.next_power_of_2(n), max(1, 2048 // block_d))
    return (triton.cdiv(n, block_n),), block_n, block_d


def _coef_rows(coef: torch.Tensor, n: int, device):
    coef = coef.to(device=device, dtype=torch.float32).reshape(-1, NUM_COEF).contiguous()
    if coef.shape[0] not in (1, n):
        raise ValueError(f"coef has {coef.shape[0]} rows for {n} rows of x")
    return coef, 0 if coef.shape[0] == 1 else NUM_COEF


def _no_grad_inputs(name: str, *tensors, backend: str = "triton"):
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"the {backend} {name} differentiates w.r.t. eps only; detach the other inputs")


@register("ddim_step", "triton")
def ddim_step_triton(x, eps, noise, coef, clip):
    _no_grad_inputs("ddim_step (sampling, no autograd; use ddim_logprob for the PPO path)", x, eps, noise)
    n, d = x.shape
    coef, s_coef = _coef_rows(coef, n, x.device)
    out = torch.empty((n, d), device=x.device, dtype=x.dtype)
    logp = torch.empty(n, device=x.device, dtype=torch.float32)
    z = x if noise is None else noise
    grid, block_n, block_d = _launch_shape(n, d)
    _ddim_step_kernel[grid](x, eps, z, coef, out, logp, n, d, x.stride(0), x.stride(1), eps.stride(0),
                            eps.stride(1), z.stride(0), z.stride(1), s_coef, 0.0 if clip is None else float(clip),
                            HALF_LOG_2PI, HAS_NOISE=noise is not None, HAS_CLIP=clip is not None,
                            BLOCK_N=block_n, BLOCK_D=block_d)
    return out, logp


def _ddim_logprob_launch(x, eps, x_prev, coef, s_coef, clip, grad_logp=None):
    n, d = x.shape
    backward = grad_logp is not None
    logp = torch.empty(0 if backward else n, device=x.device, dtype=torch.float32)
    grad_eps = torch.empty((n, d) if backward else (0,), device=x.device, dtype=eps.dtype)
    gout = grad_logp if backward else logp
    grid, block_n, block_d = _launch_shape(n, d)
    _ddim_logprob_kernel[grid](x, eps, x_prev, coef, gout, logp, grad_eps, n, d, x.stride(0), x.stride(1),
                               eps.stride(0), eps.stride(1), x_prev.stride(0), x_prev.stride(1), s_coef,
                               gout.stride(0) if backward else 0, 0.0 if clip is None else float(clip),
                               HALF_LOG_2PI, BACKWARD=backward, HAS_CLIP=clip is not None, BLOCK_N=block_n,
                               BLOCK_D=block_d)
    return grad_eps if backward else logp


class DDIMLogProbTriton(torch.autograd.Function):
    """log p(x_prev | x, ε̂) per row with ∂/∂ε̂; the backward recomputes the mean instead of saving it."""

    @staticmethod
    def forward(ctx, x, eps, x_prev, coef, clip):
        coef, s_coef = _coef_rows(coef, x.shape[0], x.device)
        ctx.save_for_backward(x, eps, x_prev, coef)
        ctx.s_coef, ctx.clip = s_coef, clip
        return _ddim_logprob_launch(x, eps, x_prev, coef, s_coef, clip)

    @staticmethod
    def backward(ctx, grad_logp):
        x, eps, x_prev, coef = ctx.saved_tensors
        grad_eps = _ddim_logprob_launch(x, eps, x_prev, coef, ctx.s_coef, ctx.clip, grad_logp)
        return None, grad_eps, None, None, None


@register("ddim_logprob", "triton")
def ddim_logprob_triton(x, eps, x_prev, coef, clip):
    _no_grad_inputs("ddim_logprob", x, x_prev, coef)
    return DDIMLogProbTriton.apply(x, eps, x_prev, coef, clip)


@register("ddim_step", "cpp")
def ddim_step_cpp(x, eps, noise, coef, clip):
    if not _cpp.runs(x):
        return ddim_step_torch(x, eps, noise, coef, clip)
    _no_grad_inputs("ddim_step (sampling, no autograd; use ddim_logprob for the PPO path)", x, eps, noise,
                    backend="cpp")
    n, d = x.shape
    coef, s_coef = _coef_rows(coef, n, x.device)
    (x, sx), (eps, se) = _cpp.rows(x, "x"), _cpp.rows(eps.to(x.dtype), "eps")
    noise, sz = _cpp.rows(noise.to(x.dtype), "noise") if noise is not None else (None, 0)
    out = torch.empty((n, d), dtype=torch.float32)
    logp = torch.empty(n, dtype=torch.float32)
    _cpp.ext().ddim_step(x.data_ptr(), sx, eps.data_ptr(), se, 0 if noise is None else noise.data_ptr(), sz,
                         coef.data_ptr(), s_coef, out.data_ptr(), logp.data_ptr(), n, d, _clip_arg(clip))
    return out, logp


def _ddim_logprob_cpp(x, eps, x_prev, coef, clip):
    """(log p, the inputs as passed to the kernel, their row strides)."""
    n, d = x.shape
    coef, s_coef = _coef_rows(coef, n, x.device)
    (x, sx), (eps, se), (x_prev, sp) = _cpp.rows(x, "x"), _cpp.rows(eps, "eps"), _cpp.rows(x_prev, "x_prev")
    logp = torch.empty(n, dtype=torch.float32)
    _cpp.ext().ddim_logprob(x.data_ptr(), sx, eps.data_ptr(), se, x_prev.data_ptr(), sp, coef.data_ptr(), s_coef,
                            logp.data_ptr(), n, d, _clip_arg(clip))
    return logp, (x, eps, x_prev, coef), (sx, se, sp, s_coef)


class DDIMLogProbCpp(torch.autograd.Function):
    """log p(x_prev | x, ε̂) per row with ∂/∂ε̂ on the CPU kernels; the backward recomputes the mean."""

    @staticmethod
    def forward(ctx, x, eps, x_prev, coef, clip):
        logp, saved, ctx.strides = _ddim_logprob_cpp(x, eps, x_prev, coef, clip)
        ctx.save_for_backward(*saved)
        ctx.clip = clip
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        x, eps, x_prev, coef = ctx.saved_tensors
        sx, se, sp, s_coef = ctx.strides
        n, d = x.shape
        grad_logp = grad_logp.to(torch.float32).contiguous()
        grad_eps = torch.empty((n, d), dtype=torch.float32)
        _cpp.ext().ddim_logprob_backward(x.data_ptr(), sx, eps.data_ptr(), se, x_prev.data_ptr(), sp,
                                         coef.data_ptr(), s_coef, _cpp.ptr(grad_logp, "grad_logp"),
                                         grad_eps.data_ptr(), n, d, _clip_arg(ctx.clip))
        return None, grad_eps, None, None, None


@register("ddim_logprob", "cpp")
def ddim_logprob_cpp(x, eps, x_prev, coef, clip):
    if not _cpp.runs(x):
        return ddim_logprob_torch(x, eps, x_prev, coef, clip)
    _no_grad_inputs("ddim_logprob", x, x_prev, coef, backend="cpp")
    eps, x_prev = eps.to(x.dtype), x_prev.to(x.dtype)
    if _cpp.needs_grad(eps):
        return DDIMLogProbCpp.apply(x, eps, x_prev, coef, clip)
    return _ddim_logprob_cpp(x, eps, x_prev, coef, clip)[0]


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def ddim_step(x, eps, noise, coef, clip=1.0, backend=None):
    """One sampling transition for latents of any shape [N, ...]; returns (x_prev [N, ...], log-prob [N])."""
    fn = get("ddim_step", backend, x.device)
    x_prev, logp = fn(_rows(x), _rows(eps), None if noise is None else _rows(noise), coef, clip)
    return x_prev.view_as(x), logp


def ddim_logprob(x, eps, x_prev, coef, clip=1.0, backend=None):
    """Log-prob of stored transitions x → x_prev under ε̂ (differentiable in ε̂); [N, ...] → [N]."""
    fn = get("ddim_logprob", backend, x.device)
    return fn(_rows(x), _rows(eps), _rows(x_prev), coef, clip)
