import torch, sys, json
from sodp_fast.checkpoint import load_planner
from sodp_fast.eval import evaluate
torch.set_num_threads(1)
task = "button-press-topdown"
def ev(p, stoch=False):
    return evaluate(p, task, 30, seed=0, num_envs=10, num_workers=2, deterministic=not stoch)["success_rate"]
if __name__ == "__main__":
    base, _, _ = load_planner("pt/model.safetensors")
    print("base", ev(base), flush=True)
    for scale in [float(s) for s in sys.argv[1:]]:
        for seed in (0, 1):
            p, _, _ = load_planner("pt/model.safetensors")
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for prm in p.parameters():
                    prm.add_(scale * (torch.randint(0, 2, prm.shape, generator=g) * 2 - 1))
            print(f"random sign x {scale:g} seed {seed}: {ev(p)}", flush=True)
    