"""Bitwise reproducibility of the cpp ops: repeated calls, 1 vs 2 threads, misaligned storage."""
import sys, torch
from sodp_fast.ops.film_epilogue import film_epilogue_cpp
from sodp_fast.ops.ddim_step import ddim_step_cpp, ddim_logprob_cpp
from sodp_fast.ops import ppo_loss as P

def shifted(t, off):
    buf = torch.empty(t.numel() + off, dtype=t.dtype)
    v = buf[off:].view_as(t); v.copy_(t); return v

def film(seed, B, C, T, off):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, C, T, generator=g); w = torch.randn(C, generator=g); b = torch.randn(C, generator=g)
    ss = torch.randn(B, 2 * C, generator=g); r = torch.randn(B, C, T, generator=g); go = torch.randn(B, C, T, generator=g)
    h, r, go = shifted(h, off), shifted(r, off), shifted(go, off)
    ps = [x.clone().requires_grad_() for x in (h, w, b, ss)]
    sc, sh = ps[3].chunk(2, 1)
    out = film_epilogue_cpp(ps[0], ps[1], ps[2], 8, sc, sh, r)
    out.backward(go)
    return [out.detach()] + [p.grad for p in ps]

def ddim(seed, N, D, off):
    g = torch.Generator().manual_seed(seed)
    x, e, z = (shifted(torch.randn(N, D, generator=g), off) for _ in range(3))
    coef = torch.rand(N, 6, generator=g) * 0.5 + 0.25
    xp, lp = ddim_step_cpp(x, e, z, coef, 1.0)
    ee = e.clone().requires_grad_()
    l2 = ddim_logprob_cpp(x, ee, xp, coef, 1.0); l2.sum().backward()
    return [xp, lp, l2.detach(), ee.grad]

def run(threads, off):
    torch.set_num_threads(threads)
    res = []
    for s, (B, C, T) in enumerate([(1, 32, 12), (3, 64, 6), (32, 64, 12), (100, 96, 3), (256, 64, 12), (64, 128, 6)]):
        res += film(s, B, C, T, off)
    for s, (N, D) in enumerate([(1, 48), (33, 48), (320, 48), (2560, 48), (5000, 36)]):
        res += ddim(s, N, D, off)
    return res

ref = run(1, 0)
bad = 0
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
    for th in (1, 2):
        for off in (0, 1, 3, 8):
            got = run(th, off)
            diff = [i for i, (a, b) in enumerate(zip(ref, got)) if not torch.equal(a, b)]
            if diff:
                bad += 1
                print(f"rep {rep} threads {th} offset {off}: differ at {diff}", flush=True)
print("done, bad =", bad)
