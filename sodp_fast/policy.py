"""DiffusionPlanner: observation history → action sequence; owns the U-Net, the observation normaliser, the noise
schedule and the DDIM sampler.  Actions need no normaliser: Meta-World's already live in [−1, 1], the box x̂0 is
clipped to.  Observations are standardised with dataset statistics stored in the checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sodp_fast.diffusion.ddim import DDIMChain, DDIMSampler
from sodp_fast.diffusion.schedule import NoiseSchedule, denoising_loss
from sodp_fast.nn.unet import ConditionalUnet1D, UNetConfig


@dataclass
class PlannerConfig:
    obs_dim: int = 39
    action_dim: int = 4
    n_obs_steps: int = 2  # To
    horizon: int = 12  # Tp
    n_action_steps: int = 8  # Ta
    num_timesteps: int = 100  # K
    ddim_steps: int = 10  # S
    eta: float = 1.0
    std_min: float = 0.1
    clip: float | None = 1.0
    unet: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be in [1, horizon={self.horizon}]")
        if self.n_obs_steps < 1 or self.obs_dim < 1 or self.action_dim < 1:
            raise ValueError("obs_dim, action_dim and n_obs_steps must be positive")
        # Sizes that allocate before any weight is read (schedule tables, sampling buffers): a sane bound, far
        # beyond any planner (the paper: K = 100, Tp = 12).
        for name, cap in (("num_timesteps", 100_000), ("horizon", 10_000), ("n_obs_steps", 1_000),
                          ("obs_dim", 1_000_000), ("action_dim", 1_000_000)):
            if getattr(self, name) > cap:
                raise ValueError(f"{name}={getattr(self, name)} is beyond any planner (at most {cap})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PlannerConfig":
        return cls(**d)


class ObsNormalizer(nn.Module):
    """Per-dimension standardisation; the std is floored so constant dimensions do not blow up."""

    def __init__(self, obs_dim: int, std_floor: float = 1e-2):
        super().__init__()
        self.std_floor = std_floor
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    @torch.no_grad()
    def set_stats(self, mean, std) -> None:
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"normaliser stats must have shape {tuple(self.mean.shape)}, "
                             f"got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("normaliser stats contain NaN or inf")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=self.std_floor))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class DiffusionPlanner(nn.Module):
    def __init__(self, config: PlannerConfig):
        super().__init__()
        self.config = config
        self.normalizer = ObsNormalizer(config.obs_dim)
        self.model = ConditionalUnet1D(config.action_dim, config.n_obs_steps * config.obs_dim, config.unet)
        self.schedule = NoiseSchedule(config.num_timesteps)
        self.sampler = DDIMSampler(self.schedule, config.ddim_steps, config.eta, config.std_min, config.clip)

    @property
    def action_shape(self) -> tuple[int, int]:
        return self.config.horizon, self.config.action_dim

    def encode_obs(self, obs_hist: torch.Tensor) -> torch.Tensor:
        """[B, To, obs_dim] raw observations → [B, To·obs_dim] FiLM conditioning."""
        c = self.config
        if obs_hist.dim() != 3 or obs_hist.shape[1:] != (c.n_obs_steps, c.obs_dim):
            raise ValueError(f"observation history must be [B, {c.n_obs_steps}, {c.obs_dim}], "
                             f"got {tuple(obs_hist.shape)}")
        return self.normalizer(obs_hist.float()).flatten(1)

    def loss(self, obs_hist: torch.Tensor, actions: torch.Tensor, generator=None, reduction: str = "mean"):
        """ε-prediction loss (Eq. 7) on [B, Tp, A] action sequences; also the BC loss of Eq. 14."""
        if actions.shape[1:] != self.action_shape:
            raise ValueError(f"actions must be [B, {self.config.horizon}, {self.config.action_dim}], "
                             f"got {tuple(actions.shape)}")
        return denoising_loss(self.model, self.schedule, actions, self.encode_obs(obs_hist), generator, reduction)

    @torch.no_grad()
    def sample(self, obs_hist: torch.Tensor, deterministic: bool = False, generator=None, **kw) -> DDIMChain:
        return self.sampler.sample(self.model, self.encode_obs(obs_hist), self.action_shape, deterministic,
                                   generator, **kw)

    def chain_log_prob(self, obs_hist: torch.Tensor, latents: torch.Tensor, steps=None, backend=None):
        return self.sampler.chain_log_prob(self.model, self.encode_obs(obs_hist), latents, steps, backend)

    def executed_actions(self, sample: torch.Tensor) -> torch.Tensor:
        """The first Ta of the Tp planned actions (the latent may leave [−1, 1] by the std floor: clip)."""
        return sample[:, : self.config.n_action_steps].clamp(-1, 1)
