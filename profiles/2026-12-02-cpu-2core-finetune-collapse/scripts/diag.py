"""One-update diagnostics: from the same init rollouts, apply one update with variant settings, then measure."""
import copy, sys, json, dataclasses
import numpy as np, torch
from sodp_fast.checkpoint import load_planner
from sodp_fast.train import finetune as ft
from sodp_fast.train.rollout import OnlineSource, Timers
from sodp_fast.eval import evaluate
torch.set_num_threads(1)
TASK = sys.argv[1] if len(sys.argv) > 1 else "button-press-topdown-v3"
CKPT = sys.argv[2] if len(sys.argv) > 2 else "pt/model.safetensors"

def measure(planner, src, gen, iters=2):
    rs, ss = [], []
    for _ in range(iters):
        ep = src.collect(planner, gen)
        rs.append(ep.returns); ss.append(ep.success)
    det = evaluate(planner, TASK, 30, seed=0, num_envs=10, num_workers=2)["success_rate"]
    return float(np.concatenate(rs).mean()), float(np.concatenate(ss).mean()), det

def main(variants):
    base, _, _ = load_planner(CKPT)
    cfg0 = ft.FinetuneConfig(out="/tmp/diag", task=TASK, num_envs=10, num_workers=2, grad_steps=10)
    make = ft.metaworld_env_factory(TASK, 2, 8, 500, 0)
    src = OnlineSource(ft.build_envs(make, cfg0), torch.device("cpu"), Timers())
    gen = torch.Generator().manual_seed(0)
    init = [src.collect(base, gen) for _ in range(2)]
    print("init train return %.0f success %.2f" % (np.mean([e.returns.mean() for e in init]), np.mean([e.success.mean() for e in init])), flush=True)
    orig_adv = ft.chunk_advantages
    for name, kw, advmul, iters in variants:
        planner = copy.deepcopy(base)
        cfg = dataclasses.replace(cfg0, **kw)
        tuner = ft.Finetuner(cfg, planner, None, torch.device("cpu"))
        tuner.replay = ft.ReplayBuffer(2)
        for e in init: tuner.absorb(e)
        ft.chunk_advantages = lambda *a, **k: advmul(orig_adv(*a, **k))
        ms = [tuner.update() for _ in range(iters)]
        ft.chunk_advantages = orig_adv
        m = ms[-1]
        src.seek(100)
        r, s, det = measure(planner, src, torch.Generator().manual_seed(1))
        print(f"{name:<28} clip {m['clip_frac']:.2f} kl {m['approx_kl']:.4f} gn {m['grad_norm']:.0f} | "
              f"stoch return {r:.0f} success {s:.2f} | det success {det:.2f}", flush=True)
    src.close()

if __name__ == "__main__":
    I = lambda a: a
    V = {
     "lr0": ("no update (lr 1e-12)", dict(lr=1e-12), I, 1),
     "ppo": ("ppo+bc", {}, I, 1),
     "neg": ("ppo+bc, adv negated", {}, lambda a: -a, 1),
     "rand": ("ppo+bc, adv shuffled", {}, lambda a: a[torch.randperm(len(a), generator=torch.Generator().manual_seed(5))], 1),
     "zero": ("bc only (adv 0)", {}, lambda a: 0 * a, 1),
     "ppo_none": ("ppo only", dict(reg="none"), I, 1),
     "neg_none": ("ppo only, adv negated", dict(reg="none"), lambda a: -a, 1),
    }
    main([V[k] for k in sys.argv[3].split(",")])
