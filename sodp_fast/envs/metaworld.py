"""One Meta-World v3 environment with random goals, an observation history and chunked execution.

A planner sees the last ``To`` observations and proposes ``Tp`` actions, of which ``Ta`` are executed before it
plans again (paper B.2/B.3: To=2, Tp=12, Ta=8).  Episodes never terminate early and truncate at 500 steps (not a
multiple of 8): the last chunk stops early.  Success counts if ``info["success"]`` was true at any step, as in
Meta-World's own evaluation: policies often move on after succeeding and the flag drops again.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from sodp_fast.envs.tasks import canonical_task

OBS_DIM = 39
ACTION_DIM = 4
MAX_EPISODE_STEPS = 500


@functools.lru_cache(maxsize=64)
def _goal_pool(task: str, goal_seed: int) -> tuple:
    """The benchmark's 50 pre-sampled goals for ``task`` (≈0.5 s to build, so cached per process)."""
    import metaworld

    bench = metaworld.MT1(task, seed=goal_seed)
    return bench.train_classes[task], tuple(bench.train_tasks)


class MetaWorldEnv(gym.Wrapper):
    """One Meta-World task that picks a goal at every reset: ``goals="presampled"`` from the benchmark's 50 goals
    (MT50-rand as in the paper), ``goals="fresh"`` a new one from the task's goal space.  ``reset(seed=...)``
    makes the episode (goal and initial state) a pure function of the seed: a restarted worker replays it exactly.
    """

    def __init__(self, task: str, seed: int = 0, max_episode_steps: int = MAX_EPISODE_STEPS,
                 goals: str = "presampled", goal_seed: int | None = None):
        if goals not in ("presampled", "fresh"):
            raise ValueError(f"goals must be 'presampled' or 'fresh', not {goals!r}")
        self.task = canonical_task(task)
        env_cls, self._tasks = _goal_pool(self.task, seed if goal_seed is None else goal_seed)
        super().__init__(env_cls())
        self.env.max_path_length = max_episode_steps  # Meta-World truncates (and refuses steps) here
        self._fresh = goals == "fresh"
        self.max_episode_steps = max_episode_steps
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        self._rng = np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.env.set_task(self._tasks[int(self._rng.integers(len(self._tasks)))])
        self.env.seed(int(self._rng.integers(2**31)))
        if self._fresh:
            self.env._freeze_rand_vec = False  # sample the goal from the env's own (just seeded) RNG,
            self.env.seeded_rand_vec = True    # not from numpy's global one
        return self.env.reset()


make_env = MetaWorldEnv  # one random-goal Meta-World v3 env (``task`` with or without ``-v3``)


@dataclass
class ChunkResult:
    """What one env did during one chunk (``workers.ChunkStep``: N envs, each field with a leading [N] axis)."""

    obs: np.ndarray   # [To, obs_dim] float32 history after the chunk
    reward: float     # sum of executed rewards (gamma = 1), float64
    done: bool        # the episode reached truncation (then call reset())
    success: bool     # info["success"] was true at some step of this episode so far
    steps: int        # env steps executed in this chunk, int64


class ChunkEnv:
    """Executes action chunks on one env, keeping its ever-success flag and the last ``n_obs_steps``
    observations, oldest first (the first observation of an episode fills all slots)."""

    def __init__(self, env: gym.Env, n_obs_steps: int = 2):
        self.env = env
        self.max_episode_steps = env.max_episode_steps
        self.history = np.zeros((n_obs_steps, env.observation_space.shape[0]), np.float32)
        self.t, self.success = 0, False

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        self.t, self.success = 0, False
        self.history[:] = obs
        return self.history.copy()

    def step_chunk(self, actions: np.ndarray) -> ChunkResult:
        """Execute ``min(len(actions), steps left)`` actions, clipped to [-1, 1]."""
        if self.t >= self.max_episode_steps:
            raise RuntimeError("episode already truncated: call reset() first")
        n = min(len(actions), self.max_episode_steps - self.t)
        actions = np.clip(actions[:n], -1.0, 1.0)
        total = 0.0
        for a in actions:
            obs, reward, _, _, info = self.env.step(a)
            self.history[:-1] = self.history[1:]
            self.history[-1] = obs
            total += float(reward)
            self.success = self.success or bool(info["success"])
        self.t += n
        return ChunkResult(self.history.copy(), total, self.t >= self.max_episode_steps, self.success, n)
