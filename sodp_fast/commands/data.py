"""``sodp data generate | inspect | import-mtdiff``: build and look at multi-task datasets."""
from __future__ import annotations

import argparse

import numpy as np

from sodp_fast.options import parser_for

INT = parser_for(int)  # also reads 1e6


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="generate, import and inspect multi-task datasets")
    sub = p.add_subparsers(dest="data_command", required=True)

    g = sub.add_parser("generate", help="noisy scripted-expert Meta-World data (resumable)")
    g.add_argument("--tasks", required=True, help="task names, comma list, or mt10 / paper-mt10 / mt50")
    g.add_argument("--transitions-per-task", type=INT, required=True, help="rounded up to whole episodes")
    g.add_argument("--out", required=True, help="dataset folder")
    g.add_argument("--workers", type=INT, default=1, help="processes (tasks in parallel); 0 = in-process")
    g.add_argument("--seed", type=INT, default=0)
    g.add_argument("--max-episode-steps", type=INT, default=500)
    g.set_defaults(func=_generate)

    i = sub.add_parser("inspect", help="per-task counts, success and returns by episode quintile")
    i.add_argument("root", help="dataset folder")
    i.set_defaults(func=_inspect)

    m = sub.add_parser("import-mtdiff", help="convert MTDiff/HarmoDT per-episode .npz files")
    m.add_argument("src", help="folder with <task>/*.npz or <task>/*/dataset/*.npz")
    m.add_argument("--out", required=True, help="dataset folder")
    m.add_argument("--tasks", default=None, help="only these tasks")
    m.set_defaults(func=_import_mtdiff)


def _generate(args: argparse.Namespace) -> int:
    from sodp_fast.data.generate import generate

    generate(args.tasks, args.out, args.transitions_per_task, seed=args.seed, workers=args.workers,
             max_episode_steps=args.max_episode_steps)
    return _inspect(argparse.Namespace(root=args.out))


def _import_mtdiff(args: argparse.Namespace) -> int:
    from sodp_fast.data.mtdiff import import_mtdiff

    import_mtdiff(args.src, args.out, args.tasks)
    return _inspect(argparse.Namespace(root=args.out))


def quintiles(values: np.ndarray) -> list[float]:
    """Means over five consecutive, near-equal groups of episodes (early to late data)."""
    return [float(np.mean(part)) if len(part) else float("nan") for part in np.array_split(values, 5)]


def inspect_rows(root) -> list[str]:
    from sodp_fast.data.format import load_dataset

    ds = load_dataset(root, finite=False)
    rows = [f"{ds.root}: {len(ds.tasks)} tasks, obs_dim {ds.obs_dim}, action_dim {ds.action_dim}",
            f"{'task':<28}{'transitions':>12}{'episodes':>9}{'success':>8}{'return':>9}   "
            "success by quintile | return by quintile"]
    for task, d in ds.tasks.items():
        s, r = d.success.astype(float), d.episode_returns()
        rows.append(f"{task:<28}{d.num_transitions:>12}{d.num_episodes:>9}{s.mean():>8.2f}{r.mean():>9.1f}   "
                    + " ".join(f"{x:.2f}" for x in quintiles(s)) + " | "
                    + " ".join(f"{x:.0f}" for x in quintiles(r)))
    return rows


def _inspect(args: argparse.Namespace) -> int:
    print("\n".join(inspect_rows(args.root)))
    return 0
