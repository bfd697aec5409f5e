"""Rollouts for fine-tuning: one batched ``planner.sample`` per chunk for all envs, every chain recorded.

Overlap. The envs can be split into ``G`` groups (separate vector envs with their own workers): the planner
samples for group g while a helper thread steps the others' previous chunk (it only waits on worker pipes, which
releases the GIL); with G = 1 sampling and stepping alternate. On 2 CPU cores (tiny preset, reach, 8 envs,
benchmarks/bench_finetune.py) G = 2 is *slower* (261 vs 420 env steps/s): CPU sampling is per-call overhead
bound and competes with the workers for the cores; G = 2 is meant for a GPU (unmeasured). Results do not depend
on timing: groups are sampled in a fixed order from one generator, and each env's episode is a function of its
seed. The update is not overlapped with the next rollout: PPO's ratios assume chains from the current policy.

Timers: env = time spent *waiting* for env results (the env time not hidden behind sampling); sample = the
planner calls.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from sodp_fast.train.buffers import Chunks, Trajectory
from sodp_fast.train.run import Timers


@dataclass
class Episode:
    """One rollout iteration: every env ran one whole episode."""

    chunks: Chunks                   # rows in (chunk, env) order
    trajectories: list[Trajectory]   # one per env
    returns: np.ndarray              # [N]
    success: np.ndarray              # [N] bool
    env_steps: int


class _GroupRecord:
    """Per-chunk records of one env group."""

    def __init__(self):
        self.obs, self.latents, self.log_probs, self.rewards, self.actions = [], [], [], [], []
        self.success, self.done = None, False


class OnlineSource:
    """Collects episodes from vector envs (ChunkVecEnv interface: seek, reset, step_chunk, num_envs, close)."""

    def __init__(self, envs: list, device: torch.device, timers: Timers, cuda_graphs: bool = False):
        self.envs, self.device, self.timers = envs, device, timers
        self._pool = ThreadPoolExecutor(max_workers=1)  # steps one group while the planner samples for the next
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self._graphed = None

    def _sample(self, planner, obs: torch.Tensor, generator: torch.Generator):
        """One batched chain per chunk. With ``cuda_graphs`` the S-step chain is a CUDA-graph replay (captured
        once per env-group size; Adam updates the weights in place, which replays see). Replays draw from the
        default CUDA generator, not ``generator``: seeded once per run, but not part of the checkpoint, so a
        resumed GPU run with graphs continues statistically, not bit-identically."""
        if not self.cuda_graphs:
            return planner.sample(obs, generator=generator)
        if self._graphed is None or self._graphed.planner is not planner:
            from sodp_fast.graphs import GraphedSampler

            self._graphed = GraphedSampler(planner, sorted({e.num_envs for e in self.envs}))
        return self._graphed(obs)

    def seek(self, iteration: int) -> None:
        for env in self.envs:
            env.seek(iteration)

    @torch.no_grad()
    def collect(self, planner, generator: torch.Generator) -> Episode:
        recs = [_GroupRecord() for _ in self.envs]
        with self.timers("env"):
            obs = [env.reset() for env in self.envs]
        pending = [None] * len(self.envs)
        while not all(r.done for r in recs):
            for g, (env, rec) in enumerate(zip(self.envs, recs)):
                if pending[g] is not None:
                    with self.timers("env"):
                        out = pending[g].result()
                    pending[g] = None
                    rec.rewards.append(torch.as_tensor(out.reward, dtype=torch.float32))
                    rec.actions[-1] = rec.actions[-1][:, : int(out.steps[0])]
                    rec.success, rec.done, obs[g] = out.success, bool(out.done.all()), out.obs
                if rec.done:
                    continue
                with self.timers("sample"):
                    o = torch.from_numpy(obs[g]).to(self.device)
                    chain = self._sample(planner, o, generator)
                    actions = planner.executed_actions(chain.sample).float().cpu()
                rec.obs.append(o)
                rec.latents.append(chain.latents)
                rec.log_probs.append(chain.log_probs)
                rec.actions.append(actions)
                pending[g] = self._pool.submit(env.step_chunk, actions.numpy())
        return self._assemble(recs)

    def _assemble(self, recs: list[_GroupRecord]) -> Episode:
        def stack(name):  # [C, N, ...]: chunks stacked, groups joined along the env dim
            return torch.cat([torch.stack(getattr(r, name)) for r in recs], 1)

        obs, latents, log_probs = stack("obs"), stack("latents"), stack("log_probs")
        rewards = stack("rewards").to(self.device)
        # executed actions [N, L, A]; the last chunk may be shorter (truncation), so join along time
        actions = torch.cat([torch.cat([r.actions[c] for r in recs]) for c in range(len(recs[0].actions))], 1)
        actions = actions.to(self.device)
        returns = rewards.sum(0).cpu().double().numpy()
        success = np.concatenate([r.success for r in recs])
        trajectories = [Trajectory(obs[:, i], actions[i], float(returns[i]), bool(success[i]))
                        for i in range(obs.shape[1])]
        index = torch.arange(rewards.shape[0], device=self.device).repeat_interleave(rewards.shape[1])
        to_go = rewards.flip(0).cumsum(0).flip(0)  # [C, N]: Σ of the chunk rewards from each chunk on
        chunks = Chunks(obs.flatten(0, 1), latents.flatten(0, 1), log_probs.flatten(0, 1), rewards.flatten(),
                        to_go.flatten(), index)
        return Episode(chunks, trajectories, returns, success, actions.shape[0] * actions.shape[1])

    def close(self) -> None:
        self._pool.shutdown()
        for env in self.envs:
            env.close()

