"""``sodp finetune``: task-guided RL fine-tuning (paper defaults; every one overridable).

One task: ``--task T --out RUN``. Many tasks: ``--tasks paper-mt10 --out RUN`` runs each task as its own
``sodp finetune --task`` process in ``RUN/<task>/`` (``--parallel`` at a time, each pinned to one GPU in
turn when there are GPUs; its output in ``RUN/<task>.log``) and ends with ``RUN/summary.md`` and
``RUN/summary.json``. Separate processes, not a pool: each task starts its own env worker processes, which
daemonic pool workers may not do.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from sodp_fast.options import add_flags, from_args, to_argv
from sodp_fast.train.finetune import FinetuneConfig

SAFE_PATH = ["-P"] if sys.version_info >= (3, 11) else []  # Python 3.10 has no -P


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a pre-trained planner on task rewards (SODP)",
                              description=__doc__.replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="one Meta-World task")
    which.add_argument("--tasks", help="several tasks (comma list or set name): one process and sub-folder each")
    add_flags(p, FinetuneConfig)
    p.add_argument("--parallel", type=int, default=None, help="with --tasks: tasks at a time (default: GPUs or 1)")
    p.add_argument("--resume", action="store_true", help="continue the run(s) in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodp_fast.envs.tasks import resolve_tasks
    from sodp_fast.errors import at_least
    from sodp_fast.train.finetune import finetune

    if args.task is not None:
        cfg = from_args(args, FinetuneConfig, task=resolve_tasks(args.task)[0])
        print(json.dumps(finetune(cfg, resume=args.resume)))
        return 0
    tasks = resolve_tasks(args.tasks)
    if args.parallel is not None:
        at_least(args.parallel, 1, "parallel")
    cfg = from_args(args, FinetuneConfig, task=tasks[0])  # validates every option once, before any child starts
    return run_many(args, cfg, tasks)


def _last_error(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1].strip() if lines else "no output")


def run_many(args: argparse.Namespace, cfg: FinetuneConfig, tasks: list[str]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from sodp_fast.train.run import RunFolder

    with RunFolder(args.out) as root:
        gpus = torch.cuda.device_count()
        argv = to_argv(FinetuneConfig, cfg.to_dict(), skip=("out",)) + (["--resume"] if args.resume else [])

        def child(slot: int, task: str) -> int:  # one task's process; its output in RUN/<task>.log
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(slot % gpus)} if gpus else {})}
            # -P: the child imports the package this process runs, not a ./sodp_fast source tree (no extension)
            cmd = [sys.executable, *SAFE_PATH, "-m", "sodp_fast.cli", "finetune", *argv, "--task", task,
                   "--out", root.path / task]
            log = root.path / f"{task}.log"
            with open(log, "w") as out:
                code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            done = "done" if code == 0 else f"FAILED (exit {code}): {_last_error(log)}"
            print(f"{task}: {done}", flush=True)
            return code

        with ThreadPoolExecutor(args.parallel or max(gpus, 1)) as pool:
            codes = dict(zip(tasks, pool.map(child, range(len(tasks)), tasks)))
        print(summarize(root, tasks, codes))
    return 0 if all(c == 0 for c in codes.values()) else 1


def summarize(root, tasks: list[str], codes: dict[str, int]) -> str:
    """Write ``summary.json`` and ``summary.md`` (final eval success and return per task, and the mean)."""
    rows = {}
    for task in tasks:
        path = root.path / task / "summary.json"
        rows[task] = json.loads(path.read_text()) if path.exists() else {"failed": True, "exit_code": codes.get(task)}
    done = [r for r in rows.values() if "final_eval_success_rate" in r]
    mean = {k: sum(r[k] for r in done) / len(done) for k in ("final_eval_success_rate", "final_eval_return_mean")} \
        if done else {}
    root.write_json("summary.json", {"tasks": rows, "mean": mean})
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
    root.write_text("summary.md", table)
    return table
