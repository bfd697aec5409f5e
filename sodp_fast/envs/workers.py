"""N copies of one task stepped chunk by chunk in worker processes, for one batched planner call per chunk.

Not Gymnasium's AsyncVectorEnv: its pickled message per env step costs, on 2 cores, about as much as a 0.3 ms
Meta-World step.  Here a worker runs a whole chunk (Ta steps) per command, through shared memory.

A worker that dies is restarted and replays its envs' episodes exactly (MuJoCo is deterministic): an episode's
reset seed is a function of (seed, env index, episode), and the shared action buffer holds the episode's actions so
far.  The interrupted chunk is then re-run: the caller sees the same results, plus a ``RuntimeWarning``.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import traceback
import warnings
from typing import Callable

import numpy as np

from sodp_fast.envs.metaworld import ACTION_DIM, MAX_EPISODE_STEPS, OBS_DIM, ChunkEnv, ChunkResult, make_env
from sodp_fast.errors import CheckpointError, ConfigError, SodpError, check_fits

MAX_RESTARTS_PER_CALL = 3


class WorkerError(SodpError):
    """A rollout worker failed in a way that restarting does not fix."""


class EnvConfigError(ConfigError, ValueError):
    """Vector-env sizes that cannot work (no envs, negative worker counts, empty episodes)."""


class ActionError(SodpError, ValueError):
    """Actions of the wrong shape or with NaN/inf."""


ChunkStep = ChunkResult  # results of one chunk for all N envs: each field an array with a leading [N] axis


class _Buffers:
    """Per-env results, and the actions of the episode so far (``act``); shared memory."""

    def __init__(self, n: int, to: int, obs_dim: int, act_dim: int, cap: int, raw: dict | None = None):
        self.spec = (n, to, obs_dim, act_dim, cap)
        layout = self.layout(*self.spec)
        self.raw = raw if raw is not None else {k: mp.RawArray("b", size) for k, (_, _, size) in layout.items()}
        for k, (shape, dtype, _) in layout.items():
            setattr(self, k, np.frombuffer(self.raw[k], dtype=dtype).reshape(shape))

    @staticmethod
    def layout(n: int, to: int, obs_dim: int, act_dim: int, cap: int) -> dict[str, tuple]:
        """name -> (shape, dtype, bytes) of each buffer."""
        return {k: (s, d, int(np.prod(s, dtype=object)) * np.dtype(d).itemsize) for k, (s, d) in {
            "obs": ((n, to, obs_dim), np.float32), "act": ((n, cap, act_dim), np.float32), "reward": ((n,), np.float64),
            "done": ((n,), np.bool_), "success": ((n,), np.bool_), "steps": ((n,), np.int64)}.items()}


class _EnvGroup:
    """The envs ``ids`` of one worker; executes commands and writes results into the buffers."""

    def __init__(self, factory: Callable, ids: list[int], seed: int, n_obs_steps: int, bufs: _Buffers):
        self.ids, self.bufs = ids, bufs
        self.envs = [ChunkEnv(factory(seed=seed * 1000 + i), n_obs_steps) for i in ids]

    def reset(self, seeds: list[int]) -> None:
        """``seeds`` holds one episode seed per env of the whole vector env."""
        for i, env in zip(self.ids, self.envs):
            self.bufs.obs[i] = env.reset(seed=seeds[i])
            self.bufs.success[i], self.bufs.done[i], self.bufs.steps[i], self.bufs.reward[i] = False, False, 0, 0

    def step(self, t: int, n: int) -> None:
        b = self.bufs
        for i, env in zip(self.ids, self.envs):
            r = env.step_chunk(b.act[i, t:t + n])
            b.obs[i], b.reward[i], b.done[i], b.success[i], b.steps[i] = r.obs, r.reward, r.done, r.success, r.steps

    def replay(self, seeds: list[int], t: int) -> None:
        """Re-run each env's episode so far from its reset seed and its first ``t`` (executed) actions."""
        for i, env in zip(self.ids, self.envs):
            env.reset(seed=seeds[i])
            if t:
                env.step_chunk(self.bufs.act[i, :t])

    def close(self) -> None:
        for env in self.envs:
            env.env.close()


def _worker_main(conn, factory, ids, seed, n_obs_steps, raw, spec):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        group = _EnvGroup(factory, ids, seed, n_obs_steps, _Buffers(*spec, raw=raw))
        conn.send(("ok", None))
        while True:
            cmd, *args = conn.recv()
            getattr(group, cmd)(*args)
            conn.send(("ok", None))
            if cmd == "close":
                return
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))


def _split(n: int, k: int) -> list[list[int]]:
    return [a.tolist() for a in np.array_split(np.arange(n), k)]


