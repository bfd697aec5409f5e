"""Pre-training steps/s of the real training step (batch drawn on the device, loss, backward, clip, Adam, EMA)
on synthetic data, and the projected time for the paper's 5e5 steps.

Target on one H100: 5e5 steps at batch 256 with the default U-Net in <= 30 min, i.e. >= 278 steps/s.

    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py --preset tiny --batch-size 256 --device cpu
    python benchmarks/bench_pretrain.py --preset default --batch-size 256 --device cuda --steps 300
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sodp_fast.policy import DiffusionPlanner, PlannerConfig
from sodp_fast.nn.unet import preset
from sodp_fast.train.batches import WindowBatches
from sodp_fast.train.pretrain import PretrainConfig, Pretrainer
from sodp_fast.train.runtime import setup

PAPER_STEPS = 500_000
TARGET_S = 30 * 60


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", choices=["tiny", "small", "default"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    p.add_argument("--steps", type=int, default=100, help="timed steps")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--transitions", type=int, default=1_000_000, help="synthetic dataset size (500-step episodes)")
    args = p.parse_args()

    rt = setup(args.device, args.amp)
    rng = np.random.default_rng(0)
    n = args.transitions // 500 * 500
    batches = WindowBatches(rng.normal(size=(n, 39)).astype(np.float32),
                            rng.uniform(-1, 1, (n, 4)).astype(np.float32), np.arange(500, n + 1, 500), 2, 12, 8,
                            rt.device)
    cfg = PretrainConfig(data="", out="", preset=args.preset, batch_size=args.batch_size, device=args.device,
                         amp=args.amp)
    planner = DiffusionPlanner(PlannerConfig(unet=preset(args.preset)))
    trainer = Pretrainer(planner, batches, cfg, rt)
    params = sum(p.numel() for p in trainer.params)
    for _ in range(args.warmup):
        trainer.train_step()
    sync(rt.device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    loss = float(trainer.loss_sum)  # also waits for the device
    sync(rt.device)
    dt = time.perf_counter() - t0
    rate = args.steps / dt
    projected = PAPER_STEPS / rate
    name = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"device {name}  preset {args.preset} ({params / 1e6:.2f} M params)  batch {args.batch_size}  "
          f"amp {rt.amp_dtype}  windows {len(batches)}")
    print(f"{rate:.2f} steps/s ({rate * args.batch_size:.0f} samples/s) over {args.steps} steps; loss finite: "
          f"{np.isfinite(loss)}")
    print(f"projected time for {PAPER_STEPS:.0e} steps: {projected / 3600:.2f} h ({projected / 60:.1f} min); "
          f"30-min target ({PAPER_STEPS / TARGET_S:.0f} steps/s) {'met' if projected <= TARGET_S else 'not met'}")


if __name__ == "__main__":
    main()
