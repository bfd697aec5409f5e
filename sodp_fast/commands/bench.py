"""``sodp bench sampler``: throughput benchmarks (code in ``sodp_fast/bench.py``, shared with ``benchmarks/``)."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from sodp_fast.bench import add_sampler_args

    p = subparsers.add_parser("bench", help="throughput benchmarks (GPU or CPU)")
    sub = p.add_subparsers(dest="bench_command", required=True)
    s = sub.add_parser("sampler", help="DDIM chain samples/s: eager vs diffusers vs torch.compile vs fused ops "
                       "(+ CUDA graph)")
    add_sampler_args(s)
    s.set_defaults(func=_sampler)


def _sampler(args: argparse.Namespace) -> int:
    from sodp_fast.bench import run_sampler

    run_sampler(args)
    return 0
