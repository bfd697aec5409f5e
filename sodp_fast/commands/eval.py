"""``sodp eval``: success rate and return of a checkpoint per task and seed (deterministic sampling by default)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on Meta-World tasks",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="planner checkpoint, e.g. RUN/model.safetensors")
    p.add_argument("--tasks", required=True, help="task names, comma list, or mt10 / paper-mt10 / mt50")
    p.add_argument("--episodes", type=int, default=50, help="episodes per task and seed")
    p.add_argument("--seeds", default="0", help="comma list of seeds (goals, initial states and x_K)")
    p.add_argument("--num-envs", type=int, default=10, help="envs stepped in lock-step per round")
    p.add_argument("--workers", type=int, default=None, help="env processes (0 = in-process; default: cores)")
    p.add_argument("--max-episode-steps", type=int, default=500)
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
    from sodp_fast.errors import SodpError
    from sodp_fast.eval import evaluate_tasks, markdown_table
    from sodp_fast.train.runtime import resolve_device

    tasks = resolve_tasks(args.tasks)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise SodpError(f"--seeds must be a comma list of integers, not {args.seeds!r}") from None
    if not seeds or args.episodes < 1 or args.num_envs < 1:
        raise SodpError("need at least one seed, one episode and one env")
    planner, _, _ = load_planner(args.ckpt, resolve_device(args.device),
                                 expect={"obs_dim": OBS_DIM, "action_dim": ACTION_DIM})

    def report(r):
        print(f"{r['task']} seed {r['seed']}: success {r['success_rate']:.2f}  return {r['return_mean']:.1f} "
              f"± {r['return_std']:.1f}  ({r['seconds']:.1f} s)", flush=True)

    results = evaluate_tasks(planner, tasks, args.episodes, seeds, args.num_envs, args.workers,
                             args.max_episode_steps, progress=report, deterministic=not args.stochastic)
    results["checkpoint"] = str(Path(args.ckpt).resolve())
    table = markdown_table(results)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(results, indent=1))
        (out / "eval.md").write_text(table)
    return 0
