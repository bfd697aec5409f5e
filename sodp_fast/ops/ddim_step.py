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
"""
from __future__ import annotations

import math

import torch

from sodp_fast.ops import _cuda
from sodp_fast.ops.dispatch import get, register

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
                          _cuda.check(logp, "logp"), n, d, -1.0 if clip is None else float(clip),
                          _cuda.DTYPE_CODES[x.dtype], _cuda.stream())
    return out, logp


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
