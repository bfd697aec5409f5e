import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest

from sodp_fast.envs.workers import ActionError, ChunkStep, ChunkVecEnv


def _rollout(venv, actions, kill_at=None):
    out = [venv.reset()]
    for k, chunk in enumerate(actions):
        if k == kill_at:
            os.kill(venv.worker_pids()[-1], signal.SIGKILL)
            time.sleep(0.3)
        s = venv.step_chunk(chunk)
        out += [s.obs, s.reward, s.done, s.success, s.steps]
    return out


def test_workers_match_in_process_and_survive_a_killed_worker():
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 3, 3, 8, 4))
    with ChunkVecEnv("reach", 3, seed=2, num_workers=0, max_episode_steps=20) as v:
        ref = _rollout(v, actions[0]) + _rollout(v, actions[1])
    with ChunkVecEnv("reach", 3, seed=2, num_workers=2, max_episode_steps=20) as v:
        pids = v.worker_pids()
        got = _rollout(v, actions[0])
        with pytest.warns(RuntimeWarning, match="died; restarted"):
            got += _rollout(v, actions[1], kill_at=2)
        assert v.restarts == 1 and v.worker_pids()[-1] != pids[-1]
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert np.array_equal(a, b)


def test_chunk_step_shapes_and_truncation():
    with ChunkVecEnv("reach", 2, seed=0, num_workers=0, max_episode_steps=10) as v:
        obs = v.reset()
        assert obs.shape == (2, 2, 39) and obs.dtype == np.float32 and (v.obs_dim, v.action_dim) == (39, 4)
        s = v.step_chunk(np.zeros((2, 12, 4)))
        assert isinstance(s, ChunkStep) and s.steps.tolist() == [10, 10] and s.done.all()
        assert s.reward.dtype == np.float64 and s.success.dtype == np.bool_
        with pytest.raises(RuntimeError, match="reset"):
            v.step_chunk(np.zeros((2, 8, 4)))
        v.reset()
        assert v.step_chunk(np.zeros((2, 8, 4))).steps.tolist() == [8, 8]


def test_bad_actions_are_rejected():
    with ChunkVecEnv("reach", 2, num_workers=0, max_episode_steps=10) as v:
        v.reset()
        with pytest.raises(ActionError, match="shape"):
            v.step_chunk(np.zeros((3, 8, 4)))
        bad = np.zeros((2, 8, 4))
        bad[1, 2, 0] = np.nan
        with pytest.raises(ActionError, match="NaN"):
            v.step_chunk(bad)


def test_seeds_make_runs_reproducible_and_distinct():
    def first_obs(seed):
        with ChunkVecEnv("reach", 4, seed=seed, num_workers=0, max_episode_steps=10) as v:
            return v.reset(), v.reset()
    a, b, c = first_obs(1), first_obs(1), first_obs(2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # a new episode draws new goals


class CountEnv(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    action_space = gym.spaces.Box(-1, 1, (1,))
    max_episode_steps = 5

    def __init__(self, seed):
        self.offset = seed

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([self.offset]), {}

    def step(self, action):
        self.t += 1
        return np.array([self.offset + self.t]), float(action[0]), False, self.t == 5, {"success": self.t == 4}


def test_env_factory_hook():
    with ChunkVecEnv("toy", 2, seed=3, num_workers=0, env_factory=CountEnv) as v:
        assert (v.obs_dim, v.action_dim, v.max_episode_steps) == (1, 1, 5)
        assert v.reset()[:, :, 0].tolist() == [[3000, 3000], [3001, 3001]]
        s = v.step_chunk(np.full((2, 3, 1), 0.5))
        assert s.obs[:, :, 0].tolist() == [[3002, 3003], [3003, 3004]] and s.reward.tolist() == [1.5, 1.5]
        s = v.step_chunk(np.full((2, 8, 1), 2.0))
        assert s.steps.tolist() == [2, 2] and s.reward.tolist() == [2.0, 2.0] and s.success.all() and s.done.all()
