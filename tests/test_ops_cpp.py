"""The "cpp" backend (compiled CPU kernels, csrc/cpu/) against float64 references, forward and backward.

Shapes are drawn fresh every run (the seed is in every assertion message): odd N and D, D = Tp·A with
Tp ∈ {8, 12, 16}, channel counts that are not powers of two, odd T, and non-contiguous inputs. Tolerance:
‖out − ref‖/‖ref‖ < 1e-5 (float32), or twice PyTorch's own float32 error where float32 itself is
ill-conditioned (DDIM without the x̂0 clip, see ``sodp_fast/ops/ddim_step.py``).
"""
import pytest
import torch
from test_ops_ppo_loss import scalar_err

from sodp_fast.diffusion.ddim import DDIMSampler
from sodp_fast.diffusion.schedule import NoiseSchedule
from sodp_fast.nn.unet import PRESETS, ConditionalUnet1D
from sodp_fast.ops import _cpp, dispatch
from sodp_fast.ops.ddim_step import ddim_logprob, ddim_logprob_torch, ddim_step, ddim_step_torch
from sodp_fast.ops.film_epilogue import film_epilogue
from sodp_fast.ops.ppo_loss import ppo_clip_loss

pytestmark = pytest.mark.skipif(not _cpp.available(), reason=f"CPU extension not built: {_cpp.import_error()}")
SAMPLER = DDIMSampler(NoiseSchedule(100), num_steps=10)
TOL = 1e-5


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def seeded():
    seed = torch.seed() % 2**31
    return seed, torch.Generator().manual_seed(seed)


def layout(t, kind):
    """The values of ``t`` [N, D] as float32 in one of three layouts the wrappers must read correctly."""
    t = t.float()
    if kind == "rows":  # rows of a wider buffer: row stride > D, unit inner stride (read in place)
        buf = torch.empty(t.shape[0], t.shape[1] + 3)
        buf[:, : t.shape[1]] = t
        return buf[:, : t.shape[1]]
    if kind == "transposed":  # inner stride ≠ 1 (the wrapper copies)
        return t.t().contiguous().t()
    return t.contiguous()


# ---- DDIM step / log-prob -----------------------------------------------------------------------------------------
def draw_ddim(g, n, d, per_row, eps_err):
    """Inputs on the forward process's scale (as in test_ops_ddim_step.py), rounded to float32, as float64. ε̂ is
    ε + eps_err·noise: 0.3 is a poor predictor (|x̂0| ≫ 1 early in the chain), 1e-3 a good one (x ≈ c1·ε̂, the
    cancellation the kernels' x̂0 is formed to survive)."""
    steps = torch.randint(0, SAMPLER.num_steps, (n,), generator=g)
    coef = SAMPLER.coef[steps] if per_row else SAMPLER.coef[int(steps[0])].expand(n, -1)
    x0 = 3 * torch.rand(n, d, generator=g, dtype=torch.float64) - 1.5
    eps_true, noise = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
    x = coef[:, 5:6] * x0 + coef[:, 1:2] * eps_true
    eps = eps_true + eps_err * torch.randn(n, d, generator=g, dtype=torch.float64)
    x, eps, noise = (t.float().double() for t in (x, eps, noise))
    return x, eps, noise, (coef if per_row else coef[0]).float().double()


def ddim_case(g):
    n = int(torch.randint(1, 40, (1,), generator=g)) | 1
    tp = (8, 12, 16)[int(torch.randint(0, 3, (1,), generator=g))]
    a = int(torch.randint(1, 8, (1,), generator=g))
    return n, tp * a


def ddim_tol(clip, torch_err):
    """1e-5; without the clip, twice PyTorch's own float32 error where that is larger (|x̂0| ≫ 1: the mean is
    large and float32 itself ill-conditioned, see ddim_step.py)."""
    return TOL if clip is not None else max(TOL, 2 * torch_err)


