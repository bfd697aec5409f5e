import sys, json
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_finetune import toy_cfg, ITER, evals
from toy_env import make_toy_env, pretrain_broad
from sodp_fast.checkpoint import save_planner
from sodp_fast.train.finetune import finetune
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
ckpt = out / "pre.safetensors"
import torch; torch.manual_seed(0)
if not ckpt.exists():
    save_planner(ckpt, pretrain_broad(steps=200))
rows = []
for seed in range(int(sys.argv[2])):
    r = {}
    for reg in ("bc", "none"):
        run = out / f"{reg}-{seed}"
        finetune(toy_cfg(run, str(ckpt), reg=reg, env_steps=20 * ITER, seed=seed), make_env=make_toy_env)
        e = evals(run); r["pre"], r[reg] = e[0][1], e[-1][1]
    rows.append(r); print(seed, {k: round(v, 2) for k, v in r.items()}, flush=True)
for k in ("pre", "bc", "none"):
    print(k, round(float(np.mean([r[k] for r in rows])), 2))
