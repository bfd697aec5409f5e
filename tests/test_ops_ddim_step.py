"""Fused DDIM step / log-prob: Triton (CPU interpreter or GPU) against the float64 PyTorch reference."""
import pytest
import torch

from sodp_fast.diffusion.ddim import DDIMSampler
from sodp_fast.diffusion.schedule import NoiseSchedule
from sodp_fast.nn.unet import PRESETS, ConditionalUnet1D
from sodp_fast.ops import dispatch
from sodp_fast.ops.ddim_step import ddim_logprob, ddim_step

needs_triton = pytest.mark.skipif(not dispatch.backend_present("triton"), reason="triton not usable here")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SAMPLER = DDIMSampler(NoiseSchedule(100), num_steps=10)


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def strided(t, dtype, device):
    """Same values as ``t`` [N, D], laid out as a non-contiguous view (rows of a transposed buffer, stride 2)."""
    buf = torch.empty(t.shape[1], 2 * t.shape[0], dtype=dtype, device=device)
    view = buf.t()[::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


def draw(n, d, per_row, seed, dtype):
    """Inputs on the forward process's scale: x = √ᾱ·x0 + √(1−ᾱ)·ε with |x0| up to 1.5 (so clip=1 binds for
    some entries) and ε̂ = ε + 0.3·noise. Rounded to ``dtype`` first, so the float64 reference sees the same
    values as the kernel. (Random x, ε̂ unrelated to each other give |x̂0| ≈ 2e3 at the first step, where float32
    itself — any backend — loses ~4 digits of the mean.)"""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(0, SAMPLER.num_steps, (n,), generator=g)
    coef = SAMPLER.coef[steps] if per_row else SAMPLER.coef[int(steps[0])].expand(n, -1)
    x0 = 3 * torch.rand(n, d, generator=g, dtype=torch.float64) - 1.5
    eps_true, noise = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
    x = coef[:, 5:6] * x0 + coef[:, 1:2] * eps_true
    eps = eps_true + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x, eps, noise = (t.to(dtype).double() for t in (x, eps, noise))
    return x, eps, noise, coef if per_row else coef[0]


CASES = [(7, 44, True, 1.0), (7, 44, False, None), (33, 48, True, None), (5, 48, False, 1.0)]


def check_step(n, d, per_row, clip, device, dtype, tol, with_noise=True):
    seed = torch.seed() % 2**31
    x, eps, noise, coef = draw(n, d, per_row, seed, dtype)
    ref_x, ref_logp = dispatch.get("ddim_step", "torch")(x, eps, noise if with_noise else None, coef, clip)
    fn = dispatch.get("ddim_step", "triton", device)
    out_x, out_logp = fn(strided(x, dtype, device), strided(eps, dtype, device),
                         strided(noise, dtype, device) if with_noise else None, coef.to(device), clip)
    assert torch.isfinite(out_x).all() and torch.isfinite(out_logp).all(), f"unwritten/NaN output (seed {seed})"
    assert rel(out_x, ref_x) < tol, f"x_prev {rel(out_x, ref_x):.2e} (seed {seed})"
    assert rel(out_logp, ref_logp) < tol, f"logp {rel(out_logp, ref_logp):.2e} (seed {seed})"


def check_logprob(n, d, per_row, clip, device, dtype, tol, grad_kind):
    seed = torch.seed() % 2**31
    x, eps, noise, coef = draw(n, d, per_row, seed, dtype)
    x_prev = dispatch.get("ddim_step", "torch")(x, eps, noise, coef, clip)[0] + 0.1 * torch.randn_like(x)
    x_prev = x_prev.to(dtype).double()
    w = torch.randn(n, dtype=torch.float64)

    def reduce(logp):  # "sum" hands the backward a stride-0 gradient
        return logp.sum() if grad_kind == "sum" else (logp * w.to(logp)).sum()

    eps_ref = eps.clone().requires_grad_()
    ref = dispatch.get("ddim_logprob", "torch")(x, eps_ref, x_prev, coef, clip)
    reduce(ref).backward()
    eps_t = strided(eps, dtype, device).requires_grad_()
    out = dispatch.get("ddim_logprob", "triton", device)(strided(x, dtype, device), eps_t,
                                                        strided(x_prev, dtype, device), coef.to(device), clip)
    reduce(out).backward()
    # The same computation in PyTorch at ``dtype``: the error float32 itself makes on these inputs.
    eps_low = eps.to(device=device, dtype=dtype).requires_grad_()
    low = dispatch.get("ddim_logprob", "torch")(x.to(device=device, dtype=dtype), eps_low,
                                               x_prev.to(device=device, dtype=dtype), coef.to(device), clip)
    reduce(low).backward()
    assert torch.isfinite(out).all() and torch.isfinite(eps_t.grad).all(), f"unwritten output (seed {seed})"
    assert rel(out, ref) < max(tol, 2 * rel(low, ref)), f"logp {rel(out, ref):.2e} (seed {seed})"
    grad_tol = max(tol, 2 * rel(eps_low.grad, eps_ref.grad))
    assert rel(eps_t.grad, eps_ref.grad) < grad_tol, f"grad {rel(eps_t.grad, eps_ref.grad):.2e} (seed {seed})"


@needs_triton
@pytest.mark.parametrize("n,d,per_row,clip", CASES)
def test_step_matches_float64_reference(n, d, per_row, clip, poison_empty):
    check_step(n, d, per_row, clip, "cpu", torch.float32, 1e-5)


@needs_triton
def test_step_without_noise(poison_empty):
    check_step(7, 44, True, 1.0, "cpu", torch.float32, 1e-5, with_noise=False)


@needs_triton
@pytest.mark.parametrize("n,d,per_row,clip", CASES)
@pytest.mark.parametrize("grad_kind", ["weighted", "sum"])
def test_logprob_and_grad_match_float64_reference(n, d, per_row, clip, grad_kind, poison_empty):
    check_logprob(n, d, per_row, clip, "cpu", torch.float32, 1e-5, grad_kind)


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("n,d", [(7, 44), (4096, 48), (2560, 48)])
def test_gpu_matches_reference(n, d, dtype, tol, poison_empty):
    check_step(n, d, True, 1.0, "cuda", dtype, tol)
    check_logprob(n, d, True, 1.0, "cuda", dtype, tol, "weighted")


@needs_triton
def test_public_wrappers_shape_and_grad_guard():
    x, eps, noise = (torch.randn(3, 12, 4) for _ in range(3))
    x_prev, logp = ddim_step(x, eps, noise, SAMPLER.coef[2].float(), backend="triton")
    assert x_prev.shape == x.shape and logp.shape == (3,) and logp.dtype == torch.float32
    lp = ddim_logprob(x, eps, x_prev, SAMPLER.coef[2].float(), backend="triton")
    torch.testing.assert_close(lp, logp)
    with pytest.raises(RuntimeError, match="eps only"):
        ddim_logprob(x.requires_grad_(), eps, x_prev, SAMPLER.coef[2].float(), backend="triton")


@needs_triton
def test_sampler_and_chain_log_prob_triton_match_torch(monkeypatch):
    """The whole stack (tiny U-Net epilogues + DDIM steps) on triton vs torch: chains, log-probs, PPO grads.

    Two denoising steps keep the interpreter under ~10 s (each epilogue program costs ~15 ms there)."""
    sampler = DDIMSampler(NoiseSchedule(100), num_steps=2)
    torch.manual_seed(torch.seed() % 2**31)
    model = ConditionalUnet1D(4, 6, PRESETS["tiny"])
    cond, x_init = torch.randn(2, 6), torch.randn(2, 4, 4)
    noise = torch.randn(2, sampler.num_steps, 4, 4)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setattr(dispatch, "_default_backend", backend)  # the U-Net's epilogues use the default
        chain = sampler.sample(model, cond, (4, 4), x_init=x_init, noise=noise, backend=backend)
        model.zero_grad()
        logp = sampler.chain_log_prob(model, cond, chain.latents, backend=backend)
        logp.sum().backward()
        results[backend] = (chain.latents, chain.log_probs, logp.detach(),
                            torch.cat([p.grad.flatten() for p in model.parameters()]))
    for name, a, b in zip(("latents", "log_probs", "chain_log_prob", "param grads"), results["triton"],
                          results["torch"]):
        assert rel(a, b) < 1e-4, f"{name}: {rel(a, b):.2e}"
