"""Env-steps/s of ChunkVecEnv (random actions, Ta-step chunks) against one plain env stepped in a loop.

    OMP_NUM_THREADS=1 python benchmarks/bench_rollout.py --task reach --envs 8 --chunks 120
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from sodp_fast.envs.metaworld import make_env
from sodp_fast.envs.workers import ChunkVecEnv


def plain_steps_per_s(task: str, steps: int) -> float:
    env = make_env(task, seed=0)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    t0, t = time.perf_counter(), 0
    for _ in range(steps):
        _, _, _, truncated, _ = env.step(rng.uniform(-1, 1, 4))
        t += 1
        if truncated:
            env.reset()
    return t / (time.perf_counter() - t0)


def vec_steps_per_s(task: str, envs: int, workers: int, chunks: int, ta: int) -> float:
    rng = np.random.default_rng(0)
    with ChunkVecEnv(task, envs, seed=0, num_workers=workers, n_action_steps=ta) as v:
        v.reset()
        v.step_chunk(rng.uniform(-1, 1, (envs, ta, 4)))  # warm up
        t0, steps = time.perf_counter(), 0
        for _ in range(chunks):
            s = v.step_chunk(rng.uniform(-1, 1, (envs, ta, 4)))
            steps += int(s.steps.sum())
            if s.done.all():
                v.reset()  # resets are part of a rollout's cost
        return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="reach")
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--chunks", type=int, default=120)
    p.add_argument("--ta", type=int, default=8)
    args = p.parse_args()
    base = plain_steps_per_s(args.task, args.chunks * args.ta * 2)
    rows = [("plain env, 1 process", base)]
    for w in sorted({0, 1, 2, args.envs}):
        rows.append((f"ChunkVecEnv {args.envs} envs, {w} workers", vec_steps_per_s(args.task, args.envs, w,
                                                                                   args.chunks, args.ta)))
    print(f"{args.task}, Ta={args.ta}, random actions")
    print(f"{'setup':<36}{'steps/s':>10}{'ratio':>8}")
    for name, v in rows:
        print(f"{name:<36}{v:>10.0f}{v / base:>8.2f}")


if __name__ == "__main__":
    main()
