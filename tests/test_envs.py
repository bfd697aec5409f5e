import gymnasium as gym
import metaworld
import numpy as np
import pytest

from sodp_fast.envs.metaworld import ChunkEnv, make_env
from sodp_fast.envs.tasks import PAPER_MT10, UnknownTaskError, resolve_tasks
from sodp_fast.errors import SodpError


def test_task_sets_match_metaworld():
    assert sorted(resolve_tasks("mt50")) == sorted(metaworld.ALL_V3_ENVIRONMENTS)
    assert resolve_tasks("mt10") == list(metaworld.env_dict.MT10_V3)
    assert len(resolve_tasks("paper-mt10")) == 10 and "basketball-v3" in resolve_tasks("paper-mt10")
    assert "basketball-v3" not in resolve_tasks("mt10")


def test_resolve_accepts_short_names_lists_and_dedups():
    assert resolve_tasks("reach, push-v3,reach-v2") == ["reach-v3", "push-v3"]
    assert resolve_tasks(["Pick-Place", "paper-mt10"])[:2] == ["pick-place-v3", PAPER_MT10[0]]
    assert len(resolve_tasks("paper-mt10,mt10")) == 14  # 6 tasks in both


def test_unknown_task_suggests_closest():
    with pytest.raises(UnknownTaskError, match="did you mean 'pick-place'") as e:
        resolve_tasks("reach,pick-plcae")
    assert isinstance(e.value, ValueError) and isinstance(e.value, SodpError)
    assert "\n" not in str(e.value)


def test_env_reset_is_a_function_of_its_seed_and_goals_vary():
    env = make_env("reach", seed=0, max_episode_steps=10)
    a, _ = env.reset(seed=11)
    b, _ = make_env("reach-v3", seed=5, max_episode_steps=10, goal_seed=0).reset(seed=11)
    assert a.shape == (39,) and np.array_equal(a, b)
    goals = {tuple(env.reset(seed=s)[0][36:39].round(6)) for s in range(12)}
    assert len(goals) > 3


def test_fresh_goals_are_not_the_presampled_ones():
    pool = {tuple(make_env("reach", 0).reset(seed=s)[0][36:39].round(6)) for s in range(12)}
    fresh = make_env("reach", 0, goals="fresh")
    g1, g2 = fresh.reset(seed=1)[0][36:39], fresh.reset(seed=1)[0][36:39]
    assert np.array_equal(g1, g2) and tuple(g1.round(6)) not in pool


def test_chunk_stops_at_truncation_and_sums_rewards():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.5, 1.5, (3, 8, 4))
    chunked, plain = ChunkEnv(make_env("reach", 0, max_episode_steps=20)), make_env("reach", 0, 20)
    hist = chunked.reset(seed=3)
    first, _ = plain.reset(seed=3)
    assert hist.shape == (2, 39) and hist.dtype == np.float32
    assert np.array_equal(hist[0], hist[1]) and np.array_equal(hist[1], first.astype(np.float32))
    steps, done = [], []
    for chunk in actions:
        r = chunked.step_chunk(chunk)
        rewards, obs = [], []
        for a in np.clip(chunk[:r.steps], -1, 1):
            o, rew, *_ = plain.step(a)
            rewards.append(rew)
            obs.append(o)
        assert r.reward == pytest.approx(sum(rewards), rel=1e-12)
        assert np.array_equal(r.obs, np.asarray(obs[-2:], np.float32))
        steps.append(r.steps)
        done.append(r.done)
    assert steps == [8, 8, 4] and done == [False, False, True]
    with pytest.raises(RuntimeError):
        chunked.step_chunk(actions[0])


class FlickerEnv(gym.Env):
    """Success is reported only at step 3: ever-success must stay true afterwards."""

    observation_space = gym.spaces.Box(-1, 1, (3,))
    action_space = gym.spaces.Box(-1, 1, (2,))
    max_episode_steps = 10

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(3), {}

    def step(self, action):
        self.t += 1
        return np.full(3, action[0]), 1.0, False, self.t == 10, {"success": float(self.t == 3)}


def test_success_is_sticky_and_actions_are_clipped():
    env = ChunkEnv(FlickerEnv(), n_obs_steps=3)
    env.reset()
    r1 = env.step_chunk(np.full((2, 2), 0.5))
    r2 = env.step_chunk(np.full((4, 2), 7.0))
    assert not r1.success and r2.success and r2.obs.shape == (3, 3)
    assert np.all(r2.obs == 1.0)
    assert env.step_chunk(np.zeros((2, 2))).success
