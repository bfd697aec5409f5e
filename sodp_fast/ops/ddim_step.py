"""Fused DDIM step with the Gaussian log-prob of the transition: PyTorch reference and fused backends.

One DDIM transition x_t → x_prev, written per row of a [N, D] batch (D = Tp·A, the whole action latent):

    x̂0    = clamp((x_t − c1·ε̂) · c0, ±clip)       c0 = 1/√ᾱ_t, c1 = √(1 − ᾱ_t)  (no clamp when clip is None)
    ε̃     = (x_t − c5·x̂0) / c1                   c5 = √ᾱ_t  (ε consistent with the clipped x̂0)
    mean  = c2·x̂0 + c3·ε̃                         c2 = √ᾱ_prev, c3 = √(1 − ᾱ_prev − σ_t²)
    x_prev = mean + c4·z,  z ~ N(0, I)            c4 = max(σ_t, σ_min)
    log p = Σ_D [−½((x_prev − mean)/c4)² − log c4 − ½ log 2π]

``coef`` holds (c0 … c5) per row, [N, 6] (or [6], broadcast), so one call serves a sampling step (all rows at
one timestep) and the PPO path (rows at different denoising steps of stored chains).

Backends: "torch" (the reference, differentiable everywhere), "triton", "cuda" and "cpp" (float32 CPU kernels;
other dtypes run the reference). The fused ``ddim_step`` is for sampling only and the fused ``ddim_logprob``
gives ∂log p/∂ε̂ only (x, x_prev and coef are data). The compiled kernels (cuda, cpp) share their per-element
math (``csrc/kernel_math.h``) and report the log-prob of the stored x_prev; the Triton ones take z = noise
directly and use ε̃ = ε̂ where the clamp is inactive (see ``_ddim_mean``). All compute in float32 and return
log p in float32 (a bf16 log-prob of ≈ −50 is off by ≈ 0.2, useless for PPO ratios).

Tolerances against a float64 reference on the same (rounded) inputs (‖out − ref‖/‖ref‖): float32 ≲ 1e-5 for
x_prev, log p and ∂log p/∂ε̂, bf16 ≲ 1e-2 — or, where float32 itself is ill-conditioned (clip=None and
|x̂0| ≫ 1, e.g. ≈ 1e3 at the first step with a poor ε̂), no worse than twice PyTorch's own float32 error.
Near ±clip the clamp may decide differently than the reference (gradient 0 vs not): the compiled kernels round
x − c1·ε̂ once (``ddim_x0``), torch and triton twice before c0 ≈ 2e3 magnifies it at the first step, so their
x̂0 errs by ~1e-4 with a good ε̂ (worst ∂log p/∂ε̂ off the clamp edge in 200 seeded draws: torch float32
1.1e-5, cpp 1.7e-7 relative).
"""
from __future__ import annotations

import math

import torch

from sodp_fast.ops import _cpp, _cuda
from sodp_fast.ops.dispatch import get, register, tl, triton

NUM_COEF = 6
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def ddim_mean_torch(x: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, clip: float | None):
    """Mean and std of p(x_prev | x_t) for rows of x, eps: [N, D]."""
    coef = coef.to(x.dtype).reshape(-1, NUM_COEF).expand(x.shape[0], NUM_COEF)
    c0, c1, c2, c3, c4, c5 = (coef[:, i : i + 1] for i in range(NUM_COEF))
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


def _coef_rows(coef: torch.Tensor, n: int, device):
    """float32 coefficients as [1, 6] (shared: row stride 0) or [N, 6] (per row: stride 6), and that stride."""
    coef = coef.to(device=device, dtype=torch.float32).reshape(-1, NUM_COEF).contiguous()
    if coef.shape[0] not in (1, n):
        raise ValueError(f"coef has {coef.shape[0]} rows for {n} rows of x")
    return coef, 0 if coef.shape[0] == 1 else NUM_COEF


