"""``sodp eval``: success rate and return of a checkpoint per task and seed (deterministic sampling by default)."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from sodp_fast.options import parser_for

INT = parser_for(int)  # also reads 1e6


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on Meta-World tasks",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="planner checkpoint, e.g. RUN/model.safetensors")
    p.add_argument("--tasks", required=True, help="task names, comma list, or mt10 / paper-mt10 / mt50")
    p.add_argument("--episodes", type=INT, default=50, help="episodes per task and seed")
    p.add_argument("--seeds", default="0", help="comma list of seeds (goals, initial states and x_K)")
    p.add_argument("--num-envs", type=INT, default=10, help="envs stepped in lock-step per round")
    p.add_argument("--workers", type=INT, default=None, help="env processes (0 = in-process; default: cores)")
    p.add_argument("--max-episode-steps", type=INT, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--stochastic", action="store_true",
                   help="evaluate the stochastic policy fine-tuning optimises (DDIM with the planner's eta), "
                        "not the deterministic eta=0 sampler")
    p.add_argument("--out", default=None, help="folder for eval.json and eval.md")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodp_fast.checkpoint import load_planner
    from sodp_fast.envs.metaworld import ACTION_DIM, OBS_DIM
    from sodp_fast.envs.tasks import resolve_tasks
    from sodp_fast.errors import ConfigError, at_least
    from sodp_fast.eval import evaluate_tasks, markdown_table
    from sodp_fast.train.run import RunFolder
    from sodp_fast.train.runtime import resolve_device

    tasks = resolve_tasks(args.tasks)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be a comma list of integers, not {args.seeds!r}") from None
    if not seeds:
        raise ConfigError("--seeds: need at least one seed")
    for name in ("episodes", "num_envs", "max_episode_steps"):
        at_least(getattr(args, name), 1, name)
    if args.workers is not None:
        at_least(args.workers, 0, "workers")
    device = resolve_device(args.device)
    with RunFolder(args.out) if args.out else contextlib.nullcontext() as folder:  # a bad --out fails first
        planner, _, _ = load_planner(args.ckpt, device, expect={"obs_dim": OBS_DIM, "action_dim": ACTION_DIM})

        def report(r):
            print(f"{r['task']} seed {r['seed']}: success {r['success_rate']:.2f}  return {r['return_mean']:.1f} "
                  f"± {r['return_std']:.1f}  ({r['seconds']:.1f} s)", flush=True)

        results = evaluate_tasks(planner, tasks, args.episodes, seeds, args.num_envs, args.workers,
                                 args.max_episode_steps, progress=report, deterministic=not args.stochastic)
        results["checkpoint"] = str(Path(args.ckpt).resolve())
        table = markdown_table(results)
        print(table, end="")
        if folder is not None:
            folder.write_json("eval.json", results)
            folder.write_text("eval.md", table)
    return 0
