"""Table of fine-tuning runs: success at each evaluation (50 deterministic episodes each), training-rollout success
per iteration, largest PPO clip fraction and approximate KL. ``python3 aggregate.py [RUNS]``: RUNS defaults to this
folder's runs/ (the λ / lr runs); the budget profile passes its own."""
import glob
import json
import os
import sys

runs = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__) or ".", "runs")
for f in sorted(glob.glob(os.path.join(runs, "*", "metrics.jsonl"))):
    ds = [json.loads(line) for line in open(f)]
    ev = " ".join(f"{d['step'] // 1000}k:{d['eval_success_rate']:.2f}" for d in ds if "eval_success_rate" in d)
    tr = " ".join(f"{d['train_success_rate']:.1f}" for d in ds if "train_success_rate" in d)
    clip = max(d.get("clip_frac", 0) for d in ds)
    kl = max(d.get("approx_kl", 0) for d in ds)
    print(f"| {os.path.basename(os.path.dirname(f))} | {ev} | {tr} | {clip:.2f} | {kl:.1e} |")
