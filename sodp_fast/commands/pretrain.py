"""``sodp pretrain``: multi-task pre-training of the diffusion planner (paper defaults; every one overridable).

Multi-GPU: ``torchrun --nproc_per_node=N -m sodp_fast.cli pretrain …`` (``--batch-size`` stays global).
"""
from __future__ import annotations

import argparse

from sodp_fast.train.pretrain import PretrainConfig

_D = PretrainConfig(data="", out="")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="pre-train the planner on a multi-task dataset",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (sodp data generate / import-mtdiff)")
    p.add_argument("--out", required=True, help="run folder: config.json, metrics, checkpoints, model.safetensors")
    p.add_argument("--tasks", default=None, help="subset of the dataset's tasks (names, comma list or set name)")
    p.add_argument("--steps", type=int, default=_D.steps)
    p.add_argument("--batch-size", type=int, default=_D.batch_size, help="global batch (split across processes)")
    p.add_argument("--lr", type=float, default=_D.lr, help="Adam learning rate (constant)")
    p.add_argument("--grad-clip", type=float, default=_D.grad_clip, help="max gradient norm")
    p.add_argument("--ema-power", type=float, default=_D.ema_power)
    p.add_argument("--ema-max-decay", type=float, default=_D.ema_max_decay)
    p.add_argument("--preset", default=_D.preset, choices=["tiny", "small", "default"], help="U-Net size")
    p.add_argument("--num-timesteps", type=int, default=_D.num_timesteps, help="diffusion steps K")
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument("--ckpt-every", type=int, default=_D.ckpt_every, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=_D.log_every, help="steps between metric records")
    p.add_argument("--eval-batch", type=int, default=_D.eval_batch, help="fixed batch for the logged EMA loss")
    p.add_argument("--device", default=_D.device, help="auto, cpu, cuda, cuda:1 …")
    p.add_argument("--amp", default=_D.amp, choices=["auto", "bf16", "off"],
                   help="auto = bf16 autocast on CUDA only")
    p.add_argument("--data-on-device", default=_D.data_on_device, choices=["auto", "yes", "no"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodp_fast.envs.tasks import resolve_tasks
    from sodp_fast.train.pretrain import pretrain

    cfg = PretrainConfig(
        data=args.data, out=args.out, tasks=resolve_tasks(args.tasks) if args.tasks else None, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip, ema_power=args.ema_power,
        ema_max_decay=args.ema_max_decay, preset=args.preset, num_timesteps=args.num_timesteps, seed=args.seed,
        ckpt_every=args.ckpt_every, log_every=args.log_every, device=args.device, amp=args.amp,
        data_on_device=args.data_on_device, eval_batch=args.eval_batch, progress=not args.no_progress)
    trainer = pretrain(cfg, resume=args.resume)
    if trainer.rt.is_main:
        print(f"pre-trained {trainer.step} steps; model: {cfg.out}/model.safetensors")
    return 0
