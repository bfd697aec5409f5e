"""The two buffers of SODP fine-tuning (Algorithm 1): the replay buffer B and the target buffer B_target.

* **B** holds chunks as the sampler produced them: observation history, the denoising chain (S + 1 latents),
  the S old log-probs and the chunk reward r(a⁰). PPO (Eq. 12) is an importance-sampling estimate around the
  policy that drew the chains, so B keeps only the last ``capacity`` rollout iterations (default 1: on-policy;
  older chains mostly fall outside the clip band). Minibatches mix chains × denoising steps, as in DPPO.
* **B_target** is trajectory-level (paper §3.2): the ``capacity`` most proficient trajectories so far, ranked by
  (success, return). BC pairs are (observation history at a chunk start, the Tp actions executed from there),
  padded with the last action as pre-training windows are. Executed rather than planned actions: they are what
  earned the return that made the trajectory proficient.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import torch

from sodp_fast.errors import CheckpointError
from sodp_fast.train.run import record, tensor


@dataclass
class Chunks:
    """Rows = (chunk, env) pairs of one rollout iteration; what B stores."""

    obs: torch.Tensor        # [M, To, D] observation history the chain was conditioned on
    latents: torch.Tensor    # [M, S + 1, Tp, A] x_K … x_0
    log_probs: torch.Tensor  # [M, S] log-prob of each transition under the policy that sampled it
    rewards: torch.Tensor    # [M] chunk reward r(a⁰): sum of the executed rewards (γ = 1)
    returns: torch.Tensor    # [M] return-to-go: this chunk's reward plus every later chunk's of the episode
    index: torch.Tensor      # [M] int64 chunk index t within its episode (the ``step`` baseline groups by it)

    def __len__(self) -> int:
        return self.rewards.shape[0]

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, device, config=None,
                     where="checkpoint") -> "Chunks":
        """Checked against ``config`` (a PlannerConfig; None: any shapes): a mis-shaped buffer is a CheckpointError."""
        c = config
        shapes = {} if c is None else {
            "obs": (None, c.n_obs_steps, c.obs_dim), "latents": (None, c.ddim_steps + 1, c.horizon, c.action_dim),
            "log_probs": (None, c.ddim_steps), "rewards": (None,), "returns": (None,), "index": (None,)}
        parts = {f.name: tensor(tensors, f"{prefix}.{f.name}", where, shapes.get(f.name)) for f in fields(cls)}
        if len({t.shape[0] for t in parts.values()}) != 1:
            raise CheckpointError(f"{where}: the tensors of {prefix} have different numbers of rows")
        return cls(**{k: v.to(device) for k, v in parts.items()})


@dataclass
class RowBatch:
    """A minibatch of denoising transitions drawn jointly over chains × steps."""

    obs: torch.Tensor          # [B, To, D]
    transitions: torch.Tensor  # [B, 2, Tp, A] (x_k, x_{k-1})
    steps: torch.Tensor        # [B] index of the transition in its chain (0 = first, from noise)
    old_log_probs: torch.Tensor  # [B]
    advantages: torch.Tensor   # [B] the chain's (normalised) chunk reward, broadcast to every step
    clean: torch.Tensor        # [B, Tp, A] the chain's final sample x_0 (for the PL regulariser)


class ReplayBuffer:
    """B: chunks of the last ``capacity`` rollout iterations."""

    def __init__(self, capacity: int = 1):
        if capacity < 1:
            raise ValueError("replay capacity must be >= 1 iteration")
        self.capacity = capacity
        self.parts: deque[Chunks] = deque(maxlen=capacity)
        self._all: Chunks | None = None

    def add(self, chunks: Chunks) -> None:
        self.parts.append(chunks)
        self._all = None

    @property
    def chunks(self) -> Chunks:
        if self._all is None:
            if not self.parts:
                raise RuntimeError("the replay buffer is empty")
            self._all = Chunks(*(torch.cat([getattr(p, f.name) for p in self.parts]) for f in fields(Chunks)))
        return self._all

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def sample(self, batch_size: int, advantages: torch.Tensor, generator: torch.Generator) -> RowBatch:
        """``advantages`` [M] per chain of :attr:`chunks` (see ``losses.chunk_advantages``)."""
        c = self.chunks
        s = c.log_probs.shape[1]
        rows = torch.randint(0, len(c) * s, (batch_size,), device=c.rewards.device, generator=generator)
        chain, step = rows // s, rows % s
        trans = torch.stack([c.latents[chain, step], c.latents[chain, step + 1]], 1)
        return RowBatch(c.obs[chain], trans, step, c.log_probs[chain, step], advantages[chain], c.latents[chain, -1])

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"replay.{i}.{f.name}": getattr(p, f.name) for i, p in enumerate(self.parts) for f in fields(p)}
        return tensors, {"parts": len(self.parts)}

    def load(self, tensors: dict, meta: dict, device, config=None, where="checkpoint") -> None:
        parts = record(meta, "parts", where)
        if not isinstance(parts, int) or not 0 <= parts <= self.capacity:
            raise CheckpointError(f"{where}: replay buffer of {parts!r} parts, capacity {self.capacity}")
        loaded = [Chunks.from_tensors(tensors, f"replay.{i}", device, config, where) for i in range(parts)]
        self.parts, self._all = deque(loaded, maxlen=self.capacity), None


@dataclass(eq=False)
class Trajectory:
    """One episode as B_target sees it."""

    obs: torch.Tensor      # [C, To, D] observation history at each chunk start
    actions: torch.Tensor  # [L, A] executed actions; chunk c starts at step c·Ta
    ret: float
    success: bool


class TargetBuffer:
    """B_target: the ``capacity`` most proficient trajectories, served as (obs history, Tp actions) pairs."""

    def __init__(self, capacity: int, horizon: int, n_action_steps: int):
        if capacity < 1:
            raise ValueError("target buffer capacity must be >= 1 trajectory")
        self.capacity, self.horizon, self.n_action_steps = capacity, horizon, n_action_steps
        self.trajectories: list[Trajectory] = []
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.trajectories)

    def offer(self, traj: Trajectory) -> bool:
        """Keep ``traj`` if it ranks among the best ``capacity``; True if it was kept. Ties keep the older."""
        ranked = sorted(self.trajectories + [traj], key=lambda t: (t.success, t.ret), reverse=True)  # stable
        kept = any(t is traj for t in ranked[: self.capacity])
        if kept:
            self.trajectories = ranked[: self.capacity]
            self._pairs = None
        return kept

    @property
    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(obs [N, To, D], actions [N, Tp, A]) at every chunk start; plans are padded with the last action."""
        if self._pairs is None:
            if not self.trajectories:
                raise RuntimeError("the target buffer is empty")
            plans = []
            for t in self.trajectories:
                starts = torch.arange(t.obs.shape[0], device=t.actions.device) * self.n_action_steps
                idx = (starts[:, None] + torch.arange(self.horizon, device=starts.device)).clamp(max=len(t.actions) - 1)
                plans.append(t.actions[idx])
            self._pairs = torch.cat([t.obs for t in self.trajectories]), torch.cat(plans)
        return self._pairs

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        obs, act = self.pairs
        rows = torch.randint(0, obs.shape[0], (batch_size,), device=obs.device, generator=generator)
        return obs[rows], act[rows]

    def stats(self) -> dict[str, float]:
        rets = [t.ret for t in self.trajectories]
        return {"target_size": len(rets), "target_return_mean": sum(rets) / max(len(rets), 1),
                "target_success_share": sum(t.success for t in self.trajectories) / max(len(rets), 1)}

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"target.{i}.{k}": v for i, t in enumerate(self.trajectories) for k, v in
                   (("obs", t.obs), ("actions", t.actions))}
        return tensors, {"trajectories": [[t.ret, t.success] for t in self.trajectories]}

    def load(self, tensors: dict, meta: dict, device, config=None, where="checkpoint") -> None:
        trajs = record(meta, "trajectories", where)
        if not isinstance(trajs, list) or len(trajs) > self.capacity or any(len(t) != 2 for t in trajs):
            raise CheckpointError(f"{where}: target buffer record is not a list of at most {self.capacity} "
                                  "(return, success) pairs")
        obs_shape = (None, config.n_obs_steps, config.obs_dim) if config else None
        act_shape = (None, config.action_dim) if config else None
        self.trajectories = [Trajectory(tensor(tensors, f"target.{i}.obs", where, obs_shape).to(device),
                                        tensor(tensors, f"target.{i}.actions", where, act_shape).to(device),
                                        float(r), bool(s)) for i, (r, s) in enumerate(trajs)]
        self._pairs = None