def off_knife_edge(x, eps, coef, clip):
    """Elements whose (float64) x̂0 is more than 1e-6 from ±clip: nearer, the clamp decision, and with it whether
    the gradient passes, is up to the last bit of float32 rounding."""
    if clip is None:
        return torch.ones_like(x)
    c = coef.reshape(-1, 6).expand(x.shape[0], 6)
    x0 = (x - c[:, 1:2] * eps) * c[:, 0:1]
    return ((x0.abs() - clip).abs() > 1e-6).double()


EPS_ERR = [0.3, 1e-3]


@pytest.mark.parametrize("eps_err", EPS_ERR)
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("clip", [1.0, None])
@pytest.mark.parametrize("kind", ["contiguous", "rows", "transposed"])
def test_ddim_step_matches_float64(eps_err, per_row, clip, kind, poison_empty):
    seed, g = seeded()
    n, d = ddim_case(g)
    x, eps, noise, coef = draw_ddim(g, n, d, per_row, eps_err)
    for z in (noise, None):
        ref_x, ref_lp = ddim_step_torch(x, eps, z, coef, clip)
        low_x, low_lp = ddim_step_torch(x.float(), eps.float(), None if z is None else z.float(), coef.float(), clip)
        out_x, out_lp = ddim_step(layout(x, kind), layout(eps, kind), None if z is None else layout(z, kind),
                                  coef.float(), clip, backend="cpp")
        msg = f"(seed {seed}, N={n}, D={d}, noise={z is not None})"
        assert torch.isfinite(out_x).all() and torch.isfinite(out_lp).all(), f"unwritten output {msg}"
        assert rel(out_x, ref_x) < ddim_tol(clip, rel(low_x, ref_x)), f"x_prev {rel(out_x, ref_x):.2e} {msg}"
        assert rel(out_lp, ref_lp) < ddim_tol(clip, rel(low_lp, ref_lp)), f"logp {rel(out_lp, ref_lp):.2e} {msg}"


@pytest.mark.parametrize("eps_err", EPS_ERR)
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("clip", [1.0, None])
@pytest.mark.parametrize("kind", ["contiguous", "rows", "transposed"])
@pytest.mark.parametrize("grad_kind", ["weighted", "sum"])
def test_ddim_logprob_and_grad_match_float64(eps_err, per_row, clip, kind, grad_kind, poison_empty):
    seed, g = seeded()
    n, d = ddim_case(g)
    x, eps, noise, coef = draw_ddim(g, n, d, per_row, eps_err)
    x_prev = (ddim_step_torch(x, eps, noise, coef, clip)[0] + 0.1 * torch.randn(n, d, generator=g,
                                                                                dtype=torch.float64)).float().double()
    w = torch.randn(n, generator=g, dtype=torch.float64)

    def run(x_, eps_, x_prev_, coef_, backend):
        eps_ = eps_.detach().requires_grad_()
        logp = ddim_logprob(x_, eps_, x_prev_, coef_, clip, backend=backend)
        (logp.sum() if grad_kind == "sum" else (logp * w.to(logp)).sum()).backward()  # "sum": stride-0 grad
        return logp.detach(), eps_.grad

    ref, ref_grad = run(x, eps, x_prev, coef, "torch")
    low, low_grad = run(x.float(), eps.float(), x_prev.float(), coef.float(), "torch")
    out, out_grad = run(layout(x, kind), layout(eps, kind), layout(x_prev, kind), coef.float(), "cpp")
    keep = off_knife_edge(x, eps, coef, clip)
    msg = f"(seed {seed}, N={n}, D={d})"
    assert out.dtype == torch.float32 and torch.isfinite(out_grad).all(), f"unwritten output {msg}"
    assert rel(out, ref) < ddim_tol(clip, rel(low, ref)), f"logp {rel(out, ref):.2e} {msg}"
    err, low_err = rel(out_grad * keep, ref_grad * keep), rel(low_grad * keep, ref_grad * keep)
    assert err < ddim_tol(clip, low_err), f"grad {err:.2e} (PyTorch float32: {low_err:.2e}) {msg}"


