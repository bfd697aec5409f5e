"""PPO clip loss: Triton (CPU interpreter or GPU) against the float64 PyTorch reference, plus loss semantics."""
import pytest
import torch

from sodp_fast.ops import _cpp, dispatch
from sodp_fast.ops.ppo_loss import ppo_clip_loss

needs_triton = pytest.mark.skipif(not dispatch.backend_present("triton"), reason="triton not usable here")
needs_cpp = pytest.mark.skipif(not _cpp.available(), reason="CPU extension not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


BACKENDS = ["torch", pytest.param("triton", marks=needs_triton), pytest.param("cpp", marks=needs_cpp)]


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def scalar_err(o, r, new, old, adv) -> dict:
    """Errors of (loss, clip_frac, approx_kl) against the float64 reference, relative to the size of the per-row
    terms each mean sums (|ratio·adv| for the loss, |ratio − 1| for the KL estimate), not to the mean itself: with
    a few rows the terms can cancel to near 0, and float32 inputs then bound only the absolute error."""
    ratio = (new.detach().double().cpu() - old.double().cpu()).exp()
    scale = {"loss": (ratio * adv.double().cpu()).abs().mean(), "clip_frac": 0.0, "approx_kl": (ratio - 1).abs().mean()}
    return {k: ((a.double().cpu() - b.double().cpu()).abs() / max(b.abs().item(), float(scale[k]), 1e-30)).item()
            for k, a, b in zip(scale, o, r)}


def draw(n, device, dtype, seed, spread=0.3):
    """new (stride 2), old (contiguous), adv (stride 3): the kernels must honour strides."""
    g = torch.Generator().manual_seed(seed)
    new = torch.randn(n, 2, generator=g, dtype=torch.float64)
    old = new[:, 0] - spread * torch.randn(n, generator=g, dtype=torch.float64)
    adv = torch.randn(n, 3, generator=g, dtype=torch.float64)
    new, old, adv = (t.to(device=device, dtype=dtype) for t in (new, old, adv))
    return new[:, 0], old, adv[:, 1]


def check_against_reference(n, device, dtype, tol):
    seed = torch.seed() % 2**31
    new, old, adv = draw(n, device, dtype, seed)
    assert not new.is_contiguous() and not adv.is_contiguous()
    new = new.detach().requires_grad_()
    ref_new = new.detach().double().cpu().requires_grad_()
    ref = ppo_clip_loss(ref_new, old.double().cpu(), adv.double().cpu(), 0.2, backend="torch")
    ref[0].backward()
    out = ppo_clip_loss(new, old, adv, 0.2, backend="triton")
    out[0].backward()
    assert all(torch.isfinite(o) for o in out), f"not finite (seed {seed})"
    for name, err in scalar_err(out, ref, new, old, adv).items():
        assert err < tol, f"{name}: {err:.2e} (seed {seed})"
    if n >= 100:
        assert 0 < ref[1] < 1, f"test draws should clip some rows, not all (seed {seed})"
    assert rel(new.grad, ref_new.grad) < tol, f"grad: {rel(new.grad, ref_new.grad):.2e} (seed {seed})"


@needs_triton
@pytest.mark.parametrize("n", [7, 1000, 2560])
def test_triton_matches_float64_reference(n, poison_empty):
    check_against_reference(n, "cpu", torch.float32, 1e-5)


@needs_triton
def test_triton_multi_iteration_reduction(monkeypatch, poison_empty):
    """More rows than programs × BLOCK: each program loops (ITERS > 1) and the partial sums are added."""
    from sodp_fast.ops import ppo_loss

    monkeypatch.setattr(ppo_loss, "_MAX_PROGRAMS", 2)
    check_against_reference(5 * ppo_loss._BLOCK + 3, "cpu", torch.float32, 1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("n", [7, 2560, 40961])
def test_triton_matches_reference_gpu(n, dtype, tol, poison_empty):
    check_against_reference(n, "cuda", dtype, tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ratio_one_gives_minus_mean_advantage(backend):
    new = torch.randn(37, requires_grad=True)
    adv = torch.randn(37)
    loss, clip_frac, approx_kl = ppo_clip_loss(new, new.detach().clone(), adv, 0.1, backend=backend)
    torch.testing.assert_close(loss, -adv.mean())
    assert clip_frac.item() == 0 and abs(approx_kl.item()) < 1e-7
    loss.backward()
    torch.testing.assert_close(new.grad, -adv / 37)  # ρ = 1: every row is on the unclipped branch


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_zero_outside_band_on_clipped_side(backend):
    eps = 0.2
    log_ratio = torch.tensor([0.5, -0.5, 0.5, -0.5, 0.05, -0.05])  # ρ ≈ 1.65, 0.61, 1.65, 0.61, 1.05, 0.95
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    old = torch.randn(6)
    new = (old + log_ratio).requires_grad_()
    loss, clip_frac, approx_kl = ppo_clip_loss(new, old, adv, eps, backend=backend)
    loss.backward()
    ratio = log_ratio.exp()
    expected = torch.where(torch.tensor([True, True, False, False, False, False]), 0.0, -adv * ratio / 6)
    torch.testing.assert_close(new.grad, expected)
    assert clip_frac.item() == pytest.approx(4 / 6)
    assert approx_kl.item() >= 0
    torch.testing.assert_close(loss, torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_approx_kl_nonnegative_and_logging_detached(backend):
    new = (3 * torch.randn(101)).requires_grad_()
    loss, clip_frac, approx_kl = ppo_clip_loss(new, torch.randn(101), torch.randn(101), 0.2, backend=backend)
    assert approx_kl.item() >= 0 and 0 <= clip_frac.item() <= 1
    assert loss.requires_grad and not clip_frac.requires_grad and not approx_kl.requires_grad


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        ppo_clip_loss(torch.zeros(4), torch.zeros(4), torch.zeros(2), 0.2)
