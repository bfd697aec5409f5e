"""Training diagnostics of a cpu-mt10 run folder: how far each fine-tuning variant moved the planner.

    python3 -P diagnostics.py RUN_FOLDER > diagnostics.md

Per variant, over every finished (task, seed) run it has: Adam steps, mean and max PPO clip fraction, mean approximate KL
per update iteration, gradient norm before clipping, and the mean curve of evaluation success (10 episodes per
point) over the runs. Reads only ``finetune/<label>/metrics.jsonl`` and ``repro.json``.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

run = Path(sys.argv[1])
preset = json.loads((run / "repro.json").read_text())["preset"]
by_variant = defaultdict(list)
for folder in sorted((run / "finetune").iterdir()):
    if not (folder / "metrics.jsonl").exists():
        continue
    cfg = json.loads((folder / "config.json").read_text())
    variant = folder.name.removeprefix(cfg["task"] + "-").rsplit("-s", 1)[0]
    recs = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    upd = [r for r in recs if "clip_frac" in r]
    curve = {r["step"]: r["eval_success_rate"] for r in recs if "eval_success_rate" in r}
    if max(curve) < cfg["env_steps"]:
        continue  # unfinished
    by_variant[variant].append({"task": cfg["task"], "seed": cfg["seed"], "steps": cfg["grad_steps"] * len(upd),
                                "clip": [r["clip_frac"] for r in upd], "kl": [r["approx_kl"] for r in upd],
                                "gnorm": [r["grad_norm"] for r in upd], "curve": curve})

print(f"# Fine-tuning diagnostics: {run.name} (preset {preset['name']}, lr {preset['finetune_lr']:g}, "
      f"λ {preset['finetune_reg_weight']:g})\n")
print("| variant | runs | Adam steps per run | clip fraction mean (max) | approx KL per iteration, mean (max) "
      "| grad norm before clipping, median | eval success along the run (mean over runs, %) |")
print("|---|---|---|---|---|---|---|")
for variant, runs in by_variant.items():
    clip, kl, gn = (np.concatenate([r[k] for r in runs]) for k in ("clip", "kl", "gnorm"))
    steps = sorted(set.intersection(*(set(r["curve"]) for r in runs)))
    curve = " → ".join(f"{100 * np.mean([r['curve'][s] for r in runs]):.0f}" for s in steps)
    print(f"| {variant} | {len(runs)} | {int(np.mean([r['steps'] for r in runs]))} | {clip.mean():.3f} "
          f"({clip.max():.3f}) | {kl.mean():.1e} ({kl.max():.1e}) | {np.median(gn):.2f} | {curve} "
          f"(at {', '.join(f'{s // 1000} k' for s in steps)}) |")
