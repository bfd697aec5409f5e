"""Policy evaluation on Meta-World: success rate (success at any step) and return per task, as in the paper's
Tables 1 and 13 (50 episodes per task, mean over seeds).

By default DDIM with η = 0 from a seeded x_K (goals and initial states come from ``ChunkVecEnv``'s episode
seeds), so a score is a function of (checkpoint, task, seed, episodes, num_envs).  ``deterministic=False``
evaluates, also seeded, the stochastic policy that fine-tuning optimises (the planner's η and std floor): the η = 0
sampler is another map from x_K to actions, so the two can disagree after fine-tuning.  Episodes run in rounds of
lock-step envs, evened out when ``episodes`` is not a multiple of ``num_envs``; the last round's surplus is dropped.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch

from sodp_fast.policy import DiffusionPlanner


def rounds_for(episodes: int, num_envs: int) -> tuple[int, int]:
    """(rounds, envs per round) for ``episodes`` on at most ``num_envs`` envs, with the least surplus."""
    if episodes < 1 or num_envs < 1:
        raise ValueError("episodes and num_envs must be >= 1")
    rounds = math.ceil(episodes / num_envs)
    return rounds, math.ceil(episodes / rounds)


@torch.no_grad()
def run_episodes(planner: DiffusionPlanner, venv, rounds: int, generator: torch.Generator,
                 deterministic: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(success [rounds·N] bool, return [rounds·N] float64, env steps) of whole episodes on ``venv``."""
    device = next(planner.parameters()).device
    successes, returns, steps = [], [], 0
    for _ in range(rounds):
        obs = venv.reset()
        ret, done = np.zeros(venv.num_envs), np.zeros(venv.num_envs, bool)
        success = done
        while not done.all():
            chain = planner.sample(torch.from_numpy(obs).to(device), deterministic=deterministic, generator=generator)
            out = venv.step_chunk(planner.executed_actions(chain.sample).float().cpu().numpy())
            obs, done, success = out.obs, out.done, out.success
            ret += out.reward
            steps += int(out.steps.sum())
        successes.append(success.copy())
        returns.append(ret)
    return np.concatenate(successes), np.concatenate(returns), steps


def evaluate(planner: DiffusionPlanner, task: str, episodes: int = 50, seed: int = 0, num_envs: int = 10,
             num_workers: int | None = None, max_episode_steps: int = 500, venv=None,
             deterministic: bool = True) -> dict:
    """A JSON-ready dict: ``success_rate``, ``return_mean``, ``return_std`` (over episodes), per-episode values.
    ``venv``: an open ``ChunkVecEnv`` of ``task`` to reuse (saves the worker start-up); its ``num_envs`` then
    replaces ``num_envs`` and it is left open."""
    from sodp_fast.envs.workers import ChunkVecEnv

    c = planner.config
    own = venv is None
    rounds, n = rounds_for(episodes, num_envs if own else venv.num_envs)
    if own:
        venv = ChunkVecEnv(task, n, seed=seed, n_obs_steps=c.n_obs_steps, n_action_steps=c.n_action_steps,
                           num_workers=num_workers, max_episode_steps=max_episode_steps)
    generator = torch.Generator(next(planner.parameters()).device).manual_seed(seed)
    was_training = planner.training
    planner.eval()
    t0 = time.perf_counter()
    try:
        success, ret, steps = run_episodes(planner, venv, rounds, generator, deterministic)
    finally:
        planner.train(was_training)
        if own:
            venv.close()
    success, ret = success[:episodes], ret[:episodes]
    return {"task": task, "seed": seed, "episodes": episodes, "success_rate": float(success.mean()),
            "return_mean": float(ret.mean()), "return_std": float(ret.std()), "successes": success.tolist(),
            "returns": ret.tolist(), "env_steps": steps, "seconds": round(time.perf_counter() - t0, 3)}


def evaluate_tasks(planner: DiffusionPlanner, tasks: list[str], episodes: int = 50, seeds: tuple[int, ...] = (0,),
                   num_envs: int = 10, num_workers: int | None = None, max_episode_steps: int = 500,
                   progress=None, deterministic: bool = True) -> dict:
    """Every (task, seed); per task: success mean ± std over seeds and return mean ± std over all episodes;
    the average row: means over tasks and seeds, ± the std over seeds of the task averages (0 for one seed)."""
    per_task = {}
    for task in tasks:
        runs = []
        for seed in seeds:
            runs.append(evaluate(planner, task, episodes, seed, num_envs, num_workers, max_episode_steps,
                                 deterministic=deterministic))
            if progress is not None:
                progress(runs[-1])
        rates = np.array([r["success_rate"] for r in runs])
        rets = np.concatenate([r["returns"] for r in runs])
        per_task[task] = {"success_mean": float(rates.mean()), "success_std": float(rates.std()),
                          "return_mean": float(rets.mean()), "return_std": float(rets.std()), "runs": runs}
    rate, ret = (np.array([np.mean([per_task[t]["runs"][i][key] for t in tasks]) for i in range(len(seeds))])
                 for key in ("success_rate", "return_mean"))  # [seeds] task-averaged values
    average = {"success_mean": float(rate.mean()), "success_std": float(rate.std()),
               "return_mean": float(ret.mean()), "return_std": float(ret.std())}
    return {"tasks": per_task, "average": average, "episodes": episodes, "seeds": list(seeds),
            "max_episode_steps": max_episode_steps,
            "sampling": "deterministic DDIM (eta=0), seeded x_K" if deterministic else
                        f"stochastic DDIM (eta={planner.config.eta}, std floor {planner.config.std_min}), seeded"}


def markdown_table(results: dict) -> str:
    """Rows = tasks plus an average row; columns = success rate and return (mean ± std), like Tables 1/13."""
    lines = ["| Task | Success rate | Return |", "|---|---|---|"]
    rows = list(results["tasks"].items()) + [("**Average**", results["average"])]
    for name, r in rows:
        lines.append(f"| {name} | {r['success_mean']:.2f} ± {r['success_std']:.2f} | "
                     f"{r['return_mean']:.1f} ± {r['return_std']:.1f} |")
    return "\n".join(lines) + "\n"


class CurveEvaluator:
    """Learning-curve evaluations on one vector env (``make_env``: an ``EnvFactory``), kept open to save the worker
    start-up and sought back to episode 0 each time, so every point of a curve sees the same goals and initial
    states; ``timers`` (optional) gets an ``eval`` phase."""

    def __init__(self, make_env, task: str, episodes: int, num_envs: int, seed: int, num_workers=None, timers=None):
        self.make_env, self.task, self.episodes, self.seed, self.timers = make_env, task, episodes, seed, timers
        self.num_envs, self.num_workers, self.venv = min(num_envs, episodes), num_workers, None

    def __call__(self, planner: DiffusionPlanner) -> dict[str, float]:
        with self.timers("eval") if self.timers is not None else contextlib.nullcontext():
            if self.venv is None:
                self.venv = self.make_env(self.num_envs, self.seed + 7919, self.num_workers)
            self.venv.seek(0)
            res = evaluate(planner, self.task, self.episodes, seed=self.seed, venv=self.venv)
        return {f"eval_{k}": res[k] for k in ("success_rate", "return_mean", "return_std")}

    def close(self) -> None:
        if self.venv is not None:
            self.venv.close()
            self.venv = None
