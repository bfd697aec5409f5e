"""Fine-tuning variant runner for diagnosis: python exp_ft.py NAME TASK CKPT SEED ENV_STEPS PATCH JSON_OVERRIDES"""
import sys, json, torch
from sodp_fast.train import finetune as ft
from sodp_fast.train import losses
from sodp_fast.ops.ppo_loss import ppo_clip_loss
torch.set_num_threads(1)

def skip_first_step():
    from sodp_fast.train.buffers import ReplayBuffer, RowBatch
    def sample(self, batch_size, advantages, generator):
        c = self.chunks
        s = c.log_probs.shape[1]
        rows = torch.randint(0, len(c) * (s - 1), (batch_size,), generator=generator)
        chain, step = rows // (s - 1), rows % (s - 1) + 1
        trans = torch.stack([c.latents[chain, step], c.latents[chain, step + 1]], 1)
        return RowBatch(c.obs[chain], trans, step, c.log_probs[chain, step], advantages[chain], c.latents[chain, -1])
    ReplayBuffer.sample = sample

def shuffle_adv():
    orig = ft.chunk_advantages
    g = torch.Generator().manual_seed(123)
    ft.chunk_advantages = lambda *a, **k: (lambda x: x[torch.randperm(len(x), generator=g)])(orig(*a, **k))

def diff_baseline():
    def adv(rewards, mode, running=None, index=None):
        c = int(index.max()) + 1
        r = rewards.view(c, -1)  # one iteration of lock-step envs: rows are (chunk, env)
        d = torch.cat([r[:1], r[1:] - r[:-1]])
        d = d - d.mean(1, keepdim=True)
        d = d.flatten()
        return d / (d.std(unbiased=False) + 1e-8)
    ft.chunk_advantages = adv

def rtg_baseline(gamma):
    def adv(rewards, mode, running=None, index=None):
        c = int(index.max()) + 1
        r = rewards.view(c, -1)
        g = torch.zeros_like(r)
        acc = torch.zeros_like(r[0])
        for t in range(c - 1, -1, -1):
            acc = r[t] + gamma * acc
            g[t] = acc
        d = (g - g.mean(1, keepdim=True)).flatten()
        return d / (d.std(unbiased=False) + 1e-8)
    ft.chunk_advantages = adv

def patch(kind):
    if "rtg" in kind:
        import re
        gam = float(re.search(r"rtg([0-9.]+)", kind).group(1))
        rtg_baseline(gam)
        kind = re.sub(r"-?rtg[0-9.]+", "", kind) or "none"
    if "diff" in kind:
        diff_baseline()
        kind = kind.replace("-diff", "").replace("diff", "none")
    if "skip0" in kind:
        skip_first_step()
        kind = kind.replace("-skip0", "").replace("skip0", "none")
    if "shuf" in kind:
        shuffle_adv()
        kind = kind.replace("-shuf", "").replace("shuf", "none")
    if kind == "none":
        return
    if kind == "noppo":
        def imp(planner, batch, clip_eps, backend=None):
            new = planner.chain_log_prob(batch.obs, batch.transitions, batch.steps)
            z = torch.zeros(())
            return 0.0 * new.sum(), z, z
    elif kind.startswith("mean"):
        def imp(planner, batch, clip_eps, backend=None):
            d = batch.transitions[0, 0].numel()
            new = planner.chain_log_prob(batch.obs, batch.transitions, batch.steps)
            return ppo_clip_loss(new / d, batch.old_log_probs / d, batch.advantages, clip_eps)
    ft.improvement_loss = imp

if __name__ == "__main__":
    name, task, ckpt, seed, steps, kind, over = sys.argv[1:8]
    patch(kind)
    cfg = ft.FinetuneConfig(out=f"runs/{name}", task=task, ckpt=ckpt, seed=int(seed), env_steps=int(steps),
                            num_envs=10, num_workers=2, eval_every=int(steps), eval_episodes=50,
                            progress=False, **json.loads(over))
    s = ft.finetune(cfg)
    evs = [r for r in map(json.loads, open(f"runs/{name}/metrics.jsonl")) if "eval_success_rate" in r]
    from sodp_fast.checkpoint import load_planner
    from sodp_fast.eval import evaluate
    p, _, _ = load_planner(f"runs/{name}/model.safetensors")
    st = evaluate(p, task, 50, seed=0, num_envs=10, num_workers=2, deterministic=False)["success_rate"]
    print(name, " ".join(f"{r['step']}:{r['eval_success_rate']:.2f}" for r in evs), f"stoch:{st:.2f}", flush=True)
