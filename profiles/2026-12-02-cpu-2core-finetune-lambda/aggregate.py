"""Table of the λ / lr runs: success at 0 / 20 k / 40 k env steps (50 deterministic episodes each), training-rollout
success per iteration, largest PPO clip fraction and approximate KL. Run from this folder: python3 aggregate.py"""
import glob
import json
import os

for f in sorted(glob.glob(os.path.join(os.path.dirname(__file__) or ".", "runs", "*", "metrics.jsonl"))):
    ds = [json.loads(line) for line in open(f)]
    ev = " ".join(f"{d['step'] // 1000}k:{d['eval_success_rate']:.2f}" for d in ds if "eval_success_rate" in d)
    tr = " ".join(f"{d['train_success_rate']:.1f}" for d in ds if "train_success_rate" in d)
    clip = max(d.get("clip_frac", 0) for d in ds)
    kl = max(d.get("approx_kl", 0) for d in ds)
    print(f"| {os.path.basename(os.path.dirname(f))} | {ev} | {tr} | {clip:.2f} | {kl:.1e} |")
