"""Time every fused op against its PyTorch reference and ``torch.compile`` of that reference, on a CUDA GPU.

    python benchmarks/bench_ops.py --out profiles/bench_ops.json        # GPU: full table + JSON
    python benchmarks/bench_ops.py --smoke                              # CPU: checks the script runs, no timing

Sizes: sampling batches of 16 … 4096 chains at D = Tp·A = 48 (one denoising step per call) and the PPO update
of 256 chains × 10 steps = 2560 rows; the FiLM epilogue at the paper U-Net's three levels (C, T) = (256, 12),
(512, 6), (1024, 3) for the same batches. Timing is ``triton.testing.do_bench`` (CUDA events, L2 flushed
before every run, median). "Bytes" is the fewest bytes the op must move (each input read once, each output
written once); achieved bandwidth = bytes / time, reported as a share of the device's copy bandwidth measured
here with a large device-to-device copy (read + write). The fastest backend per op is printed last: that is
the measurement ``dispatch.AUTO_PREFERENCE`` should follow.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before sodp_fast.ops defines the kernels

from sodp_fast.diffusion.ddim import DDIMSampler  # noqa: E402
from sodp_fast.diffusion.schedule import NoiseSchedule  # noqa: E402
from sodp_fast.ops import cuda_backend, dispatch  # noqa: E402,F401  (cuda_backend registers the extension's ops)
from sodp_fast.ops.ddim_step import ddim_logprob_torch, ddim_step_torch  # noqa: E402
from sodp_fast.ops.film_epilogue import film_epilogue_torch  # noqa: E402
from sodp_fast.ops.ppo_loss import ppo_loss_torch  # noqa: E402

D = 48
SAMPLE_BATCHES = (16, 64, 256, 1024, 4096)
UPDATE_ROWS = 256 * 10
UNET_LEVELS = ((256, 12), (512, 6), (1024, 3))
GROUPS = 8


def copy_bandwidth(device) -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read + written."""
    src = torch.randn(256 * 2**20, device=device)  # 1 GiB of float32
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / ms / 1e6


def bench(fn, device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=200, return_mode="median")
    t0 = time.perf_counter()  # smoke mode: one run, only to show it executes
    fn()
    return (time.perf_counter() - t0) * 1e3


def implementations(op: str, reference, device, smoke: bool):
    """name → callable with the reference's signature: every backend present for ``op``, plus compiled torch."""
    impls = {}
    for backend in dispatch.BACKENDS:
        try:
            impls[backend] = dispatch.get(op, backend, device)
        except RuntimeError:
            continue
    if not smoke:
        impls["compile"] = torch.compile(reference)
    return impls


