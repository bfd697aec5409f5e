"""Fine-tuning throughput as a share of the raw env throughput on the same workers, measured in one run.

    python benchmarks/bench_finetune.py --task reach --presets tiny,small --num-envs 8,32,64 --workers 2

Raw: random actions through ``ChunkVecEnv`` (no planner), per env count. Fine-tuning: ``sodp_fast.train.finetune``
with a freshly initialised planner of each preset (speed does not depend on the weights); the rate is env steps
per second of the loop after the init rollouts (rollout + update, evaluation excluded), with the share of time
in env waiting / sampling / update from the run's timers. Each row also varies the main process's torch threads
and the env-group pipelining (``--env-groups``), the two knobs for rollout/learner overlap on a CPU.
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


def finetune_rate(args, unet: str, num_envs: int, groups: int) -> dict:
    from sodp_fast.checkpoint import save_planner
    from sodp_fast.logging import read_metrics
    from sodp_fast.nn.unet import preset
    from sodp_fast.policy import DiffusionPlanner, PlannerConfig
    from sodp_fast.train.finetune import FinetuneConfig, finetune

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_planner(Path(tmp) / "pre.safetensors", DiffusionPlanner(PlannerConfig(unet=preset(unet))))
        per_iter = num_envs * args.episode_steps
        cfg = FinetuneConfig(out=str(Path(tmp) / "run"), task=args.task, ckpt=str(Path(tmp) / "pre.safetensors"),
                             env_steps=per_iter * (1 + args.iterations), num_envs=num_envs, env_groups=groups,
                             num_workers=args.workers, max_episode_steps=args.episode_steps, n_init=num_envs,
                             grad_steps=args.grad_steps, batch_size=args.batch_size, eval_every=10**9,
                             eval_episodes=1, eval_num_envs=1, ckpt_every=10**9, device=args.device, progress=False)
        finetune(cfg)
        rows = [r for r in read_metrics(Path(tmp) / "run") if "env_steps_per_s" in r]
        rate = sum(r["env_steps_per_s"] for r in rows) / len(rows)
        return {"env_steps_per_s": round(rate, 1),
                **{k: round(sum(r[k] for r in rows) / len(rows), 3) for k in rows[0] if k.startswith("time_")}}


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="reach")
    p.add_argument("--presets", default="tiny,small", help="U-Net presets, comma-separated")
    p.add_argument("--num-envs", default="8,32,64", help="env counts, comma-separated")
    p.add_argument("--workers", type=int, default=2, help="env worker processes")
    p.add_argument("--threads", default="2,1", help="torch threads of the main process, comma-separated")
    p.add_argument("--groups", default="1,2", help="env groups (--env-groups), comma-separated")
    p.add_argument("--episode-steps", type=int, default=200)
    p.add_argument("--iterations", type=int, default=1, help="measured iterations after the init rollouts")
    p.add_argument("--grad-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args()
    results = {"args": vars(args), "torch": torch.__version__, "raw": {}, "finetune": []}
    for n in ints(args.num_envs):
        raw = raw_env_rate(args.task, n, args.workers, args.episode_steps, 2)
        results["raw"][n] = round(raw, 1)
        print(f"raw env rate, {n} envs / {args.workers} workers: {raw:.0f} steps/s", flush=True)
        for unet in args.presets.split(","):
            for threads in ints(args.threads):
                for groups in ints(args.groups):
                    torch.set_num_threads(threads)
                    r = finetune_rate(args, unet, n, groups)
                    row = {"preset": unet, "num_envs": n, "threads": threads, "groups": groups, **r,
                           "share_of_raw": round(r["env_steps_per_s"] / raw, 3)}
                    results["finetune"].append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