def test_ddim_guards_and_float64_fallback():
    x, eps, x_prev = (torch.randn(3, 12, 4) for _ in range(3))
    coef = SAMPLER.coef[2].float()
    with pytest.raises(RuntimeError, match="eps only"):
        ddim_logprob(x.clone().requires_grad_(), eps, x_prev, coef, backend="cpp")
    with pytest.raises(RuntimeError, match="no autograd"):
        ddim_step(x, eps.clone().requires_grad_(), None, coef, backend="cpp")
    # float64 runs the reference (the kernels are float32), so it is exact
    x64, eps64, xp64 = x.double(), eps.double(), x_prev.double()
    assert torch.equal(ddim_logprob(x64, eps64, xp64, SAMPLER.coef[2], backend="cpp"),
                       ddim_logprob_torch(x64.flatten(1), eps64.flatten(1), xp64.flatten(1), SAMPLER.coef[2], 1.0))


# ---- PPO loss -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 2561, 2 * 4096 + 3])  # the last: several summation chunks (and threads)
def test_ppo_loss_matches_float64(n, poison_empty):
    seed, g = seeded()
    new = torch.randn(n, 2, generator=g, dtype=torch.float64).float()[:, 0]  # stride 2
    old = (new.double() - 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).float()
    adv = torch.randn(n, 3, generator=g, dtype=torch.float64).float()[:, 1]  # stride 3
    new = new.detach().requires_grad_()
    ref_new = new.detach().double().requires_grad_()
    ref = ppo_clip_loss(ref_new, old.double(), adv.double(), 0.2, backend="torch")
    out = ppo_clip_loss(new, old, adv, 0.2, backend="cpp")
    ref[0].backward()
    out[0].backward()
    for name, err in scalar_err(out, ref, new, old, adv).items():
        assert err < TOL, f"{name}: {err:.2e} (seed {seed})"
    assert rel(new.grad, ref_new.grad) < TOL, f"grad: {rel(new.grad, ref_new.grad):.2e} (seed {seed})"


# ---- FiLM epilogue --------------------------------------------------------------------------------------------------
def film_inputs(g, b, c, t, film, res):
    """float64 leaves for the reference and float32 non-contiguous copies (h transposed, scale/shift halves of one
    [B, 2C] tensor, residual a stride-2 slice) with the same values."""
    h = (3 * torch.randn(b, t, c, generator=g, dtype=torch.float64) + torch.randn(c, generator=g,
                                                                                  dtype=torch.float64))
    h = h.float().double().transpose(1, 2)
    w = (1 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)).float().double()
    bias = (0.5 * torch.randn(c, generator=g, dtype=torch.float64)).float().double()
    ss = torch.randn(b, 2 * c, generator=g, dtype=torch.float64).float().double() if film else None
    r = torch.randn(b, c, 2 * t, generator=g, dtype=torch.float64).float().double()[:, :, ::2] if res else None
    ref = [x.clone().requires_grad_() if x is not None else None for x in (h, w, bias, ss, r)]
    low = [h.float().transpose(1, 2).contiguous().transpose(1, 2), w.float(), bias.float(),
           ss.float() if film else None, None]
    if res:
        buf = torch.empty(b, c, 2 * t)
        buf[:, :, ::2] = r.float()
        low[4] = buf[:, :, ::2]
    return ref, [x.requires_grad_() if x is not None else None for x in low]


def call_film(args, groups, backend):
    h, w, bias, ss, res = args
    scale, shift = ss.chunk(2, dim=-1) if ss is not None else (None, None)
    return film_epilogue(h, w, bias, groups, scale, shift, res, 1e-5, backend=backend)


