"""FiLM conv-block epilogue: Triton (CPU interpreter or GPU) against the float64 PyTorch reference."""
import pytest
import torch

from sodp_fast.nn.unet import PRESETS, ConditionalUnet1D
from sodp_fast.ops import _cuda, dispatch
from sodp_fast.ops.film_epilogue import film_epilogue

needs_triton = pytest.mark.skipif(not dispatch.backend_present("triton"), reason="triton not usable here")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(b, c, t, film, res, dtype, device, seed):
    """float64 leaves (the reference's) and the same values at ``dtype`` as non-contiguous views (the kernel's).

    h is a [B, T, C] buffer transposed, scale/shift are halves of one [B, 2C] tensor (as the U-Net's
    ``chunk`` makes them), the residual is a stride-2 slice. h gets a per-channel offset and spread so the
    group statistics matter; values span Mish's curved region and both tails."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, c, generator=g, dtype=torch.float64) * 3
    h = h + torch.randn(c, generator=g, dtype=torch.float64)
    h = h.to(dtype).double().transpose(1, 2)
    weight = (1 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64)).to(dtype).double()
    bias = (0.5 * torch.randn(c, generator=g, dtype=torch.float64)).to(dtype).double()
    ss = torch.randn(b, 2 * c, generator=g, dtype=torch.float64).to(dtype).double() if film else None
    r = torch.randn(b, c, 2 * t, generator=g, dtype=torch.float64).to(dtype).double()[:, :, ::2] if res else None
    ref = [x.clone().requires_grad_() if x is not None else None for x in (h, weight, bias, ss, r)]
    low = [x.to(device=device, dtype=dtype).requires_grad_() if x is not None else None
           for x in (h, weight, bias, ss, r)]
    # re-create the non-contiguous layouts at dtype (``.to`` returns contiguous copies)
    low[0] = low[0].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    if res:
        buf = torch.empty(b, c, 2 * t, device=device, dtype=dtype)
        buf[:, :, ::2] = low[4].detach()
        low[4] = buf[:, :, ::2].requires_grad_()
    return ref, low


def call(args, groups, eps, backend):
    h, w, bias, ss, res = args
    scale, shift = ss.chunk(2, dim=-1) if ss is not None else (None, None)
    return film_epilogue(h, w, bias, groups, scale, shift, res, eps, backend=backend)


def check(b, c, groups, t, film, res, device, dtype, tol, backend="triton"):
    seed = torch.seed() % 2**31
    ref_args, args = make_inputs(b, c, t, film, res, dtype, device, seed)
    assert not args[0].is_contiguous() and (not res or not args[4].is_contiguous())
    ref = call(ref_args, groups, 1e-5, "torch")
    out = call(args, groups, 1e-5, backend)
    assert out.dtype == dtype and torch.isfinite(out).all(), f"unwritten output (seed {seed})"
    assert rel(out, ref) < tol, f"forward {rel(out, ref):.2e} (seed {seed})"
    grad = torch.randn(b, c, t, dtype=torch.float64)
    ref.backward(grad)
    out.backward(grad.to(device=device, dtype=dtype))
    for name, x, r in zip(("h", "gn_weight", "gn_bias", "scale|shift", "residual"), args, ref_args):
        if x is None:
            continue
        assert x.grad is not None and torch.isfinite(x.grad).all(), f"grad {name} missing/unwritten (seed {seed})"
        assert rel(x.grad, r.grad) < tol, f"grad {name}: {rel(x.grad, r.grad):.2e} (seed {seed})"


SHAPES = [(3, 24, 4, 12, True, False), (2, 24, 4, 12, False, True), (2, 24, 4, 12, True, True),
          (2, 40, 8, 3, True, True), (1, 32, 4, 12, False, False)]


@needs_triton
@pytest.mark.parametrize("b,c,groups,t,film,res", SHAPES)
def test_matches_float64_reference(b, c, groups, t, film, res, poison_empty):
    check(b, c, groups, t, film, res, "cpu", torch.float32, 1e-5)


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("b,c,groups,t,film,res",
                         SHAPES + [(64, 1024, 8, 3, True, True), (256, 256, 8, 12, True, True)])
@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.skipif(
    not _cuda.available(), reason="CUDA extension not built"))])
def test_gpu_matches_reference(b, c, groups, t, film, res, dtype, tol, backend, poison_empty):
    check(b, c, groups, t, film, res, "cuda", dtype, tol, backend)


@needs_triton
def test_mish_tails():
    """Large |x| after the norm (bias ±40): Mish's exp-based form must stay finite and exact on both tails."""
    h = torch.randn(2, 8, 4, requires_grad=True)
    bias = torch.tensor([40.0, -40.0, 25.0, -25.0, 90.0, -90.0, 0.0, 1.0])
    outs = []
    for backend in ("torch", "triton"):
        h.grad = None
        y = film_epilogue(h, torch.ones(8), bias, 2, backend=backend)
        y.sum().backward()
        outs += [y.detach(), h.grad.clone()]
    torch.testing.assert_close(outs[2], outs[0])
    torch.testing.assert_close(outs[3], outs[1], atol=1e-5, rtol=1e-5)


@needs_triton
def test_unet_triton_matches_torch(monkeypatch):
    """Every block of the tiny U-Net through the Triton epilogue: same ε̂ and parameter gradients as torch."""
    torch.manual_seed(torch.seed() % 2**31)
    model = ConditionalUnet1D(4, 6, PRESETS["tiny"])
    x, k, cond = torch.randn(3, 8, 4), torch.randint(0, 100, (3,)), torch.randn(3, 6)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setattr(dispatch, "_default_backend", backend)  # the U-Net's epilogues use the default
        model.zero_grad()
        eps = model(x, k, cond)
        (eps * torch.linspace(-1, 1, eps.numel()).view_as(eps)).sum().backward()
        results[backend] = (eps.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel(results["triton"][0], results["torch"][0]) < 1e-5
    assert rel(results["triton"][1], results["torch"][1]) < 1e-4
