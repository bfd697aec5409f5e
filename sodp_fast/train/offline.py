"""SODP_off (paper C.1): the loss of Eq. 15 on a fixed dataset of the task instead of online rollouts.

Each iteration cuts ``num_envs`` dataset episodes of the task into B's chunks (drawn with the seed (seed,
iteration), so a resumed run draws the same ones); B_target is filled once with the dataset's best episodes.

The chains. Eq. 12 needs a denoising chain ending at each action sequence and its old log-probs, but the
dataset's actions were not drawn by the planner. We draw the chain from the DDIM forward posterior
x_K ~ q(x_K | a⁰), x_{k−1} ~ q_σ(x_{k−1} | x_k, a⁰) (the sampler's floored std, ending exactly at a⁰) and take
the old log-probs under the current model. At ρ = 1 the PPO gradient is then Â · Σ_k ∇ log p_θ(x_{k−1} | x_k),
a reward-weighted ELBO step on the recorded actions with PPO's clip as trust region. It is not an unbiased
policy gradient (the chains come from q, not p_θ), which is why this variant is expected to trail online SODP
(as in the paper's Table 4).
"""
from __future__ import annotations

import numpy as np
import torch

from sodp_fast.data.format import load_dataset
from sodp_fast.errors import SodpError
from sodp_fast.train.buffers import Chunks, TargetBuffer, Trajectory
from sodp_fast.train.rollout import Episode
from sodp_fast.train.run import Timers


class OfflineSource:
    """Serves dataset episodes of one task in place of rollouts (same ``collect`` as ``OnlineSource``)."""

    def __init__(self, root: str, task: str, config, num_envs: int, seed: int, device, timers: Timers):
        from sodp_fast.envs.tasks import canonical_task

        ds = load_dataset(root, [canonical_task(task)], finite=True)
        data = next(iter(ds.tasks.values()))
        self.obs_dim, self.action_dim = ds.obs_dim, ds.action_dim
        self.config, self.num_envs, self.seed, self.device, self.timers = config, num_envs, seed, device, timers
        ends = np.asarray(data.episode_ends)
        starts = np.concatenate([[0], ends[:-1]])
        if len(ends) == 0:
            raise SodpError(f"{root}: task {data.task} has no episodes")
        self.episodes = [(np.array(data.observations[s:e], np.float32), np.array(data.actions[s:e], np.float32),
                          np.array(data.rewards[s:e], np.float64), bool(data.success[i]))
                         for i, (s, e) in enumerate(zip(starts, ends))]
        self.iteration = 0

    def seek(self, iteration: int) -> None:
        self.iteration = iteration

    def _episode_chunks(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray):
        """(obs history [C, To, D], plans [C, Tp, A], chunk rewards [C]) at every Ta-th step."""
        c = self.config
        length = len(actions)
        starts = np.arange(0, length, c.n_action_steps)
        hist = (starts[:, None] + np.arange(-c.n_obs_steps + 1, 1)).clip(min=0)
        plan = (starts[:, None] + np.arange(c.horizon)).clip(max=length - 1)
        chunk_rewards = np.add.reduceat(rewards, starts)
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        return t(obs[hist]), t(actions[plan]), t(chunk_rewards)

    def fill_target(self, target: TargetBuffer) -> None:
        for obs, actions, rewards, success in self.episodes:
            h, _, _ = self._episode_chunks(obs, actions, rewards)
            target.offer(Trajectory(h, torch.as_tensor(actions, device=self.device), float(rewards.sum()), success))

    @torch.no_grad()
    def collect(self, planner, generator: torch.Generator) -> Episode:
        rng = np.random.default_rng([self.seed, self.iteration])
        picked = [self.episodes[i] for i in rng.choice(len(self.episodes), self.num_envs)]
        parts = [self._episode_chunks(o, a, r) for o, a, r, _ in picked]
        obs, plans, rewards = (torch.cat(x) for x in zip(*parts))
        to_go = torch.cat([r.flip(0).cumsum(0).flip(0) for _, _, r in parts])
        index = torch.cat([torch.arange(len(r), device=self.device) for _, _, r in parts])
        with self.timers("sample"):
            latents = planner.sampler.posterior_chain(plans, generator)
            log_probs = planner.chain_log_prob(obs, latents)
        self.iteration += 1
        returns = np.array([r.sum() for _, _, r, _ in picked])
        success = np.array([s for *_, s in picked])
        # no trajectories: B_target already holds the dataset's best (``fill_target``)
        return Episode(Chunks(obs, latents, log_probs, rewards, to_go, index), [], returns, success,
                       sum(len(a) for _, a, _, _ in picked))