def cases(device, dtype, smoke: bool):
    """(op, label, bytes, {impl: thunk}) for every timed configuration."""
    sampler = DDIMSampler(NoiseSchedule(100), num_steps=10)
    coef_all = sampler.coef.to(device=device, dtype=torch.float32)
    e = torch.finfo(dtype).bits // 8
    batches = (4, 8) if smoke else SAMPLE_BATCHES
    rows = 20 if smoke else UPDATE_ROWS

    def randn(*shape, grad=False):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=grad)

    step_impls = implementations("ddim_step", ddim_step_torch, device, smoke)
    for n in batches:
        x, eps, noise = randn(n, D), randn(n, D), randn(n, D)
        thunks = {k: (lambda f=f: f(x, eps, noise, coef_all[3], 1.0)) for k, f in step_impls.items()}
        yield "ddim_step", f"sample N={n}", (4 * n * D) * e + 4 * n + 24, thunks

    lp_impls = implementations("ddim_logprob", ddim_logprob_torch, device, smoke)
    x, x_prev, eps = randn(rows, D), randn(rows, D), randn(rows, D, grad=True)
    coef = coef_all[torch.arange(rows, device=device) % coef_all.shape[0]]

    def logprob_fwd_bwd(f):
        logp = f(x, eps, x_prev, coef, 1.0)
        return torch.autograd.grad(logp, eps, torch.ones_like(logp))

    thunks = {k: (lambda f=f: logprob_fwd_bwd(f)) for k, f in lp_impls.items()}
    # forward reads x, ε̂, x_prev, coef and writes log p; backward reads them again plus ∂log p, writes ∂ε̂
    yield "ddim_logprob", f"update N={rows} fwd+bwd", (7 * rows * D) * e + rows * (2 * 24 + 4 + 4 + 4), thunks

    ppo_impls = implementations("ppo_loss", ppo_loss_torch, device, smoke)
    new, old, adv = randn(rows, grad=True), randn(rows), randn(rows)

    def ppo_fwd_bwd(f):
        return torch.autograd.grad(f(new, old, adv, 0.2)[0], new)

    thunks = {k: (lambda f=f: ppo_fwd_bwd(f)) for k, f in ppo_impls.items()}
    yield "ppo_loss", f"update N={rows} fwd+bwd", 7 * rows * e, thunks

    film_impls = implementations("film_epilogue", film_epilogue_torch, device, smoke)
    levels = ((32, 12),) if smoke else UNET_LEVELS
    for b in (*batches, rows):
        for c, t in levels:
            h, res, ss = randn(b, c, t, grad=True), randn(b, c, t, grad=True), randn(b, 2 * c, grad=True)
            w, bias = randn(c, grad=True), randn(c, grad=True)
            scale, shift = ss.chunk(2, dim=-1)
            params = (h, w, bias, ss, res)
            g = randn(b, c, t)
            fwd = {k: (lambda f=f: f(h, w, bias, GROUPS, scale, shift, res, 1e-5)) for k, f in film_impls.items()}
            fb = {k: (lambda f=f: torch.autograd.grad(f(h, w, bias, GROUPS, scale, shift, res, 1e-5), params, g))
                  for k, f in film_impls.items()}
            act, vec = b * c * t * e, b * c * e
            yield "film_epilogue", f"B={b} C={c} T={t} fwd", 3 * act + 2 * vec + 2 * c * e, fwd
            # backward: reads ∂out, h, scale (+ mean/rstd), writes ∂h, ∂scale, ∂shift, ∂residual (= ∂out, free)
            yield "film_epilogue", f"B={b} C={c} T={t} fwd+bwd", 3 * act + 2 * vec + 4 * act + 3 * vec, fb


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="CPU: run every case once at tiny sizes, no timing claims")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_ops.py times CUDA kernels and needs a CUDA GPU; none is visible here. "
              "Use --smoke to check that the script runs (CPU, Triton interpreter, no timings).", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    copy_gbs = None if device.type == "cpu" else copy_bandwidth(device)
    results = []
    for op, label, nbytes, thunks in cases(device, dtype, args.smoke):
        row = {"op": op, "case": label, "bytes": nbytes, "ms": {}}
        for impl, fn in thunks.items():
            row["ms"][impl] = bench(fn, device)
        base = row["ms"]["torch"]
        row["speedup_vs_torch"] = {k: base / v for k, v in row["ms"].items()}
        if "compile" in row["ms"]:
            row["speedup_vs_compile"] = {k: row["ms"]["compile"] / v for k, v in row["ms"].items()}
        if copy_gbs:
            row["gbs"] = {k: nbytes / v / 1e6 for k, v in row["ms"].items()}
            row["frac_of_copy_bw"] = {k: g / copy_gbs for k, g in row["gbs"].items()}
        results.append(row)
    print_table(results, copy_gbs, args.smoke)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke, not timings)",
                "torch": torch.__version__, "dtype": args.dtype, "copy_bandwidth_gbs": copy_gbs}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


def print_table(results, copy_gbs, smoke):
    impls = sorted({k for r in results for k in r["ms"]})
    head = f"{'op':14} {'case':28}" + "".join(f"{k + ' us':>12}" for k in impls)
    head += "".join(f"{k + ' x':>10}" for k in impls if k != "torch")
    if copy_gbs:
        head += f"{'best %bw':>9}"
    print(head)
    wins: dict[str, dict[str, int]] = {}
    for r in results:
        line = f"{r['op']:14} {r['case']:28}" + "".join(
            f"{r['ms'][k] * 1e3:12.1f}" if k in r["ms"] else f"{'-':>12}" for k in impls)
        line += "".join(f"{r['speedup_vs_torch'][k]:10.2f}" if k in r["ms"] else f"{'-':>10}"
                        for k in impls if k != "torch")
        if copy_gbs:
            line += f"{100 * max(r['frac_of_copy_bw'].values()):8.1f}%"
        print(line)
        best = min((k for k in r["ms"] if k != "compile"), key=r["ms"].get)  # compile is not a dispatch backend
        wins.setdefault(r["op"], {}).setdefault(best, 0)
        wins[r["op"]][best] += 1
    if copy_gbs:
        print(f"copy bandwidth (device-to-device, read + write): {copy_gbs:.0f} GB/s")
    if smoke:
        print("smoke run: every case executed once; the times above are not measurements")
    else:
        print("fastest dispatch backend per op (cases won):", json.dumps(wins))


if __name__ == "__main__":
    sys.exit(main())
