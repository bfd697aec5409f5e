"""Discrete cosine noise schedule (Nichol & Dhariwal 2021) and the ε-prediction loss (paper Eq. 7).

Everything is computed in float64 once and cast on use: ᾱ_k spans seven orders of magnitude at K = 100, and
the DDIM coefficients derived from it (ratios, square roots of differences) lose digits in float32.
"""
from __future__ import annotations

import math

import torch


def cosine_betas(num_timesteps: int = 100, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """β_k = min(1 − ᾱ(k+1)/ᾱ(k), max_beta) with ᾱ(t) = cos²(((t/K) + s)/(1 + s) · π/2), k = 0 … K−1."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    t = torch.arange(num_timesteps + 1, dtype=torch.float64)
    f = torch.cos(((t / num_timesteps) + s) / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


class NoiseSchedule:
    """β, α and ᾱ for K discrete timesteps indexed 0 … K−1 (timestep k corrupts with ᾱ_k)."""

    def __init__(self, num_timesteps: int = 100, s: float = 0.008, max_beta: float = 0.999):
        self.num_timesteps = num_timesteps
        self.betas = cosine_betas(num_timesteps, s, max_beta)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_k | x_0) = N(√ᾱ_k x_0, (1 − ᾱ_k) I), batched over the first dim of x0."""
        ab = self.alphas_cumprod.to(x0.device)[k].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def denoising_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, cond: torch.Tensor,
                   generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    """Eq. 7: E_{k, ε} ‖ε − ε_θ(x_k, k, cond)‖², k ~ U{0 … K−1}, ε ~ N(0, I).

    ``reduction="none"`` returns the per-sample loss (mean over the action dims), which the BC and PL
    regularisers of fine-tuning reuse.
    """
    b = x0.shape[0]
    k = torch.randint(0, schedule.num_timesteps, (b,), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    eps = model(schedule.add_noise(x0, noise, k), k, cond)
    per_sample = (eps - noise).pow(2).flatten(1).mean(1)
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
