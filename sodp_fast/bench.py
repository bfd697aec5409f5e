"""Sampler throughput benchmark: ``sodp bench sampler`` and ``benchmarks/bench_sampler.py`` (same code).

Samples/s and latency of a whole S-step DDIM chain (U-Net forwards, steps, log-probs) per batch size and U-Net
preset, for these variants side by side in one run:

  eager                    the PyTorch reference (torch ops, one Python-driven launch after another)
  diffusers                our U-Net driven by diffusers' DDIMScheduler (the Diffusion Policy / LeRobot way;
                           no log-probs; only when ``diffusers`` is installed)
  compile[-MODE]           torch.compile(U-Net) in the eager chain loop: default mode (on CPU inductor's C++ code),
                           reduce-overhead, max-autotune
  ours / ours-cpp / ours-triton / ours-cuda
                           fused ops (+ the CUDA-graph-captured chain on CUDA: ``GraphedSampler``); the suffix picks
                           the backend of ``ddim_step`` and of the U-Net's FiLM epilogues ("ours" = auto)

Every variant runs at the same precision (``--precision``; bf16 autocast for the U-Net on CUDA by default,
latents and log-probs float32). Compile and capture happen before timing and are reported as ``setup_s``.
Throughput is also given as FLOP/s against a bf16 matmul peak measured in the same run, FLOPs counted from the
U-Net's conv / linear shapes (``unet_flops``). Every row gives its samples/s ratio to eager in the same cell.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from sodp_fast.errors import ConfigError, check_fits
from sodp_fast.graphs import GraphedSampler
from sodp_fast.logging import save_figure
from sodp_fast.nn.unet import PRESETS, UNetConfig, preset
from sodp_fast.ops import dispatch
from sodp_fast.options import parser_for
from sodp_fast.policy import DiffusionPlanner, PlannerConfig
from sodp_fast.train.run import RunFolder
from sodp_fast.train.runtime import resolve_device

VARIANTS = ("eager", "diffusers", "compile", "compile-reduce-overhead", "compile-max-autotune", "ours", "ours-cpp",
            "ours-triton", "ours-cuda")
GPU_VARIANTS = tuple(v for v in VARIANTS if v not in ("compile", "ours-cpp"))
CPU_VARIANTS = ("eager", "compile", "ours-cpp")
OURS_BACKEND = {"ours": "auto", "ours-cpp": "cpp", "ours-triton": "triton", "ours-cuda": "cuda"}
GPU_BATCHES, CPU_BATCHES = (1, 8, 32, 256, 1024, 4096), (1, 8, 32, 256)
# the sampler's speed targets, checked on the default U-Net (GPU only)
TARGET_BATCH_SMALL, TARGET_VS_EAGER, TARGET_VS_COMPILE = 32, 5.0, 3.0
TARGET_BATCH_LARGE, TARGET_ROOFLINE = 4096, 0.5


# ---- FLOP count ------------------------------------------------------------------------------------------------
def unet_flops(config: UNetConfig, horizon: int, action_dim: int, cond_dim: int) -> int:
    """FLOPs (2 × multiply-adds) of one ConditionalUnet1D forward for ONE sample: every Conv1d, ConvTranspose1d
    and Linear, walked in the order of ``ConditionalUnet1D.__init__``. GroupNorm, Mish, FiLM and adds are left
    out (< 1 % at the default widths). Default U-Net, A = 4, cond = 78: 5.31 M + 18.16 M·Tp multiply-adds."""
    ks, dsed = config.kernel_size, config.step_embed_dim
    film_dim = dsed + cond_dim

    def conv(c_in, c_out, k, t_out):
        return c_in * c_out * k * t_out

    def res_block(c_in, c_out, t):
        macs = conv(c_in, c_out, ks, t) + conv(c_out, c_out, ks, t) + film_dim * 2 * c_out
        return macs + (conv(c_in, c_out, 1, t) if c_in != c_out else 0)

    macs = dsed * 4 * dsed * 2  # step-embedding MLP
    dims = (action_dim, *config.down_dims)
    pairs = list(zip(dims[:-1], dims[1:]))
    t = horizon
    for i, (c_in, c_out) in enumerate(pairs):
        macs += res_block(c_in, c_out, t) + res_block(c_out, c_out, t)
        if i < len(pairs) - 1:  # Conv1d(k=3, stride=2, padding=1)
            t = (t + 1) // 2
            macs += conv(c_out, c_out, 3, t)
    macs += 2 * res_block(dims[-1], dims[-1], t)
    for c_in, c_out in reversed(pairs[1:]):
        macs += res_block(2 * c_out, c_in, t) + res_block(c_in, c_in, t)
        macs += conv(c_in, c_in, 4, t)  # ConvTranspose1d(k=4, stride=2): every input column feeds 4 outputs
        t *= 2
    macs += conv(dims[1], dims[1], ks, t) + conv(dims[1], action_dim, 1, t)
    return 2 * macs


# ---- measurement helpers -----------------------------------------------------------------------------------------
def nvtx_range(name: str):
    """An NVTX range so Nsight Systems shows the phase (``nvtx`` package; a no-op context without it)."""
    try:
        import nvtx
    except ImportError:
        return contextlib.nullcontext()
    return nvtx.annotate(name)


@contextlib.contextmanager
def default_backend(name: str):
    """Set the dispatch default (the backend of the U-Net's fused epilogue) for one variant."""
    previous = dispatch._default_backend
    dispatch.set_default_backend(name)
    try:
        yield
    finally:
        dispatch.set_default_backend(previous)


def time_calls(fn, device: torch.device, min_reps: int, max_reps: int, min_time: float) -> list[float]:
    """Seconds per call: device events on CUDA (no host sync inside the loop), a host clock on CPU."""
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def measure_bf16_peak(device: torch.device, n: int = 8192, reps: int = 20) -> float | None:
    """Achieved FLOP/s of an n³ bf16 matmul on random data (median of ``reps``); None off CUDA."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = time_calls(lambda: a @ b, device, reps, reps, 0.0)
    return 2 * n**3 / statistics.median(times)


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "triton": dispatch.triton.__version__ if dispatch.triton else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    info["backends"] = dispatch.describe_backends()
    return info


# ---- variants: each builds a callable obs -> samples, or raises Unavailable ---------------------------------
class Unavailable(Exception):
    """A variant that cannot run here (library missing, backend absent); the reason goes in the report."""


def _diffusers_fn(planner, autocast_dtype):
    try:
        from diffusers import DDIMScheduler
    except ImportError as e:
        raise Unavailable("diffusers not installed") from e
    c = planner.config
    sched = DDIMScheduler(num_train_timesteps=c.num_timesteps, trained_betas=planner.schedule.betas.numpy(),
                          clip_sample=c.clip is not None, clip_sample_range=c.clip or 1.0, set_alpha_to_one=True,
                          prediction_type="epsilon", timestep_spacing="trailing")
    sched.set_timesteps(c.ddim_steps)
    dev = next(planner.parameters()).device
    ctx = (lambda: torch.autocast("cuda", dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext

    @torch.no_grad()
    def run(obs):
        cond = planner.encode_obs(obs)
        x = torch.randn(obs.shape[0], *planner.action_shape, device=dev)
        with ctx():
            for t in sched.timesteps:
                eps = planner.model(x, torch.full((obs.shape[0],), int(t), device=dev), cond).float()
                x = sched.step(eps, t, x, eta=c.eta).prev_sample
        return x

    return run


def build_variant(name: str, planner: DiffusionPlanner, batch: int, autocast_dtype, compiled: dict):
    """(callable obs -> output, default-backend name it must run under). ``compiled`` keeps one
    torch.compile'd U-Net per mode across batch sizes, as a user would: dynamo compiles the first shape, then
    once more with a dynamic batch dimension, and reduce-overhead records a CUDA graph per shape."""
    dev = next(planner.parameters()).device
    if name == "eager":
        return GraphedSampler(planner, [batch], backend="torch", autocast_dtype=autocast_dtype).eager, "torch"
    if name == "diffusers":
        return _diffusers_fn(planner, autocast_dtype), "torch"
    if name.startswith("compile"):
        if name not in compiled:
            compiled[name] = torch.compile(planner.model, mode=name[len("compile-"):] or None)
        return GraphedSampler(planner, [batch], backend="torch", autocast_dtype=autocast_dtype,
                              model=compiled[name]).eager, "torch"
    if name in OURS_BACKEND:
        backend = OURS_BACKEND[name]
        try:
            dispatch.resolve("ddim_step", backend, dev)
        except (RuntimeError, KeyError) as e:
            raise Unavailable(str(e)) from e
        with default_backend(backend):
            gs = GraphedSampler(planner, [batch], backend=backend, autocast_dtype=autocast_dtype).capture()
        if dev.type == "cuda" and not gs.use_graphs:
            raise Unavailable("CUDA-graph capture failed (see the warning above)")
        return gs, backend
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


# ---- the run ---------------------------------------------------------------------------------------------------
def _csv(s: str, conv=str) -> list:
    return [conv(v.strip()) for v in s.split(",") if v.strip()]


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch-sizes", default=None,
                   help=f"comma list (default: {','.join(map(str, GPU_BATCHES))} on CUDA, "
                   f"{','.join(map(str, CPU_BATCHES))} on CPU)")
    p.add_argument("--presets", default=None, help=f"U-Net presets {sorted(PRESETS)} (default: default,tiny on "
                   "CUDA, tiny,small on CPU)")
    p.add_argument("--variants", default=None, help=f"comma list of {', '.join(VARIANTS)} "
                   f"(default: {','.join(GPU_VARIANTS)} on CUDA, {','.join(CPU_VARIANTS)} on CPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="U-Net precision for every variant (auto: bf16 autocast on CUDA, fp32 on CPU)")
    p.add_argument("--min-time", type=float, default=None, help="seconds timed per cell at least (default 1 on "
                   "CUDA, 0.2 on CPU)")
    p.add_argument("--min-reps", type=int, default=None, help="calls timed per cell at least (default 5 on CUDA, "
                   "3 on CPU)")
    p.add_argument("--max-reps", type=int, default=200)
    p.add_argument("--out", default=None, help="folder for sampler.json, sampler.png and sampler.log")


def run_sampler(args: argparse.Namespace) -> dict:
    dev = resolve_device(args.device or "auto")
    on_gpu = dev.type == "cuda"
    try:
        batches = (_csv(args.batch_sizes, parser_for(int)) if args.batch_sizes
                   else list(GPU_BATCHES if on_gpu else CPU_BATCHES))
    except ValueError:
        raise ConfigError(f"--batch-sizes must be a comma list of integers, not {args.batch_sizes!r}") from None
    presets = _csv(args.presets) if args.presets else (["default", "tiny"] if on_gpu else ["tiny", "small"])
    variants = _csv(args.variants) if args.variants else list(GPU_VARIANTS if on_gpu else CPU_VARIANTS)
    if bad := [v for v in variants if v not in VARIANTS]:
        raise ConfigError(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    if bad := [name for name in presets if name not in PRESETS]:
        raise ConfigError(f"unknown U-Net preset {bad[0]!r}; choose from {', '.join(sorted(PRESETS))}")
    if not batches or min(batches) < 1:
        raise ConfigError(f"--batch-sizes must be positive, got {batches}")
    check_fits(max(batches) * 4 * 2 * 12 * 4 * 11, f"a batch of {max(batches):,} chains")
    if (args.min_reps is not None and args.min_reps < 1) or args.max_reps < (args.min_reps or 1) or (
            args.min_time is not None and args.min_time < 0):
        raise ConfigError("need 1 <= --min-reps <= --max-reps and --min-time >= 0")
    precision = args.precision if args.precision != "auto" else ("bf16" if on_gpu else "fp32")
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if autocast_dtype is not None and not on_gpu:
        raise ConfigError("--precision bf16 needs CUDA (autocast on CPU is not what is measured here)")
    min_time = args.min_time if args.min_time is not None else (1.0 if on_gpu else 0.2)
    min_reps = args.min_reps if args.min_reps is not None else (5 if on_gpu else 3)
    folder = RunFolder(args.out).open() if args.out else None
    out = folder.path if folder else None
    log_file = open(out / "sampler.log", "w", buffering=1) if out else None  # line-buffered raw log

    def say(line: str = "") -> None:
        print(line, flush=True)
        if log_file:
            print(line, file=log_file)

    info = device_info(dev)
    say(f"sodp bench sampler: {info['name']}  torch {info['torch']}  triton {info['triton']}  precision {precision}")
    say(f"command: {' '.join(sys.argv)}")
    with nvtx_range("bf16 matmul peak"):
        peak = measure_bf16_peak(dev)
    say(f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s" if peak else
        "bf16 matmul peak: not measured (CPU run: FLOP/s fractions are not reported)")

    rows = []
    for pname in presets:
        torch.manual_seed(0)
        planner = DiffusionPlanner(PlannerConfig(unet=preset(pname))).to(dev).eval()
        c = planner.config  # FLOPs of one sample's chain; the DDIM steps themselves are negligible
        flops = c.ddim_steps * unet_flops(c.unet, c.horizon, c.action_dim, c.n_obs_steps * c.obs_dim)
        compiled: dict = {}
        torch._dynamo.reset()  # drop the previous preset's compiled graphs
        say(f"\npreset {pname}: {sum(p.numel() for p in planner.parameters()) / 1e6:.2f} M params, "
            f"{flops / 1e9:.3f} GFLOP per sample per {planner.config.ddim_steps}-step chain")
        say(f"{'variant':<26}{'batch':>6}{'latency ms':>12}{'samples/s':>12}{'TFLOP/s':>9}{'of peak':>9}"
            f"{'setup s':>9}{'x eager':>9}")
        for b in batches:
            obs = torch.randn(b, planner.config.n_obs_steps, planner.config.obs_dim, device=dev)
            for v in variants:
                row = {"preset": pname, "variant": v, "batch": b, "flops_per_sample": flops}
                try:
                    with nvtx_range(f"{pname}/{v}/b{b}/setup"):
                        t0 = time.perf_counter()
                        fn, backend = build_variant(v, planner, b, autocast_dtype, compiled)
                        with default_backend(backend):
                            fn(obs)  # first call: compilation (torch.compile) or lazy init, timed as setup
                            if on_gpu:
                                torch.cuda.synchronize()
                        row["setup_s"] = time.perf_counter() - t0
                    with default_backend(backend):
                        with nvtx_range(f"{pname}/{v}/b{b}/warmup"):
                            for _ in range(2):
                                fn(obs)
                        with nvtx_range(f"{pname}/{v}/b{b}/timed"):
                            times = time_calls(lambda: fn(obs), dev, min_reps, args.max_reps, min_time)
                except Unavailable as e:
                    row["skipped"] = str(e)
                    rows.append(row)
                    say(f"{v:<26}{b:>6}  skipped: {e}")
                    continue
                lat = statistics.median(times)
                row.update(latency_ms=lat * 1e3, latency_ms_p10=_quantile(times, 0.1) * 1e3,
                           latency_ms_p90=_quantile(times, 0.9) * 1e3, reps=len(times), samples_per_s=b / lat,
                           flops_per_s=flops * b / lat, frac_of_peak=flops * b / lat / peak if peak else None)
                eager = next((r for r in rows if (r["preset"], r["variant"], r["batch"]) == (pname, "eager", b)
                              and "samples_per_s" in r), None)
                row["vs_eager"] = row["samples_per_s"] / eager["samples_per_s"] if eager else None
                rows.append(row)
                frac = f"{row['frac_of_peak']:>9.1%}" if peak else f"{'-':>9}"
                vs = f"{row['vs_eager']:>9.2f}" if eager else f"{'-':>9}"
                say(f"{v:<26}{b:>6}{row['latency_ms']:>12.3f}{row['samples_per_s']:>12.1f}"
                    f"{row['flops_per_s'] / 1e12:>9.3f}{frac}{row['setup_s']:>9.1f}{vs}")
        del planner
        if on_gpu:
            torch.cuda.empty_cache()

    ratios = speedups(rows)
    say("\nspeed-ups (samples/s ratio; best 'ours' variant over each baseline)")
    for r in ratios:
        say(f"  {r['preset']:<8} batch {r['batch']:>5}: {r['ours']} / {r['baseline']} = {r['ratio']:.2f}x")
    targets = check_targets(rows, ratios, on_gpu)
    say("\ntargets (default U-Net, GPU):")
    for t in targets:
        say(f"  {t['status']:<4} {t['what']}: {t['detail']}")
    result = {"benchmark": "sampler", "info": info, "precision": precision, "peak_bf16_flops": peak,
              "command": sys.argv, "rows": rows, "speedups": ratios, "targets": targets}
    if folder:
        folder.write_json("sampler.json", result)
        plot(rows, out / "sampler.png", f"{info['name']} ({precision})")
        say(f"\nwrote {out / 'sampler.json'}, {out / 'sampler.png'}, {out / 'sampler.log'}")
        folder.close()
        log_file.close()
    return result


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def speedups(rows: list[dict]) -> list[dict]:
    """Per (preset, batch): the fastest 'ours' variant over every measured non-ours variant."""
    done = [r for r in rows if "samples_per_s" in r]
    out = []
    for key in sorted({(r["preset"], r["batch"]) for r in done}):
        cell = [r for r in done if (r["preset"], r["batch"]) == key]
        ours = [r for r in cell if r["variant"] in OURS_BACKEND]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["samples_per_s"])
        for base in cell:
            if base["variant"] not in OURS_BACKEND:
                out.append({"preset": key[0], "batch": key[1], "ours": best["variant"], "baseline": base["variant"],
                            "ratio": best["samples_per_s"] / base["samples_per_s"]})
    return out


def check_targets(rows: list[dict], ratios: list[dict], on_gpu: bool) -> list[dict]:
    """PASS / MISS / N/A lines for the three targets (N/A: not measured in this run, or a CPU run)."""
    def ratio(batch, baselines):
        rs = [r for r in ratios if r["preset"] == "default" and r["batch"] == batch and r["baseline"] in baselines]
        return min(rs, key=lambda r: r["ratio"]) if rs else None  # against the strongest baseline measured

    def line(what, value, goal, fmt):
        if not on_gpu:
            return {"what": what, "status": "N/A", "detail": "CPU run: GPU targets are not evaluated"}
        if value is None:
            return {"what": what, "status": "N/A", "detail": "not measured in this run"}
        return {"what": what, "status": "PASS" if value >= goal else "MISS", "value": value, "goal": goal,
                "detail": f"{fmt(value)} (goal >= {fmt(goal)})"}

    vs_eager = ratio(TARGET_BATCH_SMALL, {"eager"})
    vs_compile = ratio(TARGET_BATCH_SMALL, {"compile", "compile-reduce-overhead", "compile-max-autotune"})
    large = [r for r in rows if r["preset"] == "default" and r["batch"] == TARGET_BATCH_LARGE
             and r["variant"] in OURS_BACKEND and r.get("frac_of_peak") is not None]
    roof = max((r["frac_of_peak"] for r in large), default=None)
    x = lambda v: f"{v:.2f}x"  # noqa: E731
    return [line(f"batch {TARGET_BATCH_SMALL}: ours vs eager", vs_eager and vs_eager["ratio"], TARGET_VS_EAGER, x),
            line(f"batch {TARGET_BATCH_SMALL}: ours vs torch.compile (best mode)",
                 vs_compile and vs_compile["ratio"], TARGET_VS_COMPILE, x),
            line(f"batch {TARGET_BATCH_LARGE}: ours of the bf16 matmul peak", roof, TARGET_ROOFLINE,
                 lambda v: f"{v:.1%}")]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "samples_per_s" in r]
    presets = sorted({r["preset"] for r in done})
    if not presets:
        return
    fig, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4.5), squeeze=False)
    for ax, pname in zip(axes[0], presets):
        for v in VARIANTS:
            pts = sorted((r["batch"], r["samples_per_s"]) for r in done if r["preset"] == pname and r["variant"] == v)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=v)
        ax.set(xscale="log", yscale="log", xlabel="batch (chains)", ylabel="samples/s", title=f"U-Net {pname}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, f"DDIM chain throughput, {title}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="DDIM sampler throughput: eager vs diffusers vs torch.compile vs "
                                "fused ops + CUDA graph")
    add_sampler_args(p)
    run_sampler(p.parse_args(argv))
    return 0