def _refuse_grad(backend: str, op: str, *tensors):
    """The fused ddim_step has no backward, and the fused ddim_logprob one w.r.t. ε̂ only: refuse a gradient that
    would otherwise be silently missing."""
    if _cpp.needs_grad(*tensors):
        why = ("is for sampling (no autograd); use ddim_logprob for the PPO path" if op == "ddim_step" else
               "differentiates w.r.t. eps only; detach x, x_prev and coef (stored chain data) or use backend='torch'")
        raise RuntimeError(f"the {backend} {op} {why}")


class DDIMLogProb(torch.autograd.Function):
    """log p(x_prev | x, ε̂) per row with ∂/∂ε̂ on a fused backend's ``launch(x, eps, x_prev, coef, s_coef, clip,
    grad_logp=None)`` (log p, or ∂L/∂ε̂ given ∂L/∂log p); the backward recomputes the mean instead of saving it."""

    @staticmethod
    def forward(ctx, x, eps, x_prev, coef, clip, launch):
        coef, s_coef = _coef_rows(coef, x.shape[0], x.device)
        ctx.save_for_backward(x, eps, x_prev, coef)
        ctx.s_coef, ctx.clip, ctx.launch = s_coef, clip, launch
        return launch(x, eps, x_prev, coef, s_coef, clip)

    @staticmethod
    def backward(ctx, grad_logp):
        return None, ctx.launch(*ctx.saved_tensors, ctx.s_coef, ctx.clip, grad_logp), None, None, None, None


