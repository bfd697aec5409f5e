import torch
from sodp_fast.checkpoint import load_planner
torch.manual_seed(0)
p,_,_ = load_planner("pt/model.safetensors")
from sodp_fast.train.buffers import Chunks
obs = torch.load("/tmp/obs.pt") if False else None
# use random states from the dataset
import numpy as np
o = np.load("data/bpt/button-press-topdown-v3/observations.npy")
idx = np.random.default_rng(0).integers(0, len(o)-1, 64)
obs = torch.tensor(np.stack([o[idx], o[idx+1]], 1))
chain = p.sample(obs, generator=torch.Generator().manual_seed(0))
S = p.sampler.num_steps
for s in range(S):
    steps = torch.full((64,), s)
    trans = torch.stack([chain.latents[:, s], chain.latents[:, s+1]], 1)
    p.zero_grad()
    lp = p.chain_log_prob(obs, trans, steps)
    # random-sign advantage weights: variance of the gradient per step
    w = torch.randn(64)
    (w * lp).sum().backward()
    g = torch.cat([q.grad.flatten() for q in p.parameters() if q.grad is not None]).norm()
    eps = p.model(chain.latents[:, s], p.sampler.timesteps[steps], p.encode_obs(obs))
    c = p.sampler.coef[s]
    x0 = (chain.latents[:, s] - c[1]*eps)*c[0]
    inbox = (x0.abs() < 1).float().mean()
    print(f"step {s} t={int(p.sampler.timesteps[s])} c0={c[0]:.1f} std={c[4]:.3f} grad-norm {g:.1f}  x0-in-box {inbox:.2f}  logp mean {lp.mean():.1f}")
