"""Time every fused op against its PyTorch reference and ``torch.compile`` of that reference, on a CUDA GPU;
or, with ``--cpu``, the CPU kernels ("cpp") against the reference on the CPU.

    python benchmarks/bench_ops.py --out profiles/bench_ops.json        # GPU: full table + JSON
    python benchmarks/bench_ops.py --cpu --out profiles/cpu.json        # CPU: cpp vs torch, CPU times
    python benchmarks/bench_ops.py --smoke                              # CPU: checks the script runs, no timing

Sizes: sampling batches of 16 … 4096 chains at D = Tp·A = 48 (one denoising step per call) and the PPO update
of 256 chains × 10 steps = 2560 rows; the FiLM epilogue at the paper U-Net's three levels (C, T) = (256, 12),
(512, 6), (1024, 3) for the same batches. Timing is ``triton.testing.do_bench`` (CUDA events, L2 flushed
before every run, median). "Bytes" is the fewest bytes the op must move (each input read once, each output
written once); achieved bandwidth = bytes / time, reported as a share of the device's copy bandwidth measured
here with a large device-to-device copy (read + write). The fastest backend per op is printed last: that is
the measurement ``dispatch.AUTO_PREFERENCE`` should follow.

CPU mode: the shapes the CPU rollouts and updates run, at sampler batches B = 1, 8, 32, 256: ``ddim_step`` on
[B, 48] (no grad, as the sampler runs it), ``ddim_logprob`` and ``ppo_loss`` forward + backward on the update's
B × 10 rows, and the FiLM epilogue at every level of the tiny (C, T) = (32, 12), (64, 6), 4 groups and small
(64, 12), (128, 6), (256, 3), 8 groups U-Nets at Tp = 12, in the two forms the U-Net calls (block0: FiLM, no
residual; block1: residual, no FiLM), forward under no_grad (sampling) and forward + backward (PPO). Host clock,
cpp and torch interleaved, median over repeats; ratios are torch time / cpp time (> 1: cpp faster).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

SMOKE = "--smoke" in sys.argv
if SMOKE and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before sodp_fast.ops defines the kernels

from sodp_fast.diffusion.ddim import DDIMSampler  # noqa: E402
from sodp_fast.diffusion.schedule import NoiseSchedule  # noqa: E402
from sodp_fast.ops import dispatch  # noqa: E402
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


CPU_BATCHES = (1, 8, 32, 256)
CPU_UNETS = {"tiny": (((32, 12), (64, 6)), 4), "small": (((64, 12), (128, 6), (256, 3)), 8)}


def cpu_time(thunks: dict, repeats: int = 7, block_s: float = 0.02) -> dict[str, float]:
    """ms per call of each thunk: blocks of calls sized to ~block_s, implementations interleaved block by
    block (so load from other jobs on the machine hits both alike), median over ``repeats`` blocks."""
    calls = {}
    for k, fn in thunks.items():
        fn()  # warm-up
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < block_s / 4:
            fn()
            n += 1
        calls[k] = max(1, int(4 * n))
    samples = {k: [] for k in thunks}
    for _ in range(repeats):
        for k, fn in thunks.items():
            t0 = time.perf_counter()
            for _ in range(calls[k]):
                fn()
            samples[k].append((time.perf_counter() - t0) / calls[k] * 1e3)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def cpu_cases():
    """(op, label, {"torch": thunk, "cpp": thunk}) at the CPU rollout / update shapes (see the docstring)."""
    sampler = DDIMSampler(NoiseSchedule(100), num_steps=10)
    coef_all = sampler.coef.float()
    impls = {op: {b: dispatch.get(op, b, "cpu") for b in ("torch", "cpp")}
             for op in ("ddim_step", "ddim_logprob", "ppo_loss", "film_epilogue")}

    def no_grad(f):
        def run():
            with torch.no_grad():
                return f()
        return run

    for b in CPU_BATCHES:
        x, eps, noise = (torch.randn(b, D) for _ in range(3))
        yield "ddim_step", f"sample B={b}", {k: no_grad(lambda f=f: f(x, eps, noise, coef_all[3], 1.0))
                                             for k, f in impls["ddim_step"].items()}
    for b in CPU_BATCHES:
        rows = 10 * b
        x, x_prev = torch.randn(rows, D), torch.randn(rows, D)
        eps = torch.randn(rows, D, requires_grad=True)
        coef = coef_all[torch.arange(rows) % coef_all.shape[0]]
        yield "ddim_logprob", f"update N={rows} fwd+bwd", {
            k: (lambda f=f: torch.autograd.grad(f(x, eps, x_prev, coef, 1.0).sum(), eps))
            for k, f in impls["ddim_logprob"].items()}
        new, old, adv = torch.randn(rows, requires_grad=True), torch.randn(rows), torch.randn(rows)
        yield "ppo_loss", f"update N={rows} fwd+bwd", {
            k: (lambda f=f: torch.autograd.grad(f(new, old, adv, 0.2)[0], new)) for k, f in impls["ppo_loss"].items()}
    for unet, (levels, groups) in CPU_UNETS.items():
        for c, t in levels:
            for b in CPU_BATCHES:
                h, res = torch.randn(b, c, t, requires_grad=True), torch.randn(b, c, t, requires_grad=True)
                ss = torch.randn(b, 2 * c, requires_grad=True)
                w, bias = 1 + torch.randn(c).requires_grad_(), torch.randn(c, requires_grad=True)
                scale, shift = ss.chunk(2, dim=-1)
                g = torch.randn(b, c, t)
                for form, film, r, params in (("film", (scale, shift), None, (h, w, bias, ss)),
                                              ("res", (None, None), res, (h, w, bias, res))):
                    label = f"{unet} {form} B={b} C={c} T={t}"
                    fns = {k: (lambda f=f, film=film, r=r: f(h, w, bias, groups, *film, r, 1e-5))
                           for k, f in impls["film_epilogue"].items()}
                    yield "film_epilogue", f"{label} fwd", {k: no_grad(fn) for k, fn in fns.items()}
                    yield "film_epilogue", f"{label} fwd+bwd", {
                        k: (lambda fn=fn, params=params: torch.autograd.grad(fn(), params, g)) for k, fn in fns.items()}


def cpu_main(out: str | None) -> int:
    if not dispatch.backend_present("cpp"):
        print(f"the cpp backend is not available: {dispatch.describe_backends()['cpp']}", file=sys.stderr)
        return 2
    print(f"CPU times (host clock), {torch.get_num_threads()} threads; ratio = torch / cpp (> 1: cpp faster)")
    print(f"{'op':14} {'case':36}{'torch us':>11}{'cpp us':>11}{'ratio':>8}")
    results = []
    for op, label, thunks in cpu_cases():
        ms = cpu_time(thunks)
        results.append({"op": op, "case": label, "ms": ms, "torch_over_cpp": ms["torch"] / ms["cpp"]})
        print(f"{op:14} {label:36}{ms['torch'] * 1e3:11.1f}{ms['cpp'] * 1e3:11.1f}{ms['torch'] / ms['cpp']:8.2f}",
              flush=True)
    summary = {}
    for op in dict.fromkeys(r["op"] for r in results):
        ratios = [r["torch_over_cpp"] for r in results if r["op"] == op]
        summary[op] = {"cases": len(ratios), "cpp_wins": sum(x > 1 for x in ratios), "min_ratio": min(ratios),
                       "geomean_ratio": math.exp(sum(map(math.log, ratios)) / len(ratios))}
    print("per op (ratio torch / cpp):", json.dumps(summary, indent=1))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        meta = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}
        with open(out, "w") as f:
            json.dump({"meta": meta, "results": results, "summary": summary}, f, indent=1)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="CPU: run every case once at tiny sizes, no timing claims")
    ap.add_argument("--cpu", action="store_true", help="CPU: time the cpp backend against torch (float32)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    if args.cpu:
        return cpu_main(args.out)
    if not torch.cuda.is_available() and not args.smoke:
        print("bench_ops.py times CUDA kernels and needs a CUDA GPU; none is visible here. Use --cpu to time the "
              "CPU kernels, --smoke to check that the script runs (CPU, Triton interpreter, no timings).",
              file=sys.stderr)
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
