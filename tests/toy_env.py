"""A known-answer environment for fine-tuning tests, with ChunkVecEnv's interface.

Every env observes a fixed random vector (its history repeats it) and earns −‖a − a*‖² per step, so the best
policy plays a* everywhere; episodes last ``length`` steps. With ``delay`` = d, each chunk's reward is paid d
chunks later (the rest at the episode's end), as a shaped reward pays for a move only once its effect shows. A
"pre-trained" planner that imitates actions drawn from U[−1, 1] is broad and far from a*: fine-tuning should pull
it in.
"""
from __future__ import annotations

import numpy as np
import torch

from sodp_fast.envs.workers import ChunkStep
from sodp_fast.nn.unet import UNetConfig
from sodp_fast.policy import DiffusionPlanner, PlannerConfig

TARGET = np.array([0.6, -0.4], np.float32)
OBS_DIM, ACTION_DIM = 3, 2


class ToyVecEnv:
    def __init__(self, num_envs: int, seed: int = 0, n_obs_steps: int = 2, length: int = 16,
                 obs_dim: int = OBS_DIM, success_tol: float = 0.05, delay: int = 0):
        self.num_envs, self.seed, self.n_obs_steps, self.delay = num_envs, seed, n_obs_steps, delay
        self._owed: list[np.ndarray] = []
        self.obs_dim, self.action_dim, self.max_episode_steps = obs_dim, ACTION_DIM, length
        self.success_tol = success_tol
        self._obs = np.random.default_rng(seed).standard_normal((num_envs, obs_dim)).astype(np.float32)
        self._episode, self._t = -1, 0
        self._success = np.zeros(num_envs, bool)
        self.closed = False

    def _history(self) -> np.ndarray:
        return np.repeat(self._obs[:, None], self.n_obs_steps, 1).copy()

    def seek(self, episode: int) -> None:
        self._episode = episode - 1

    def reset(self) -> np.ndarray:
        self._episode += 1
        self._t = 0
        self._success[:] = False
        self._owed = []
        return self._history()

    def step_chunk(self, actions: np.ndarray) -> ChunkStep:
        n = min(actions.shape[1], self.max_episode_steps - self._t)
        a = np.clip(actions[:, :n], -1, 1)
        per_step = -((a - TARGET) ** 2).sum(-1)  # [N, n]
        self._success |= (per_step > -self.success_tol).any(1)
        self._t += n
        done = np.full(self.num_envs, self._t >= self.max_episode_steps)
        self._owed.append(per_step.sum(1).astype(np.float64))
        due = len(self._owed) if done[0] else max(0, len(self._owed) - self.delay)
        paid = sum(self._owed[:due], np.zeros(self.num_envs))
        self._owed = self._owed[due:]
        return ChunkStep(self._history(), paid, done, self._success.copy(),
                         np.full(self.num_envs, n, np.int64))

    def close(self) -> None:
        self.closed = True


def make_toy_env(num_envs: int, seed: int, num_workers=None, length: int = 16, obs_dim: int = OBS_DIM,
                 delay: int = 0):
    return ToyVecEnv(num_envs, seed, length=length, obs_dim=obs_dim, delay=delay)


def toy_planner_config() -> PlannerConfig:
    return PlannerConfig(obs_dim=OBS_DIM, action_dim=ACTION_DIM, n_obs_steps=2, horizon=8, n_action_steps=4,
                         num_timesteps=20, ddim_steps=5,
                         unet=UNetConfig(down_dims=(16, 32), kernel_size=3, n_groups=4, step_embed_dim=16))


def pretrain_broad(steps: int = 300, batch: int = 64, seed: int = 0, spread: float | None = None) -> DiffusionPlanner:
    """A planner pre-trained on actions ~ U[−1, 1] for random observations: a broad prior; with ``spread``,
    on a* + N(0, spread²) instead: a good planner that fine-tuning must keep."""
    torch.manual_seed(seed)
    planner = DiffusionPlanner(toy_planner_config())
    opt = torch.optim.Adam(planner.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        obs = torch.randn(batch, 2, OBS_DIM, generator=g)
        if spread is None:
            actions = torch.rand(batch, 8, ACTION_DIM, generator=g) * 2 - 1
        else:
            actions = (torch.from_numpy(TARGET) + spread * torch.randn(batch, 8, ACTION_DIM, generator=g)).clamp(-1, 1)
        loss = planner.loss(obs, actions, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return planner
