"""Sub-optimal multi-task Meta-World data from noisy scripted experts.

The paper pre-trains on the first half of an SAC agent's replay buffer: early episodes near-random, late ones
near-expert.  We imitate that shape with Meta-World's scripted experts: at episode progress p in [0, 1] (first to
last episode of the task), each step takes a uniform random action with probability ``rand_prob(p)``, otherwise
the expert's action plus Gaussian noise of std ``sigma(p)``, clipped to [-1, 1]; both anneal along p**power.

Calibration: one schedule per difficulty class of Seo et al. (the paper's split); easy tasks are solved even by a
mostly random policy, so theirs stays noisier (``sodp data inspect`` reports success by episode quintile). Every
episode is a pure function of (seed, task, episode number), so output is bit-identical for any number of workers;
a rerun skips complete tasks.
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sodp_fast.data.format import DataFormatError, TaskData, task_record, write_manifest, write_task
from sodp_fast.envs.metaworld import ACTION_DIM, MAX_EPISODE_STEPS, OBS_DIM, make_env
from sodp_fast.errors import at_least, check_fits
from sodp_fast.envs.tasks import DIFFICULTY, MT50, resolve_tasks


@dataclass(frozen=True)
class NoiseSchedule:
    """Random-action probability and Gaussian std, annealed over a task's episodes."""

    rand_start: float
    rand_end: float
    sigma_start: float
    sigma_end: float
    power: float = 1.0

    def at(self, progress: float) -> tuple[float, float]:
        q = progress ** self.power
        return (self.rand_start + (self.rand_end - self.rand_start) * q,
                self.sigma_start + (self.sigma_end - self.sigma_start) * q)


SCHEDULES: dict[str, NoiseSchedule] = {
    "easy": NoiseSchedule(0.8, 0.2, 1.0, 0.3),
    "medium": NoiseSchedule(0.7, 0.0, 1.0, 0.2),
    "hard": NoiseSchedule(0.6, 0.0, 1.0, 0.1),
    "very-hard": NoiseSchedule(0.6, 0.0, 1.0, 0.1),
}
# Calibrated on the pre-trained planner, not the data: the paper's pre-trained SODP solves 32 % of MT50 (its
# Table 12). With schedules that started fully random and annealed along p**1.5-3 (≈ 50-77 % random actions
# overall), a tiny U-Net pre-trained on the ten paper-MT10 tasks (50 k transitions each) solved 14 % (and a 5x
# larger one 13 %): near the start states the data was mostly random, so the planner was too. These give data
# success 39-100 % and that planner 31 % (profiles/2026-12-02-cpu-2core-cpu-mt10-calibration/).
TASK_SCHEDULES: dict[str, NoiseSchedule] = {}  # per-task overrides where a class schedule does not fit


def schedule_for(task: str) -> NoiseSchedule:
    return TASK_SCHEDULES.get(task, SCHEDULES[DIFFICULTY[task]])


@dataclass(frozen=True)
class GenerateSettings:
    """Everything the data of one task depends on (stored in its record; a rerun must match it)."""

    transitions_per_task: int
    seed: int = 0
    max_episode_steps: int = MAX_EPISODE_STEPS
    goals: str = "presampled"

    def for_task(self, task: str) -> dict:
        return {**asdict(self), "schedule": asdict(schedule_for(task)), "expert": "metaworld.policies"}


