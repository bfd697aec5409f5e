"""ConditionalUnet1D: Diffusion Policy's CNN noise model ε_θ(x_k, k, cond) for action sequences.

Conv1d–GroupNorm–Mish residual blocks; every block is FiLM-conditioned (per-channel scale and shift) on the
diffusion-step embedding concatenated with the flattened To observations. Two resolutions are halved on the
way down and restored on the way up, so the horizon must be divisible by 2^(levels − 1) (4 for the default
three levels; Tp = 12 works, unlike U-Nets that require a power of two).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from sodp_fast.ops.film_epilogue import film_epilogue


@dataclass(frozen=True)
class UNetConfig:
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        return cls(**{**d, "down_dims": tuple(d["down_dims"])})


PRESETS = {
    "default": UNetConfig(),  # ≈ 66 M parameters for A = 4, cond = 2 × 39: the paper's setup
    "small": UNetConfig(down_dims=(64, 128, 256), kernel_size=5, n_groups=8, step_embed_dim=64),
    "tiny": UNetConfig(down_dims=(32, 64), kernel_size=3, n_groups=4, step_embed_dim=32),
}


def preset(name: str) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


class SinusoidalStepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(torch.arange(half) * (-math.log(10000) / (half - 1))), persistent=False)

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        arg = k.float()[:, None] * self.freqs[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class ConvGroupNorm(nn.Module):
    """Conv1d followed by the parameters of its GroupNorm; the norm itself runs in the fused epilogue."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, c_out)

    def forward(self, x, scale=None, shift=None, residual=None):
        return film_epilogue(self.conv(x), self.norm.weight, self.norm.bias, self.norm.num_groups,
                             scale, shift, residual, self.norm.eps)


class ConditionalResidualBlock1D(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block0 = ConvGroupNorm(c_in, c_out, kernel_size, n_groups)
        self.block1 = ConvGroupNorm(c_out, c_out, kernel_size, n_groups)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual_conv = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.cond_encoder(cond).chunk(2, dim=-1)
        h = self.block0(x, scale, shift)
        return self.block1(h, residual=self.residual_conv(x))


class ConditionalUnet1D(nn.Module):
    """``model(x, k, cond)``: x [B, Tp, A] noisy actions, k [B] timesteps, cond [B, To·obs_dim] → ε̂ [B, Tp, A]."""

    def __init__(self, action_dim: int, cond_dim: int, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.action_dim, self.cond_dim, self.config = action_dim, cond_dim, config
        dims = (action_dim, *config.down_dims)
        ks, g, dsed = config.kernel_size, config.n_groups, config.step_embed_dim
        self.step_encoder = nn.Sequential(SinusoidalStepEmbedding(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(),
                                          nn.Linear(4 * dsed, dsed))
        film_dim = dsed + cond_dim
        pairs = list(zip(dims[:-1], dims[1:]))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(nn.ModuleList([
                ConditionalResidualBlock1D(c_in, c_out, film_dim, ks, g),
                ConditionalResidualBlock1D(c_out, c_out, film_dim, ks, g),
                nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)]))
        mid = dims[-1]
        self.mid = nn.ModuleList([ConditionalResidualBlock1D(mid, mid, film_dim, ks, g) for _ in range(2)])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):  # every up level doubles T again; the top skip goes unused
            self.up.append(nn.ModuleList([
                ConditionalResidualBlock1D(2 * c_out, c_in, film_dim, ks, g),
                ConditionalResidualBlock1D(c_in, c_in, film_dim, ks, g),
                nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)]))
        self.final_block = ConvGroupNorm(dims[1], dims[1], ks, g)
        self.final_conv = nn.Conv1d(dims[1], action_dim, 1)
        self.horizon_multiple = 2 ** (len(pairs) - 1)

    def forward(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.action_dim:
            raise ValueError(f"x must be [B, Tp, {self.action_dim}], got {tuple(x.shape)}")
        if x.shape[1] % self.horizon_multiple:
            raise ValueError(f"horizon {x.shape[1]} must be a multiple of {self.horizon_multiple} for this U-Net")
        if cond.shape != (x.shape[0], self.cond_dim):
            raise ValueError(f"cond must be [{x.shape[0]}, {self.cond_dim}], got {tuple(cond.shape)}")
        film = torch.cat([self.step_encoder(k.expand(x.shape[0])), cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for res0, res1, downsample in self.down:
            h = res1(res0(h, film), film)
            skips.append(h)
            h = downsample(h)
        for res in self.mid:
            h = res(h, film)
        for res0, res1, upsample in self.up:
            h = res1(res0(torch.cat([h, skips.pop()], dim=1), film), film)
            h = upsample(h)
        return self.final_conv(self.final_block(h)).transpose(1, 2)
