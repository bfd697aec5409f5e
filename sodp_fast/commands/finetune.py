"""``sodp finetune``: task-guided RL fine-tuning (paper defaults; every one overridable).

One task: ``--task T --out RUN``. Many tasks: ``--tasks paper-mt10 --out RUN`` runs each task as its own
``sodp finetune --task`` process in ``RUN/<task>/`` (``--parallel`` at a time, each pinned to one GPU in
turn when there are GPUs) and ends with ``RUN/summary.md`` and ``RUN/summary.json``. Separate processes, not
a pool: each task starts its own env worker processes, which daemonic pool workers may not do.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sodp_fast.train.finetune import FinetuneConfig
from sodp_fast.train.losses import REWARD_NORMS

_D = FinetuneConfig(out="", task="")
_FLAGS = [  # (field, type, help)
    ("env_steps", int, "env steps of fine-tuning (init rollouts included)"),
    ("num_envs", int, "parallel envs per rollout iteration"),
    ("env_groups", int, "env groups pipelined so stepping overlaps sampling (1 = no overlap)"),
    ("num_workers", int, "env worker processes in all (default: one per CPU core)"),
    ("max_episode_steps", int, "episode length"),
    ("n_init", int, "N_init: initial rollouts that fill B and B_target"),
    ("grad_steps", int, "p_step: gradient steps per rollout iteration"),
    ("batch_size", int, "transitions (chain x step) per gradient step; also the BC batch"),
    ("lr", float, "Adam learning rate"),
    ("lr_decay", float, "exponential lr decay per iteration"),
    ("clip_eps", float, "PPO clip epsilon"),
    ("grad_clip", float, "max gradient norm"),
    ("reg_weight", float, "lambda: regulariser weight"),
    ("replay_iterations", int, "B keeps the chunks of this many recent iterations"),
    ("target_size", int, "n: proficient trajectories kept in B_target"),
    ("eval_every", int, "env steps between evaluations"),
    ("eval_episodes", int, "episodes per evaluation"),
    ("eval_num_envs", int, "parallel envs for evaluation"),
    ("ckpt_every", int, "env steps between checkpoints"),
    ("seed", int, "seed"),
]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a pre-trained planner on task rewards (SODP)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default=None, help="pre-trained planner (.safetensors)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="one Meta-World task")
    which.add_argument("--tasks", help="several tasks (comma list or set name): one process and sub-folder each")
    p.add_argument("--out", required=True, help="run folder")
    for name, typ, help_ in _FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=getattr(_D, name), help=help_)
    p.add_argument("--reg", default=_D.reg, choices=["bc", "kl", "pl", "none"],
                   help="regulariser: bc (SODP), kl (DPOK-like), pl (DLPO-like), none")
    p.add_argument("--reward-norm", default=_D.reward_norm, choices=list(REWARD_NORMS),
                   help="chunk-reward baseline/normalisation in Eq. 12: step = per chunk index over the envs "
                        "(see sodp_fast/train/losses.py)")
    p.add_argument("--signal", default=_D.signal, choices=["return", "chunk"],
                   help="what weighs a chain in Eq. 12: return = the return-to-go from its chunk (this and every "
                        "later chunk reward of the episode), chunk = the chunk's own reward (the paper's r(a^0))")
    p.add_argument("--log-ratio", default=_D.log_ratio, choices=["mean", "sum"],
                   help="PPO ratio from the mean (DPPO) or the sum (exact chain likelihood) of the per-dimension "
                        "log-ratios of a denoising step")
    p.add_argument("--from-scratch", action="store_true", help="SODP_scratch: fresh weights after the init rollouts")
    p.add_argument("--offline-data", default=None, help="SODP_off: fine-tune on this dataset's episodes of the task")
    p.add_argument("--device", default=_D.device, help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="sample rollouts with CUDA-graph replays of the whole DDIM chain (GPU only)")
    p.add_argument("--parallel", type=int, default=None, help="with --tasks: tasks at a time (default: GPUs or 1)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, task: str, out: str) -> FinetuneConfig:
    kw = {name: getattr(args, name) for name, _, _ in _FLAGS}
    return FinetuneConfig(out=out, task=task, ckpt=args.ckpt, reg=args.reg, reward_norm=args.reward_norm,
                          signal=args.signal, log_ratio=args.log_ratio, from_scratch=args.from_scratch, offline_data=args.offline_data,
                          device=args.device, cuda_graphs=args.cuda_graphs, progress=not args.no_progress, **kw)


def run(args: argparse.Namespace) -> int:
    from sodp_fast.envs.tasks import resolve_tasks
    from sodp_fast.train.finetune import finetune

    if args.task is not None:
        cfg = config_from_args(args, resolve_tasks(args.task)[0], args.out)
        summary = finetune(cfg, resume=args.resume)
        print(json.dumps(summary))
        return 0
    return run_many(args, resolve_tasks(args.tasks))


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The options of this command line, for one ``--task`` child (``--task``/``--out`` added by the caller)."""
    argv = []
    for name in [f for f, _, _ in _FLAGS] + ["ckpt", "reg", "reward_norm", "signal", "log_ratio", "offline_data", "device"]:
        if getattr(args, name) is not None:
            argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    for name in ("from_scratch", "cuda_graphs", "no_progress", "resume"):
        if getattr(args, name):
            argv.append("--" + name.replace("_", "-"))
    return argv


def run_many(args: argparse.Namespace, tasks: list[str]) -> int:
    import torch

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    parallel = args.parallel or max(gpus, 1)
    argv = _child_argv(args)
    queue, running, codes = list(tasks), {}, {}
    slot = 0
    while queue or running:
        while queue and len(running) < parallel:
            task = queue.pop(0)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            slot += 1
            log = open(root / f"{task}.log", "w")
            cmd = [sys.executable, "-m", "sodp_fast.cli", "finetune", *argv, "--task", task,
                   "--out", str(root / task)]
            running[task] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        time.sleep(0.5)
        for task, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                codes[task] = proc.returncode
                del running[task]
                print(f"{task}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}", flush=True)
    table = summarize(root, tasks, codes)
    print(table)
    return 0 if all(c == 0 for c in codes.values()) else 1


def summarize(root: Path, tasks: list[str], codes: dict[str, int]) -> str:
    """Write ``summary.json`` and ``summary.md`` (final eval success and return per task, and the mean)."""
    rows = {}
    for task in tasks:
        path = root / task / "summary.json"
        rows[task] = json.loads(path.read_text()) if path.exists() else {"failed": True, "exit_code": codes.get(task)}
    done = [r for r in rows.values() if "final_eval_success_rate" in r]
    mean = {k: sum(r[k] for r in done) / len(done) for k in ("final_eval_success_rate", "final_eval_return_mean")} \
        if done else {}
    (root / "summary.json").write_text(json.dumps({"tasks": rows, "mean": mean}, indent=2))
    lines = ["| Task | Success rate | Return | Env steps |", "|---|---|---|---|"]
    for task, r in rows.items():
        if "final_eval_success_rate" in r:
            lines.append(f"| {task} | {r['final_eval_success_rate']:.2f} | {r['final_eval_return_mean']:.1f} | "
                         f"{r['env_steps']} |")
        else:
            lines.append(f"| {task} | failed (exit {r.get('exit_code')}) | | |")
    if mean:
        lines.append(f"| **Mean** | {mean['final_eval_success_rate']:.2f} | {mean['final_eval_return_mean']:.1f} | |")
    table = "\n".join(lines) + "\n"
    (root / "summary.md").write_text(table)
    return table