def generate_task(task: str, settings: GenerateSettings, progress=None) -> TaskData:
    """Roll out ceil(transitions / max_episode_steps) whole episodes of the noisy expert on ``task``."""
    from metaworld.policies import ENV_POLICY_MAP

    steps = settings.max_episode_steps
    n_episodes = max(1, math.ceil(settings.transitions_per_task / steps))
    env_ss, noise_ss, episode_ss = np.random.SeedSequence([settings.seed, MT50.index(task)]).spawn(3)
    env = make_env(task, int(env_ss.generate_state(1)[0]), steps, settings.goals, goal_seed=settings.seed)
    expert = ENV_POLICY_MAP[task]()
    rng = np.random.default_rng(noise_ss)
    schedule = schedule_for(task)
    adim, total = env.action_space.shape[0], n_episodes * steps
    obs_buf = np.empty((total, env.observation_space.shape[0]), np.float32)
    act_buf, rew_buf = np.empty((total, adim), np.float32), np.empty(total, np.float32)
    success = np.zeros(n_episodes, bool)
    episode_seeds = episode_ss.generate_state(n_episodes, np.uint32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        for e in range(n_episodes):
            rand_prob, sigma = schedule.at(e / max(1, n_episodes - 1))
            obs, _ = env.reset(seed=int(episode_seeds[e]))
            for t in range(e * steps, (e + 1) * steps):
                if rng.random() < rand_prob:
                    action = rng.uniform(-1.0, 1.0, adim)
                else:
                    action = expert.get_action(obs) + sigma * rng.standard_normal(adim)
                action = np.clip(action, -1.0, 1.0).astype(np.float32)
                obs_buf[t], act_buf[t] = obs, action
                obs, reward, _, truncated, info = env.step(action)
                rew_buf[t] = reward
                success[e] |= bool(info["success"])
                if truncated:
                    break
            if progress is not None:
                progress.put(steps)
    env.close()
    ends = np.arange(1, n_episodes + 1, dtype=np.int64) * steps
    return TaskData(task, obs_buf, act_buf, rew_buf, ends, success)


_progress_queue = None


def _init_worker(queue, main_pid: int) -> None:
    """Also makes the worker die with the main process: a killed ``sodp data generate`` (even by SIGKILL) must
    not leave workers running and writing; the temporaries they leave are removed when the folder is reopened.
    (The forkserver cannot do this: every worker it forks keeps it alive.)"""
    global _progress_queue
    _progress_queue = queue
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True).start()


def _exit_with(pid: int) -> None:
    stat = Path(f"/proc/{pid}/stat")
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
            if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":  # dead, not yet reaped
                raise ProcessLookupError
        except (ProcessLookupError, IndexError):
            os._exit(1)
        except OSError:  # /proc vanished between the calls: look again
            pass


def _generate_and_write(task: str, settings: GenerateSettings, out: str) -> dict:
    return write_task(Path(out), generate_task(task, settings, _progress_queue), settings.for_task(task))


def pending_tasks(out: Path, tasks: list[str], settings: GenerateSettings) -> list[str]:
    """Tasks still to generate; a complete task generated with other settings is an error, not overwritten."""
    todo = []
    for task in tasks:
        rec = task_record(out, task)
        if rec is None:
            todo.append(task)
        elif rec.get("settings") != settings.for_task(task):
            raise DataFormatError(f"{out / task}: exists with different generator settings; use another --out")
    return todo


def generate(tasks: str | list[str], out, transitions_per_task: int, seed: int = 0, workers: int = 1,
             max_episode_steps: int = MAX_EPISODE_STEPS, goals: str = "presampled", progress: bool = True) -> dict:
    """Generate (or finish) a dataset at ``out``, one process per task at a time (``workers=0``: this process);
    the manifest is rewritten after every task and returned.  ``out`` is a locked run folder (``RunFolder``)."""
    from sodp_fast.train.run import Progress, RunFolder

    names = resolve_tasks(tasks)
    for name, value, low in (("transitions_per_task", transitions_per_task, 1), ("workers", workers, 0),
                             ("max_episode_steps", max_episode_steps, 1)):
        at_least(value, low, name)
    per_task = math.ceil(transitions_per_task / max_episode_steps) * max_episode_steps
    parallel = min(max(workers, 1), len(names))
    check_fits(per_task * 4 * (OBS_DIM + ACTION_DIM + 1) * parallel, f"{parallel} task(s) of {per_task:,} transitions")
    settings = GenerateSettings(transitions_per_task, seed, max_episode_steps, goals)
    run_settings = {"generator": "scripted-expert-annealed-noise", **asdict(settings), "tasks": names}
    with RunFolder(out) as folder:
        out = folder.path
        todo = pending_tasks(out, names, settings)
        bar = Progress(per_task * len(todo), "generate", "step", enabled=progress and bool(todo))
        if workers == 0:
            for task in todo:
                write_task(out, generate_task(task, settings), settings.for_task(task))
                bar.update(per_task)
                write_manifest(out, run_settings)
        else:
            ctx = mp.get_context("forkserver")
            queue = ctx.Queue()
            with cf.ProcessPoolExecutor(min(workers, max(1, len(todo))), mp_context=ctx, initializer=_init_worker,
                                        initargs=(queue, os.getpid())) as pool:
                remaining = {pool.submit(_generate_and_write, t, settings, str(out)) for t in todo}
                while remaining:
                    done, remaining = cf.wait(remaining, timeout=0.2)
                    while not queue.empty():
                        bar.update(queue.get())
                    for f in done:
                        f.result()
                        write_manifest(out, run_settings)
        bar.close()
        return write_manifest(out, run_settings)
