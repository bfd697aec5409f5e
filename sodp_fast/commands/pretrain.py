"""``sodp pretrain``: multi-task pre-training of the diffusion planner (paper defaults; every one overridable).

Multi-GPU: ``torchrun --nproc_per_node=N -m sodp_fast.cli pretrain …`` (``--batch-size`` stays global).
"""
from __future__ import annotations

import argparse

from sodp_fast.options import add_flags, from_args
from sodp_fast.train.pretrain import PretrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="pre-train the planner on a multi-task dataset",
                              description=__doc__.replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, PretrainConfig)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodp_fast.train.pretrain import pretrain

    cfg = from_args(args, PretrainConfig)
    trainer = pretrain(cfg, resume=args.resume)
    if trainer.rt.is_main:
        print(f"pre-trained {trainer.step} steps; model: {cfg.out}/model.safetensors")
    return 0