@pytest.mark.parametrize("film,res", [(True, False), (False, True), (True, True), (False, False)])
def test_film_epilogue_matches_float64(film, res, poison_empty):
    seed, g = seeded()
    groups = int(torch.randint(1, 5, (1,), generator=g))
    cg = int(torch.randint(1, 8, (1,), generator=g)) * 2 + 1  # odd: C = groups·cg is not a power of two
    b, t = int(torch.randint(1, 6, (1,), generator=g)), (3, 5, 6, 8, 12, 13, 16)[int(torch.randint(0, 7, (1,),
                                                                                                   generator=g))]
    c = groups * cg
    ref_args, args = film_inputs(g, b, c, t, film, res)
    assert not args[0].is_contiguous() and (not res or not args[4].is_contiguous())
    msg = f"(seed {seed}, B={b} C={c} G={groups} T={t})"
    ref = call_film(ref_args, groups, "torch")
    out = call_film(args, groups, "cpp")
    with torch.no_grad():  # the direct (no-autograd) path must give the same values
        assert torch.equal(call_film(args, groups, "cpp"), out.detach()), f"no-grad path differs {msg}"
    assert out.dtype == torch.float32 and torch.isfinite(out).all(), f"unwritten output {msg}"
    assert rel(out, ref) < TOL, f"forward {rel(out, ref):.2e} {msg}"
    grad = torch.randn(b, c, t, generator=g, dtype=torch.float64)
    ref.backward(grad)
    out.backward(grad.float())
    for name, x, r in zip(("h", "gn_weight", "gn_bias", "scale|shift", "residual"), args, ref_args):
        if x is not None:
            assert x.grad is not None and torch.isfinite(x.grad).all(), f"grad {name} missing/unwritten {msg}"
            assert rel(x.grad, r.grad) < TOL, f"grad {name}: {rel(x.grad, r.grad):.2e} {msg}"


def test_mish_and_its_derivative_elementwise_on_both_tails():
    """gn_weight = 0 makes the Mish input y = gn_bias exactly, so each channel gives Mish(y) and (through
    ∂gn_bias, T = 1) Mish'(y) for one y: checked element by element from −110 to 40 (e^y subnormal below −87)."""
    y = torch.linspace(-110, 40, 30001)
    bias = y.clone().requires_grad_()
    out = film_epilogue(torch.randn(1, y.numel(), 1), torch.zeros(y.numel()), bias, 1, backend="cpp")
    out.sum().backward()
    y64 = y.double()
    t = torch.tanh(torch.nn.functional.softplus(y64))
    mish, dmish = y64 * t, t + y64 * (1 - t * t) * torch.sigmoid(y64)
    normal = y > -87  # where e^y is a normal float, Mish keeps float32 relative accuracy
    rel_err = (out[0, :, 0].double() - mish).abs() / mish.abs().clamp_min(1e-300)
    assert rel_err[normal].max() < 1e-6, f"Mish: max relative error {rel_err[normal].max():.2e}"
    assert (out[0, :, 0].double() - mish)[~normal].abs().max() < 1e-40
    assert (bias.grad.double() - dmish).abs().max() < 1e-6  # |Mish'| ≤ 1.1; it has a root near −1.19