if triton is not None:

    @triton.jit
    def _load_rows(ptr, rows, cols, s_row, s_col, mask):
        return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col, mask=mask, other=0.0).to(tl.float32)

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
    def _ddim_kernel(x_ptr, eps_ptr, y_ptr, coef_ptr, gout_ptr, out_ptr, logp_ptr, n, d, sx0, sx1, se0, se1, sy0,
                     sy1, s_coef, s_gout, clip, log_norm, MODE: tl.constexpr, HAS_Y: tl.constexpr,
                     HAS_CLIP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """MODE 0 (sampling): y is the noise z (or absent), writes x_prev to ``out`` and log p [N]. MODE 1: y is the
        stored x_prev, writes log p. MODE 2 (its backward): writes ∂L/∂ε̂ = g · (z/σ) · (c3 − c2·c1·c0) ·
        [x̂0 in bounds] to ``out``."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < n
        mask = rmask[:, None] & (cols[None, :] < d)
        c = coef_ptr + rows * s_coef
        c0, c1, c2, c3, c4, c5 = (tl.load(c, mask=rmask, other=1.0), tl.load(c + 1, mask=rmask, other=1.0),
                                  tl.load(c + 2, mask=rmask, other=1.0), tl.load(c + 3, mask=rmask, other=1.0),
                                  tl.load(c + 4, mask=rmask, other=1.0), tl.load(c + 5, mask=rmask, other=1.0))
        x = _load_rows(x_ptr, rows, cols, sx0, sx1, mask)
        eps = _load_rows(eps_ptr, rows, cols, se0, se1, mask)
        mean, x0_raw = _ddim_mean(x, eps, c0[:, None], c1[:, None], c2[:, None], c3[:, None], c5[:, None], clip,
                                  HAS_CLIP)
        if MODE == 0:
            if HAS_Y:
                z = _load_rows(y_ptr, rows, cols, sy0, sy1, mask)
                res = mean + c4[:, None] * z
                sq = tl.sum(z * z, axis=1)
            else:
                res = mean
                sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        else:
            z = (_load_rows(y_ptr, rows, cols, sy0, sy1, mask) - mean) / c4[:, None]
            if MODE == 2:
                g = tl.load(gout_ptr + rows * s_gout, mask=rmask, other=0.0).to(tl.float32)
                res = (g * (c3 - c2 * c1 * c0) / c4)[:, None] * z
                if HAS_CLIP:  # torch's clamp passes gradient on the closed interval
                    res = tl.where((x0_raw >= -clip) & (x0_raw <= clip), res, 0.0)
            else:
                z = tl.where(mask, z, 0.0)
                sq = tl.sum(z * z, axis=1)
        if MODE != 1:
            tl.store(out_ptr + rows[:, None] * d + cols[None, :], res.to(out_ptr.dtype.element_ty), mask=mask)
        if MODE != 2:
            tl.store(logp_ptr + rows, -0.5 * sq - d * (tl.log(c4) + log_norm), mask=rmask)


def _ddim_triton(mode, x, eps, y, coef, s_coef, clip, grad_logp=None):
    """(out, log p) of ``_ddim_kernel`` in ``mode``; whole rows per program (D = 48 pads to 64 lanes), enough rows
    that a program moves a few KB."""
    n, d = x.shape
    out = torch.empty((0,) if mode == 1 else (n, d), device=x.device, dtype=x.dtype if mode == 0 else eps.dtype)
    logp = torch.empty(0 if mode == 2 else n, device=x.device, dtype=torch.float32)
    z = x if y is None else y  # a placeholder pointer where y is absent
    gout = logp if grad_logp is None else grad_logp
    block_d = triton.next_power_of_2(d)
    block_n = min(triton.next_power_of_2(n), max(1, 2048 // block_d))
    _ddim_kernel[(triton.cdiv(n, block_n),)](
        x, eps, z, coef, gout, out, logp, n, d, *x.stride(), *eps.stride(), *z.stride(), s_coef,
        gout.stride(0) if mode == 2 else 0, 0.0 if clip is None else float(clip), HALF_LOG_2PI, MODE=mode,
        HAS_Y=y is not None, HAS_CLIP=clip is not None, BLOCK_N=block_n, BLOCK_D=block_d)
    return out, logp


@register("ddim_step", "triton")
def ddim_step_triton(x, eps, noise, coef, clip):
    _refuse_grad("triton", "ddim_step", x, eps, noise)
    return _ddim_triton(0, x, eps, noise, *_coef_rows(coef, x.shape[0], x.device), clip)


def _ddim_logprob_triton(x, eps, x_prev, coef, s_coef, clip, grad_logp=None):
    out, logp = _ddim_triton(1 if grad_logp is None else 2, x, eps, x_prev, coef, s_coef, clip, grad_logp)
    return logp if grad_logp is None else out


@register("ddim_logprob", "triton")
def ddim_logprob_triton(x, eps, x_prev, coef, clip):
    _refuse_grad("triton", "ddim_logprob", x, x_prev, coef)
    return DDIMLogProb.apply(x, eps, x_prev, coef, clip, _ddim_logprob_triton)


@register("ddim_step", "cpp")
def ddim_step_cpp(x, eps, noise, coef, clip):
    if not _cpp.runs(x):
        return ddim_step_torch(x, eps, noise, coef, clip)
    _refuse_grad("cpp", "ddim_step", x, eps, noise)
    n, d = x.shape
    coef, s_coef = _coef_rows(coef, n, x.device)
    (x, sx), (eps, se) = _cpp.rows(x, "x"), _cpp.rows(eps.to(x.dtype), "eps")
    noise, sz = _cpp.rows(noise.to(x.dtype), "noise") if noise is not None else (None, 0)
    out = torch.empty((n, d), dtype=torch.float32)
    logp = torch.empty(n, dtype=torch.float32)
    _cpp.ext().ddim_step(x.data_ptr(), sx, eps.data_ptr(), se, 0 if noise is None else noise.data_ptr(), sz,
                         coef.data_ptr(), s_coef, out.data_ptr(), logp.data_ptr(), n, d, _clip_arg(clip))
    return out, logp


def _ddim_logprob_cpp(x, eps, x_prev, coef, s_coef, clip, grad_logp=None):
    """On rows laid out by ``_cpp.rows`` (unit inner stride)."""
    n, d = x.shape
    rows = (x.data_ptr(), x.stride(0), eps.data_ptr(), eps.stride(0), x_prev.data_ptr(), x_prev.stride(0),
            coef.data_ptr(), s_coef)
    if grad_logp is None:
        logp = torch.empty(n, dtype=torch.float32)
        _cpp.ext().ddim_logprob(*rows, logp.data_ptr(), n, d, _clip_arg(clip))
        return logp
    grad_logp = grad_logp.to(torch.float32).contiguous()
    grad_eps = torch.empty((n, d), dtype=torch.float32)
    _cpp.ext().ddim_logprob_backward(*rows, _cpp.ptr(grad_logp, "grad_logp"), grad_eps.data_ptr(), n, d,
                                     _clip_arg(clip))
    return grad_eps


@register("ddim_logprob", "cpp")
def ddim_logprob_cpp(x, eps, x_prev, coef, clip):
    """Without autograd (rollouts) the kernel is called directly, saving the autograd Function's overhead."""
    if not _cpp.runs(x):
        return ddim_logprob_torch(x, eps, x_prev, coef, clip)
    _refuse_grad("cpp", "ddim_logprob", x, x_prev, coef)
    x, eps, x_prev = (_cpp.rows(t, name)[0] for t, name in ((x, "x"), (eps.to(x.dtype), "eps"),
                                                             (x_prev.to(x.dtype), "x_prev")))
    if _cpp.needs_grad(eps):
        return DDIMLogProb.apply(x, eps, x_prev, coef, clip, _ddim_logprob_cpp)
    return _ddim_logprob_cpp(x, eps, x_prev, *_coef_rows(coef, x.shape[0], x.device), clip)


@register("ddim_step", "cuda")
def ddim_step_cuda(x, eps, noise, coef, clip):
    _refuse_grad("cuda", "ddim_step", eps)
    n, d = x.shape
    x, eps = x.contiguous(), eps.contiguous()
    coef, s_coef = _coef_rows(coef, n, x.device)
    out = torch.empty_like(x)
    logp = torch.empty(n, device=x.device, dtype=torch.float32)
    noise_ptr = 0 if noise is None else _cuda.check(noise.contiguous(), "noise", x.dtype)
    _cuda.ext().ddim_step(_cuda.check(x, "x"), _cuda.check(eps, "eps", x.dtype), noise_ptr,
                          _cuda.check(coef, "coef"), s_coef, _cuda.check(out, "x_prev"),
                          _cuda.check(logp, "logp"), n, d, _clip_arg(clip),
                          _cuda.dtype_code(x, "ddim_step"), _cuda.stream())
    return out, logp


def _ddim_logprob_cuda(x, eps, x_prev, coef, s_coef, clip, grad_logp=None):
    n, d = x.shape
    code = _cuda.dtype_code(x, "ddim_logprob")
    rows = (_cuda.check(x, "x"), _cuda.check(eps, "eps", x.dtype), _cuda.check(x_prev, "x_prev", x.dtype),
            _cuda.check(coef, "coef"), s_coef)
    if grad_logp is None:
        logp = torch.empty(n, device=x.device, dtype=torch.float32)
        _cuda.ext().ddim_logprob(*rows, _cuda.check(logp, "logp"), n, d, _clip_arg(clip), code, _cuda.stream())
        return logp
    grad_logp = grad_logp.to(torch.float32).contiguous()
    grad_eps = torch.empty_like(eps)
    _cuda.ext().ddim_logprob_backward(*rows, _cuda.check(grad_logp, "grad_logp"), _cuda.check(grad_eps, "grad_eps"),
                                      n, d, _clip_arg(clip), code, _cuda.stream())
    return grad_eps


@register("ddim_logprob", "cuda")
def ddim_logprob_cuda(x, eps, x_prev, coef, clip):
    """ε̂ is cast to x's dtype (e.g. a bf16 U-Net output under autocast with fp32 latents), differentiably."""
    _refuse_grad("cuda", "ddim_logprob", x, x_prev, coef)
    eps = eps.to(x.dtype).contiguous()
    return DDIMLogProb.apply(x.contiguous(), eps, x_prev.to(x.dtype).contiguous(), coef, clip, _ddim_logprob_cuda)


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
