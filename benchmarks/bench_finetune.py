"""Fine-tuning throughput vs the raw env throughput on the same workers.

    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py --task reach --preset tiny --num-envs 8 --workers 2

Raw: random actions through ``ChunkVecEnv`` (no planner). Fine-tuning: ``sodp_fast.train.finetune`` with a
freshly initialised planner of ``--preset`` (speed does not depend on the weights); the rate is env steps per
second of the loop after the init rollouts (rollout + update, evaluation excluded), with the share of time
in env waiting / sampling / update from the run's timers.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def raw_env_rate(task: str, num_envs: int, workers: int, episode_steps: int, episodes: int) -> float:
    from sodp_fast.envs.workers import ChunkVecEnv

    rng = np.random.default_rng(0)
    with ChunkVecEnv(task, num_envs, num_workers=workers, max_episode_steps=episode_steps) as env:
        env.reset()
        steps, t0 = 0, None
        for ep in range(episodes + 1):
            if ep == 1:
                t0, steps = time.perf_counter(), 0  # episode 0 warms the workers up
            env.reset()
            done = False
            while not done:
                out = env.step_chunk(rng.uniform(-1, 1, (num_envs, 8, 4)).astype(np.float32))
                steps += int(out.steps.sum())
                done = bool(out.done.all())
        return steps / (time.perf_counter() - t0)


def finetune_rate(args, groups: int) -> dict:
    from sodp_fast.checkpoint import save_planner
    from sodp_fast.logging import read_metrics
    from sodp_fast.nn.unet import preset
    from sodp_fast.policy import DiffusionPlanner, PlannerConfig
    from sodp_fast.train.finetune import FinetuneConfig, finetune

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_planner(Path(tmp) / "pre.safetensors", DiffusionPlanner(PlannerConfig(unet=preset(args.preset))))
        per_iter = args.num_envs * args.episode_steps
        cfg = FinetuneConfig(out=str(Path(tmp) / "run"), task=args.task, ckpt=str(Path(tmp) / "pre.safetensors"),
                             env_steps=per_iter * (1 + args.iterations), num_envs=args.num_envs, env_groups=groups,
                             num_workers=args.workers, max_episode_steps=args.episode_steps, n_init=args.num_envs,
                             grad_steps=args.grad_steps, batch_size=args.batch_size, eval_every=10**9,
                             eval_episodes=1, eval_num_envs=1, ckpt_every=10**9, device=args.device, progress=False)
        finetune(cfg)
        last = [r for r in read_metrics(Path(tmp) / "run") if "env_steps_per_s" in r][-1]
        return {k: round(v, 3) for k, v in last.items() if k == "env_steps_per_s" or k.startswith("time_")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="reach")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--episode-steps", type=int, default=500)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--grad-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--groups", default="1,2")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    raw = raw_env_rate(args.task, args.num_envs, args.workers, args.episode_steps, 2)
    out = {"raw_env_steps_per_s": round(raw, 1)}
    for g in map(int, args.groups.split(",")):
        r = finetune_rate(args, g)
        out[f"groups={g}"] = {**r, "share_of_raw": round(r["env_steps_per_s"] / raw, 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
