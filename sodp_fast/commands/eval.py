"""``sodp eval``: success rate and return of a checkpoint per task and seed (deterministic sampling by default)."""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path

from sodp_fast.errors import ConfigError
from sodp_fast.options import Options, add_flags, from_args, opt


@dataclass
class EvalOptions(Options):
    ckpt: str = opt(help="planner checkpoint, e.g. RUN/model.safetensors")
    tasks: str = opt(help="task names, comma list, or mt10 / paper-mt10 / mt50")
    episodes: int = opt(50, "episodes per task and seed", low=1)
    seeds: tuple[int, ...] = opt((0,), "comma list of seeds (goals, initial states and x_K)")
    num_envs: int = opt(10, "envs stepped in lock-step per round", low=1)
    workers: int | None = opt(None, "env processes (0 = in-process; none: one per core)", low=0)
    max_episode_steps: int = opt(500, "episode length", low=1)
    device: str = opt("auto", "auto, cpu, cuda, cuda:1 ...")
    stochastic: bool = opt(False, "evaluate the stochastic policy fine-tuning optimises (DDIM with the planner's "
                           "eta), not the deterministic eta=0 sampler")
    out: str | None = opt(None, "folder for eval.json and eval.md")

    def __post_init__(self):
        super().__post_init__()
        if not self.seeds:
            raise ConfigError("--seeds: need at least one seed")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on Meta-World tasks")
    add_flags(p, EvalOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodp_fast.checkpoint import load_planner
    from sodp_fast.envs.metaworld import ACTION_DIM, OBS_DIM
    from sodp_fast.envs.tasks import resolve_tasks
    from sodp_fast.eval import evaluate_tasks, markdown_table
    from sodp_fast.train.run import RunFolder
    from sodp_fast.train.runtime import resolve_device

    o = from_args(args, EvalOptions)
    tasks, device = resolve_tasks(o.tasks), resolve_device(o.device)
    with RunFolder(o.out) if o.out else contextlib.nullcontext() as folder:  # a bad --out fails first
        planner, _, _ = load_planner(o.ckpt, device, expect={"obs_dim": OBS_DIM, "action_dim": ACTION_DIM})

        def report(r):
            print(f"{r['task']} seed {r['seed']}: success {r['success_rate']:.2f}  return {r['return_mean']:.1f} "
                  f"± {r['return_std']:.1f}  ({r['seconds']:.1f} s)", flush=True)

        results = evaluate_tasks(planner, tasks, o.episodes, o.seeds, o.num_envs, o.workers, o.max_episode_steps,
                                 progress=report, deterministic=not o.stochastic)
        results["checkpoint"] = str(Path(o.ckpt).resolve())
        table = markdown_table(results)
        print(table, end="")
        if folder is not None:
            folder.write_json("eval.json", results)
            folder.write_text("eval.md", table)
    return 0