def _shares(total: int, parts: int) -> list[int]:
    """The sizes of ``_split(total, parts)``, without building it (``total`` may be absurd: checked later)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


class ChunkVecEnv(contextlib.AbstractContextManager):
    """N copies of one task stepped in lock-step, chunk by chunk (Meta-World episodes all truncate together).

    ``num_workers``: None -> min(num_envs, os.cpu_count()); 0 -> in-process.  ``env_factory(seed=...)`` replaces
    Meta-World (an env with ``max_episode_steps``, 1-D Box spaces and ``info["success"]``, picklable for worker
    processes).  Env i is built with seed ``seed * 1000 + i``; all draw goals from the benchmark's pool for ``seed``.
    """

    def __init__(self, task: str, num_envs: int, seed: int = 0, n_obs_steps: int = 2, n_action_steps: int = 8,
                 num_workers: int | None = None, max_episode_steps: int = MAX_EPISODE_STEPS, goals: str = "presampled",
                 env_factory: Callable | None = None, start_method: str = "forkserver"):
        self._closed = True  # until the workers are up: close() and __del__ have nothing to do
        for name, value, low in (("num_envs", num_envs, 1), ("max_episode_steps", max_episode_steps, 1),
                                 ("n_obs_steps", n_obs_steps, 1), ("num_workers", num_workers, 0)):
            if value is not None and value < low:
                raise EnvConfigError(f"{name} must be >= {low}, got {value}")
        self.task, self.num_envs, self.seed = task, num_envs, seed
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        if env_factory is None:
            env_factory = functools.partial(make_env, task, max_episode_steps=max_episode_steps, goals=goals,
                                            goal_seed=seed)
            self.obs_dim, self.action_dim, self.max_episode_steps = OBS_DIM, ACTION_DIM, max_episode_steps
        else:
            probe = env_factory(seed=seed * 1000)
            self.obs_dim, self.action_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
            self.max_episode_steps = probe.max_episode_steps
            probe.close()
        spec = (num_envs, n_obs_steps, self.obs_dim, self.action_dim, self.max_episode_steps)
        check_fits(sum(b for *_, b in _Buffers.layout(*spec).values()), f"the shared buffers of {num_envs:,} envs")
        self._factory, self._bufs = env_factory, _Buffers(*spec)
        self.num_workers = min(num_envs, (os.cpu_count() or 1) if num_workers is None else num_workers)
        self.restarts, self._episode, self._t = 0, -1, None
        if self.num_workers == 0:
            self._group = _EnvGroup(env_factory, list(range(num_envs)), seed, n_obs_steps, self._bufs)
            self._closed = False
            return
        self._ctx = mp.get_context(start_method)
        self._slices = _split(num_envs, self.num_workers)
        self._procs, self._conns = [None] * self.num_workers, [None] * self.num_workers
        self._closed = False
        try:
            for w in range(self.num_workers):
                self._start(w)
            self._wait(list(range(self.num_workers)))
        except BaseException:
            self.close()
            raise

    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=_worker_main, daemon=True, name=f"sodp-env-{w}",
                              args=(child, self._factory, self._slices[w], self.seed, self.n_obs_steps,
                                    self._bufs.raw, self._bufs.spec))
        p.start()
        child.close()
        self._procs[w], self._conns[w] = p, parent

    def worker_pids(self) -> list[int]:
        return [] if self.num_workers == 0 else [p.pid for p in self._procs]

    def _wait(self, workers: list[int]) -> list[int]:
        """Wait for each worker's reply (or exit); return the workers that died instead of answering."""
        dead = []
        for w in workers:
            conn = self._conns[w]
            try:
                mp.connection.wait([conn, self._procs[w].sentinel])
                if not conn.poll():  # exited without a reply
                    raise EOFError
                status, payload = conn.recv()
            except (EOFError, OSError):
                dead.append(w)
                continue
            if status == "error":
                raise WorkerError(f"env worker {w} failed on task {self.task}: {payload.strip().splitlines()[-1]}")
        return dead

    def _call(self, cmd: tuple) -> None:
        """Send ``cmd`` to every worker; restart and replay dead ones, then re-send it to them."""
        if self.num_workers == 0:
            getattr(self._group, cmd[0])(*cmd[1:])
            return
        todo = list(range(self.num_workers))
        for _ in range(MAX_RESTARTS_PER_CALL + 1):
            for w in todo:
                with contextlib.suppress(OSError):  # a dead worker's pipe: _wait finds it dead
                    self._conns[w].send(cmd)
            dead = self._wait(todo)
            if not dead:
                return
            for w in dead:
                self._restart(w)
            todo = dead
        raise WorkerError(f"env workers {todo} for task {self.task} keep dying; giving up")

    def _restart(self, w: int) -> None:
        old = self._procs[w]
        old.join(timeout=1.0)
        self._conns[w].close()
        self._start(w)
        dead = self._wait([w])
        if not dead and self._episode >= 0:
            self._conns[w].send(("replay", self._episode_seeds(), self._t))
            dead = self._wait([w])
        if dead:
            raise WorkerError(f"env worker {w} for task {self.task} died again while restarting")
        self.restarts += 1
        ids = self._slices[w]
        warnings.warn(f"env worker {w} (pid {old.pid}, exit code {old.exitcode}) died; restarted it and replayed "
                      f"envs {ids[0]}..{ids[-1]} ({self._t or 0} steps each)", RuntimeWarning, stacklevel=4)

    def reset(self) -> np.ndarray:
        self._check_open()
        self._episode += 1
        self._t = 0
        self._call(("reset", self._episode_seeds()))
        return self._bufs.obs.copy()

    def seek(self, episode: int) -> None:
        """Make the next ``reset`` start episode ``episode`` (0-based): a resumed run or a repeated evaluation
        sees the same goals and initial states as the original."""
        if episode < 0:
            raise ValueError(f"episode must be >= 0, got {episode}")
        self._episode = episode - 1

    def _episode_seeds(self) -> list[int]:
        return [int(np.random.SeedSequence([self.seed, i, self._episode]).generate_state(1)[0])
                for i in range(self.num_envs)]

    def step_chunk(self, actions: np.ndarray) -> ChunkStep:
        self._check_open()
        if self._t is None:
            raise RuntimeError("call reset() before step_chunk()")
        if self._t >= self.max_episode_steps:
            raise RuntimeError("episodes are truncated: call reset() first")
        actions = np.asarray(actions)
        if actions.ndim != 3 or actions.shape[0] != self.num_envs or actions.shape[2] != self.action_dim \
                or actions.shape[1] < 1:
            raise ActionError(f"actions must have shape [{self.num_envs}, Ta>=1, {self.action_dim}], "
                              f"got {list(actions.shape)}")
        if not np.isfinite(actions).all():
            raise ActionError("actions contain NaN or inf")
        n = min(actions.shape[1], self.max_episode_steps - self._t)
        self._bufs.act[:, self._t:self._t + n] = np.clip(actions[:, :n], -1.0, 1.0).astype(np.float32)
        self._call(("step", self._t, n))
        self._t += n
        return ChunkStep(*(getattr(self._bufs, k).copy() for k in ("obs", "reward", "done", "success", "steps")))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("ChunkVecEnv is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.num_workers == 0:
            self._group.close()
            return
        live = [(p, c) for p, c in zip(self._procs, self._conns) if p is not None]
        for _, c in live:
            with contextlib.suppress(OSError):  # a dead worker's pipe
                c.send(("close",))
        for p, c in live:
            p.join(timeout=2.0)
            if p.is_alive():
                p.terminate()
                p.join()
            c.close()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            self.close()


EnvFactory = Callable[[int, int, "int | None"], object]  # (num_envs, seed, num_workers) -> vector env


def metaworld_env_factory(task: str, n_obs_steps: int, n_action_steps: int, max_episode_steps: int,
                          goal_seed: int) -> EnvFactory:
    """ChunkVecEnv builder; every env draws goals from the same pre-sampled pool (``goal_seed``)."""
    single = functools.partial(make_env, task, max_episode_steps=max_episode_steps, goal_seed=goal_seed)

    def make(num_envs: int, seed: int, num_workers: int | None = None):
        return ChunkVecEnv(task, num_envs, seed=seed, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
                           num_workers=num_workers, max_episode_steps=max_episode_steps, env_factory=single)

    return make


def build_env_groups(make: EnvFactory, num_envs: int, groups: int, seed: int, num_workers: int | None) -> list:
    """``groups`` vector envs of ``num_envs`` in all, with distinct seeds; the worker processes (default: one
    per core) are shared out between them (0: every group in-process)."""
    workers = num_workers if num_workers is not None else os.cpu_count() or 1
    envs = []
    try:
        for g, (n, w) in enumerate(zip(_shares(num_envs, groups), _shares(workers, groups))):
            envs.append(make(n, seed * groups + g, min(max(1, w), n) if workers else 0))
    except BaseException:
        for e in envs:
            e.close()
        raise
    return envs


def check_dims(where, config, obs_dim: int, action_dim: int) -> None:
    """A planner config's obs/action dims against the task env's (or dataset's)."""
    for name, have in (("obs_dim", obs_dim), ("action_dim", action_dim)):
        if getattr(config, name) != have:
            raise CheckpointError(f"{where}: checkpoint has {name}={getattr(config, name)}, but the task env has "
                                  f"{name}={have}")
