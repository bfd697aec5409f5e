"""``sodp plot RUN1 RUN2 … --out fig.png``: several runs' learning curves on one figure."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plot", help="plot the learning curves of several runs on one figure")
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl), or sodp repro folders (their "
                   "fine-tuning runs)")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--keys", default="eval_success_rate,eval_return_mean", help="metrics, comma separated")
    p.add_argument("--labels", default=None, help="legend labels, comma separated (default: folder names)")
    p.add_argument("--title", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodp_fast.plots import plot_runs

    labels = args.labels.split(",") if args.labels else None
    print(plot_runs(args.runs, args.out, tuple(args.keys.split(",")), labels, args.title))
    return 0