def misaligned(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of ``t`` starting ``offset`` floats into its storage (the simd loops must not round by alignment)."""
    return torch.empty(t.numel() + offset)[offset:].view_as(t).copy_(t)


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_results_do_not_depend_on_the_thread_count_or_alignment(offset):
    """Above the parallel threshold the work is split over threads; every op must still be bitwise the same, and
    the same whatever the alignment of its inputs."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(256, 64, 12, generator=g)
    w, bias, ss = torch.randn(64, generator=g), torch.randn(64, generator=g), torch.randn(256, 128, generator=g)
    new, old, adv = torch.randn(3, 3 * 4096, generator=g)
    x, eps, x_prev = torch.randn(3, 2048, 48, generator=g)
    coef = SAMPLER.coef[torch.arange(2048) % 10].float()
    threads = torch.get_num_threads()

    def run(shift):
        hh = (misaligned(h, shift) if shift else h.clone()).requires_grad_()
        out = film_epilogue(hh, w, bias, 8, *misaligned(ss, shift).chunk(2, dim=-1), backend="cpp")
        out.backward(misaligned(torch.ones_like(out), shift))
        return (out, hh.grad, *ppo_clip_loss(misaligned(new, shift), old, adv, 0.2, backend="cpp"),
                *ddim_step(misaligned(x, shift), misaligned(eps, shift), x_prev, coef, backend="cpp"))

    try:
        torch.set_num_threads(1)
        one = run(0)
        torch.set_num_threads(2)
        two = run(offset)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


# ---- the stack: U-Net and sampler ------------------------------------------------------------------------------------
# Whole-network results carry the U-Net's own float32 rounding (and the chain's 1/√ᾱ amplification of it), which no
# op backend changes: the cpp stack must be within twice the torch float32 stack's error of a float64 run.
def stack_errors(monkeypatch, fn):
    """{name: (cpp error, torch float32 error)} against float64; ``fn(model, dtype, backend)`` -> named results."""
    torch.manual_seed(torch.seed() % 2**31)
    model = ConditionalUnet1D(4, 6, PRESETS["tiny"])
    results = {}
    for key, dtype, backend in (("ref", torch.float64, "torch"), ("torch", torch.float32, "torch"),
                                ("cpp", torch.float32, "cpp")):
        monkeypatch.setattr(dispatch, "_default_backend", backend)  # the U-Net's epilogues use the default
        model.to(dtype).zero_grad()
        results[key] = fn(model, dtype, backend)
    return {name: (rel(results["cpp"][name], r), rel(results["torch"][name], r)) for name, r in results["ref"].items()}


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_unet_forward_backward_cpp_matches_float64(monkeypatch):
    x, k, cond = torch.randn(5, 12, 4, dtype=torch.float64), torch.randint(0, 100, (5,)), torch.randn(5, 6)

    def fn(model, dtype, backend):
        eps = model(x.to(dtype), k, cond.to(dtype))
        (eps * torch.linspace(-1, 1, eps.numel(), dtype=dtype).view_as(eps)).sum().backward()
        return {"eps": eps.detach(), "param grads": grads(model)}

    for name, (err, torch_err) in stack_errors(monkeypatch, fn).items():
        assert err < max(TOL, 2 * torch_err), f"{name}: {err:.2e} (torch float32: {torch_err:.2e})"


def test_sampler_and_chain_log_prob_cpp_match_float64(monkeypatch):
    """Whole chains through the tiny U-Net + DDIM steps, their log-probs, and the PPO-path parameter gradients (of
    the float64 chain's latents: on each run's own float32 chain they mostly measure how far those chains drifted)."""
    cond, x_init = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 12, 4, dtype=torch.float64)
    noise = torch.randn(3, SAMPLER.num_steps, 12, 4, dtype=torch.float64)
    stored = []

    def fn(model, dtype, backend):
        chain = SAMPLER.sample(model, cond.to(dtype), (12, 4), x_init=x_init.to(dtype), noise=noise.to(dtype),
                               backend=backend)
        stored.append(chain.latents)  # the float64 run comes first
        logp = SAMPLER.chain_log_prob(model, cond.to(dtype), stored[0].to(dtype), backend=backend)
        logp.sum().backward()
        return {"latents": chain.latents, "log_probs": chain.log_probs, "chain_log_prob": logp.detach(),
                "param grads": grads(model)}

    for name, (err, torch_err) in stack_errors(monkeypatch, fn).items():
        assert err < max(TOL, 2 * torch_err), f"{name}: {err:.2e} (torch float32: {torch_err:.2e})"


def test_dispatch_registers_and_reports_cpp():
    for op in ("ddim_step", "ddim_logprob", "ppo_loss", "film_epilogue"):
        assert dispatch.resolve(op, "cpp", torch.device("cpu")) == "cpp"
        assert dispatch.resolve(op, "auto", torch.device("cpu")) == "cpp"  # the measured winner on CPU
        with pytest.raises(RuntimeError, match="cpu tensors only"):
            dispatch.resolve(op, "cpp", torch.device("cuda"))
    assert dispatch.describe_backends()["cpp"].startswith("extension built")
