"""The compiled CUDA extension (csrc/): it builds and fails cleanly without a GPU (runs here when nvcc is
present); its ops equal float64 references, forward and backward (GPU only).

Tolerances are ‖out − ref‖/‖ref‖ against float64 references computed on the same (dtype-rounded) inputs:
fp32 1e-5; bf16 1e-2 (outputs rounded to bf16).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sodp_fast.diffusion.ddim import DDIMSampler
from sodp_fast.diffusion.schedule import NoiseSchedule
from sodp_fast.ops import _cuda, dispatch
from sodp_fast.ops.ddim_step import ddim_logprob, ddim_logprob_torch, ddim_step, ddim_step_torch
from sodp_fast.ops.ppo_loss import ppo_clip_loss, ppo_loss_torch

REPO = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available() and _cuda.available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device and the built extension")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
EXPORTS = {"ddim_step", "ddim_logprob", "ddim_logprob_backward", "ppo_workspace_floats", "ppo_loss_forward",
           "ppo_loss_backward", "film_epilogue_forward", "film_epilogue_backward"}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all(), "non-finite output (an element left unwritten?)"
    return ((out - ref).norm() / ref.norm().clamp(min=1e-300)).item()


# ---- builds and fails cleanly (runs on the CPU machine) ----------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"), reason="nvcc not found")
def test_extension_builds_and_raises_without_gpu(tmp_path):
    env = dict(os.environ, SODP_CUDA_ARCHS="80")  # one architecture keeps the build quick
    env.pop("SODP_NO_CUDA", None)

    def build_ext(env):
        build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "-j", str(os.cpu_count()),
                                "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
                               cwd=REPO, env=env, capture_output=True, text=True)
        assert build.returncode == 0, f"setup.py build_ext failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
        return sorted(p.name.split(".")[0] for p in (tmp_path / "lib" / "sodp_fast").glob("*.so"))

    assert build_ext(env) == ["_cpu_ext", "_cuda_ext"]
    so = next((tmp_path / "lib" / "sodp_fast").glob("_cuda_ext*.so"))
    spec = importlib.util.spec_from_file_location("sodp_fast._cuda_ext", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert EXPORTS <= set(dir(mod))
    assert mod.ppo_workspace_floats() > 3
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            mod.ppo_loss_forward(0, 0, 0, 5, 0.2, 0, 0, 0, 0)
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            mod.ddim_logprob(0, 0, 0, 0, 0, 0, 3, 48, 1.0, 0, 0)
    # a later build without CUDA into the same build folder must not ship the earlier _cuda_ext
    assert build_ext(dict(env, SODP_NO_CUDA="1")) == ["_cpu_ext"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_cuda_backend_is_registered_but_unavailable_on_cpu():
    x = torch.randn(3, 8)
    for op in ("ddim_logprob", "ppo_loss", "ddim_step"):
        with pytest.raises(RuntimeError, match="not available here"):
            dispatch.resolve(op, "cuda", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="not available here"):
        ddim_logprob(x, x, x, torch.rand(6), backend="cuda")
    assert dispatch.resolve("ppo_loss", "auto", torch.device("cpu")) in dispatch.AUTO_PREFERENCE["cpu"]
    if _cuda.available():
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            _cuda.ext().ddim_step(0, 0, 0, 0, 0, 0, 0, 3, 48, 1.0, 0, 0)


# ---- numerics against float64 references (GPU) ----------------------------------------------------------------
def _coef(n: int, per_row: bool) -> torch.Tensor:
    """Real sampler coefficients (σ floored at 0.1) at random steps: c0 spans 1 … ~2e3, so x̂0 clips often."""
    coef = DDIMSampler(NoiseSchedule(100)).coef.float()
    return coef[torch.randint(0, coef.shape[0], (n,))] if per_row else coef[torch.randint(0, coef.shape[0], (1,))][0]


SHAPES = [(1, 48), (37, 48), (129, 5), (1003, 97)]


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("clip", [1.0, None])
def test_ddim_step_matches_reference(dtype, n, d, per_row, clip, poison_empty):
    x, eps, noise = (torch.randn(n, d, device="cuda").to(dtype) for _ in range(3))
    coef = _coef(n, per_row).cuda()
    for z in (noise, None):
        out, logp = ddim_step(x, eps, z, coef, clip, backend="cuda")
        ref, _ = ddim_step_torch(x.double(), eps.double(), None if z is None else z.double(), coef.double(), clip)
        assert out.dtype == dtype and rel_err(out, ref) < TOL[dtype]
        # the reported log-prob is that of the stored (rounded) x_prev: fp32 accuracy for either dtype
        ref_lp = ddim_logprob_torch(x.double(), eps.double(), out.double(), coef.double(), clip)
        if z is not None:
            assert rel_err(logp, ref_lp) < 1e-5


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("clip", [1.0, None])
def test_ddim_logprob_forward_backward(dtype, n, d, per_row, clip, poison_empty):
    x, x_prev = (torch.randn(n, d, device="cuda").to(dtype) for _ in range(2))
    eps = torch.randn(n, d, device="cuda").to(dtype).requires_grad_()
    coef = _coef(n, per_row).cuda()
    logp = ddim_logprob(x, eps, x_prev, coef, clip, backend="cuda")
    g = torch.randn(n, device="cuda")
    (grad,) = torch.autograd.grad(logp, eps, g)

    eps64 = eps.detach().double().requires_grad_()
    ref = ddim_logprob_torch(x.double(), eps64, x_prev.double(), coef.double(), clip)
    (ref_grad,) = torch.autograd.grad(ref, eps64, g.double())
    assert logp.dtype == torch.float32 and rel_err(logp, ref) < 1e-5  # fp32 arithmetic on exact inputs
    assert grad.dtype == dtype and rel_err(grad, ref_grad) < TOL[dtype]


@gpu
def test_ddim_logprob_refuses_gradients_it_does_not_compute():
    x = torch.randn(4, 48, device="cuda", requires_grad=True)
    with pytest.raises(RuntimeError, match="eps only"):
        ddim_logprob(x, torch.randn(4, 48, device="cuda"), torch.randn(4, 48, device="cuda"), _coef(4, True).cuda(),
                     backend="cuda")


def _ppo_inputs(n: int, dtype, clip_eps: float):
    """Log-ratios ~ N(0, 0.3) kept ≥ 1e-3 away from the clip band's edges, where the loss's gradient jumps (a
    row there could land on either side in fp32 and in fp64)."""
    new = torch.randn(n, device="cuda", dtype=torch.float64)
    old = new - 0.3 * torch.randn(n, device="cuda", dtype=torch.float64)
    near = ((new - old).exp() - 1).abs().sub(clip_eps).abs() < 1e-3
    old = torch.where(near, old + 0.01, old)
    adv = torch.randn(n, device="cuda", dtype=torch.float64)
    return new.to(dtype), old.to(dtype), adv.to(dtype)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 7, 2560, 100_003])  # 100 003 > 256 blocks × 256 threads: grid-stride path
def test_ppo_loss_forward_backward(dtype, n, poison_empty):
    clip_eps = 0.2
    new, old, adv = _ppo_inputs(n, dtype, clip_eps)
    new.requires_grad_()
    loss, clip_frac, approx_kl = ppo_clip_loss(new, old, adv, clip_eps, backend="cuda")
    g = torch.randn((), device="cuda")
    (grad,) = torch.autograd.grad(loss, new, g.to(loss.dtype))

    new64 = new.detach().double().requires_grad_()
    ref_loss, ref_clip, ref_kl = ppo_loss_torch(new64, old.double(), adv.double(), clip_eps)
    (ref_grad,) = torch.autograd.grad(ref_loss, new64, g.to(loss.dtype).double())
    assert loss.dtype == dtype and not clip_frac.requires_grad and not approx_kl.requires_grad
    assert rel_err(loss, ref_loss) < TOL[dtype]
    assert rel_err(approx_kl, ref_kl) < TOL[dtype]
    assert abs(clip_frac.double().item() - ref_clip.item()) <= TOL[dtype] + 1e-7
    assert grad.dtype == dtype and rel_err(grad, ref_grad) < TOL[dtype]


@gpu
def test_ppo_loss_is_graph_capturable():
    """The forward's scratch counter is reset by a memset inside the launch, so replays stay correct."""
    new, old, adv = _ppo_inputs(5000, torch.float32, 0.2)
    static = new.clone()
    ppo_clip_loss(static, old, adv, 0.2, backend="cuda")  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ppo_clip_loss(static, old, adv, 0.2, backend="cuda")
    for _ in range(3):
        static.copy_(new + 0.05 * torch.randn_like(new))
        graph.replay()
        ref = ppo_loss_torch(static.double(), old.double(), adv.double(), 0.2)
        for o, r in zip(out, ref):
            assert rel_err(o, r) < 1e-5
