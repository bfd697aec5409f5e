"""Conv-block epilogue of the U-Net's residual blocks: GroupNorm → Mish → FiLM (scale, shift) → + residual.

Diffusion Policy's ConditionalResidualBlock1D runs conv → GroupNorm → Mish, then FiLM on the first block's
output and the residual add on the second's: one memory pass per stage in eager PyTorch. Fused, the whole
epilogue reads the conv output once and writes once.

Triton: one program per (batch, group) holds the group's C/G × T values in registers (384 at the paper's widths
and Tp = 12). The backward recomputes the forward from h and the saved per-group mean/rstd (nothing else is
saved) and in one pass writes ∂h, ∂scale, ∂shift and per-batch partials of ∂gn_weight, ∂gn_bias, summed over
the batch by one small reduction (no atomics, so deterministic). Mish is x·tanh(softplus(x)) written as
x·n/(n + 2), n = eˣ(eˣ + 2), with eˣ capped at e²⁰: exact to float32 rounding on both tails, no libdevice tanh.

"cpp" (CPU, float32; other dtypes run the reference) and "cuda" (fp32 or bf16 h) run the same per-element math
(``csrc/kernel_math.h``), one work item per (batch, group), with the Mish derivative written as
t + y·(2/(n + 2))·(1 + t)·σ(y) (sech² = (1 − t)(1 + t): no 1 − t² cancellation as t → 1).

Tolerances against a float64 reference (‖out − ref‖/‖ref‖), forward and every gradient: float32 ≲ 1e-5, bf16
≲ 1e-2 (statistics and arithmetic in float32 for any input dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sodp_fast.ops import _cpp, _cuda
from sodp_fast.ops.dispatch import get, register, tl, triton


@register("film_epilogue", "torch")
def film_epilogue_torch(h, gn_weight, gn_bias, num_groups, scale=None, shift=None, residual=None, eps=1e-5):
    """h [B, C, T]; scale, shift [B, C] (or None); residual [B, C, T] (or None)."""
    y = F.mish(F.group_norm(h, num_groups, gn_weight, gn_bias, eps))
    if scale is not None:
        y = y * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    if residual is not None:
        y = y + residual
    return y


if triton is not None:

    @triton.jit
    def _mish_parts(y):
        """(tanh(softplus(y)), sigmoid(y)) without tanh: with e = exp(y), tanh(log(1 + e)) = n/(n + 2), n = e(e + 2)."""
        e = tl.exp(tl.minimum(y, 20.0))
        n = e * (e + 2.0)
        return n / (n + 2.0), e / (1.0 + e)

    @triton.jit
    def _group_tile(pid, G, CG, T, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
        """(batch, channel ids [BLOCK_C], time ids [BLOCK_T], channel mask, tile mask) of program ``pid``."""
        b = pid // G
        cc = tl.arange(0, BLOCK_C)
        ch = (pid % G) * CG + cc
        ts = tl.arange(0, BLOCK_T)
        cm = cc < CG
        return b, ch, ts, cm, cm[:, None] & (ts < T)[None, :]

    @triton.jit
    def _film_fwd_kernel(h_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr, mean_ptr, rstd_ptr,
                         C, T, G, CG, sh0, sh1, sh2, ss0, ss1, st0, st1, sr0, sr1, sr2, eps,
                         HAS_FILM: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_T: tl.constexpr):
        pid = tl.program_id(0)
        b, ch, ts, cm, mask = _group_tile(pid, G, CG, T, BLOCK_C, BLOCK_T)
        h = tl.load(h_ptr + b * sh0 + ch[:, None] * sh1 + ts[None, :] * sh2, mask=mask, other=0.0).to(tl.float32)
        count = CG * T
        mean = tl.sum(tl.sum(h, axis=1), axis=0) / count
        diff = tl.where(mask, h - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(diff * diff, axis=1), axis=0) / count + eps)
        w = tl.load(w_ptr + ch, mask=cm, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + ch, mask=cm, other=0.0).to(tl.float32)
        y = diff * rstd * w[:, None] + bias[:, None]
        t, _ = _mish_parts(y)
        out = y * t
        if HAS_FILM:
            scale = tl.load(scale_ptr + b * ss0 + ch * ss1, mask=cm, other=0.0).to(tl.float32)
            shift = tl.load(shift_ptr + b * st0 + ch * st1, mask=cm, other=0.0).to(tl.float32)
            out = out * scale[:, None] + shift[:, None]
        if HAS_RES:
            out += tl.load(res_ptr + b * sr0 + ch[:, None] * sr1 + ts[None, :] * sr2, mask=mask,
                           other=0.0).to(tl.float32)
        tl.store(out_ptr + (b * C + ch[:, None]) * T + ts[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + pid, mean)
        tl.store(rstd_ptr + pid, rstd)

    @triton.jit
    def _film_bwd_kernel(go_ptr, h_ptr, w_ptr, bias_ptr, scale_ptr, mean_ptr, rstd_ptr, dh_ptr, dscale_ptr,
                         dshift_ptr, dw_ptr, db_ptr, C, T, G, CG, sg0, sg1, sg2, sh0, sh1, sh2, ss0, ss1,
                         HAS_FILM: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
        """dh = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) over the group; dw, db written as per-batch partials [B, C]."""
        pid = tl.program_id(0)
        b, ch, ts, cm, mask = _group_tile(pid, G, CG, T, BLOCK_C, BLOCK_T)
        go = tl.load(go_ptr + b * sg0 + ch[:, None] * sg1 + ts[None, :] * sg2, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + b * sh0 + ch[:, None] * sh1 + ts[None, :] * sh2, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + pid)
        rstd = tl.load(rstd_ptr + pid)
        w = tl.load(w_ptr + ch, mask=cm, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + ch, mask=cm, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (h - mean) * rstd, 0.0)
        y = xhat * w[:, None] + bias[:, None]
        t, sig = _mish_parts(y)
        dm = go
        if HAS_FILM:
            scale = tl.load(scale_ptr + b * ss0 + ch * ss1, mask=cm, other=0.0).to(tl.float32)
            tl.store(dscale_ptr + b * C + ch, tl.sum(go * y * t, axis=1), mask=cm)
            tl.store(dshift_ptr + b * C + ch, tl.sum(go, axis=1), mask=cm)
            dm = go * scale[:, None]
        dy = dm * (t + y * (1.0 - t * t) * sig)
        tl.store(dw_ptr + b * C + ch, tl.sum(dy * xhat, axis=1), mask=cm)
        tl.store(db_ptr + b * C + ch, tl.sum(dy, axis=1), mask=cm)
        dxhat = dy * w[:, None]
        count = CG * T
        m1 = tl.sum(tl.sum(dxhat, axis=1), axis=0) / count
        m2 = tl.sum(tl.sum(dxhat * xhat, axis=1), axis=0) / count
        dh = (dxhat - m1 - xhat * m2) * rstd
        tl.store(dh_ptr + (b * C + ch[:, None]) * T + ts[None, :], dh.to(dh_ptr.dtype.element_ty), mask=mask)


def _groups_split(c: int, num_groups: int) -> int:
    if c % num_groups:
        raise ValueError(f"{c} channels do not split into {num_groups} groups")
    return c // num_groups


class FilmEpilogue(torch.autograd.Function):
    """The fused backends' epilogue on their ``kernels`` = (forward → (out, the tensors the backward reads: h, the
    GroupNorm parameters, scale and the per-group mean/rstd), backward(grad_out, *those, num_groups) → (∂h,
    ∂gn_weight, ∂gn_bias, ∂scale, ∂shift)); ∂residual is the incoming gradient itself."""

    @staticmethod
    def forward(ctx, h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps, kernels):
        out, saved = kernels[0](h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps)
        ctx.save_for_backward(*saved)
        ctx.num_groups, ctx.has_res, ctx.backward_kernel = num_groups, residual is not None, kernels[1]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        dh, dw, db, dscale, dshift = ctx.backward_kernel(grad_out, *ctx.saved_tensors, ctx.num_groups)
        return dh, dw, db, None, dscale, dshift, grad_out if ctx.has_res else None, None, None


def _strides(t: torch.Tensor | None, n: int):
    return t.stride() if t is not None else (0,) * n


def _film_forward_triton(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps):
    bsz, c, t = h.shape
    cg = _groups_split(c, num_groups)
    out = torch.empty((bsz, c, t), device=h.device, dtype=h.dtype)
    mean = torch.empty(bsz * num_groups, device=h.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    film = scale is not None
    _film_fwd_kernel[(bsz * num_groups,)](
        h, gn_weight, gn_bias, scale if film else h, shift if film else h,
        residual if residual is not None else h, out, mean, rstd, c, t, num_groups, cg, *h.stride(),
        *_strides(scale, 2), *_strides(shift, 2), *_strides(residual, 3), float(eps),
        HAS_FILM=film, HAS_RES=residual is not None, BLOCK_C=triton.next_power_of_2(cg),
        BLOCK_T=triton.next_power_of_2(t))
    return out, (h, gn_weight, gn_bias, scale, mean, rstd)


def _film_backward_triton(grad_out, h, gn_weight, gn_bias, scale, mean, rstd, num_groups):
    bsz, c, t = h.shape
    film = scale is not None
    f32 = dict(device=h.device, dtype=torch.float32)
    dh = torch.empty((bsz, c, t), device=h.device, dtype=h.dtype)
    dscale, dshift = (torch.empty((bsz, c), **f32) for _ in range(2)) if film else (None, None)
    dw, db = (torch.empty((bsz, c), **f32) for _ in range(2))
    _film_bwd_kernel[(bsz * num_groups,)](
        grad_out, h, gn_weight, gn_bias, scale if film else h, mean, rstd, dh, dscale if film else dw,
        dshift if film else db, dw, db, c, t, num_groups, c // num_groups, *grad_out.stride(),
        *h.stride(), *_strides(scale, 2), HAS_FILM=film, BLOCK_C=triton.next_power_of_2(c // num_groups),
        BLOCK_T=triton.next_power_of_2(t))
    if film:
        dscale, dshift = dscale.to(scale.dtype), dshift.to(scale.dtype)
    return dh, dw.sum(0).to(gn_weight.dtype), db.sum(0).to(gn_bias.dtype), dscale, dshift


@register("film_epilogue", "triton")
def film_epilogue_triton(h, gn_weight, gn_bias, num_groups, scale=None, shift=None, residual=None, eps=1e-5):
    return FilmEpilogue.apply(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps,
                              (_film_forward_triton, _film_backward_triton))


def _film_forward_cpp(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps, save_stats=True):
    """mean/rstd are None unless ``save_stats``."""
    bsz, c, t = h.shape
    _groups_split(c, num_groups)
    h, gn_weight, gn_bias = h.contiguous(), gn_weight.contiguous(), gn_bias.contiguous()
    (scale, s_scale), (shift, s_shift) = ((_cpp.rows(scale, "scale"), _cpp.rows(shift, "shift"))
                                          if scale is not None else ((None, 0), (None, 0)))
    residual = residual.contiguous() if residual is not None else None
    out = torch.empty((bsz, c, t), dtype=torch.float32)
    mean, rstd = (torch.empty(bsz * num_groups, dtype=torch.float32) for _ in range(2)) if save_stats \
        else (None, None)
    _cpp.ext().film_epilogue_forward(
        _cpp.ptr(h, "h"), _cpp.ptr(gn_weight, "gn_weight"), _cpp.ptr(gn_bias, "gn_bias"),
        0 if scale is None else scale.data_ptr(), s_scale, 0 if shift is None else shift.data_ptr(), s_shift,
        0 if residual is None else _cpp.ptr(residual, "residual"), out.data_ptr(),
        0 if mean is None else mean.data_ptr(), 0 if rstd is None else rstd.data_ptr(), bsz, c, t, num_groups,
        float(eps))
    return out, (h, gn_weight, gn_bias, scale, mean, rstd)


def _film_backward_cpp(grad_out, h, gn_weight, gn_bias, scale, mean, rstd, num_groups):
    bsz, c, t = h.shape
    go = grad_out.to(torch.float32).contiguous()
    dh = torch.empty((bsz, c, t), dtype=torch.float32)
    dscale, dshift = (torch.empty((bsz, c), dtype=torch.float32) for _ in range(2)) if scale is not None \
        else (None, None)
    dw, db = (torch.empty(c, dtype=torch.float32) for _ in range(2))
    _cpp.ext().film_epilogue_backward(
        go.data_ptr(), h.data_ptr(), gn_weight.data_ptr(), gn_bias.data_ptr(),
        0 if scale is None else scale.data_ptr(), 0 if scale is None else scale.stride(0), mean.data_ptr(),
        rstd.data_ptr(), dh.data_ptr(), 0 if scale is None else dscale.data_ptr(),
        0 if scale is None else dshift.data_ptr(), dw.data_ptr(), db.data_ptr(), bsz, c, t, num_groups)
    return dh, dw, db, dscale, dshift


@register("film_epilogue", "cpp")
def film_epilogue_cpp(h, gn_weight, gn_bias, num_groups, scale=None, shift=None, residual=None, eps=1e-5):
    """float32 CPU kernels (any other dtype runs the reference). Without autograd (sampling) the kernel is called
    directly and saves no statistics."""
    tensors = (h, gn_weight, gn_bias, scale, shift, residual)
    if not _cpp.runs(*tensors):
        return film_epilogue_torch(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps)
    if _cpp.needs_grad(*tensors):
        return FilmEpilogue.apply(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps,
                                  (_film_forward_cpp, _film_backward_cpp))
    return _film_forward_cpp(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps, save_stats=False)[0]


def _film_forward_cuda(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps):
    """h and residual fp32 or bf16; the per-channel inputs and every reduction fp32."""
    bsz, c, t = h.shape
    _groups_split(c, num_groups)
    code = _cuda.dtype_code(h, "film_epilogue")
    h = h.contiguous()
    w, b, scale, shift = (None if x is None else x.detach().to(torch.float32).contiguous()
                          for x in (gn_weight, gn_bias, scale, shift))
    residual = residual.to(h.dtype).contiguous() if residual is not None else None
    out = torch.empty((bsz, c, t), device=h.device, dtype=h.dtype)
    mean = torch.empty(bsz * num_groups, device=h.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _cuda.ext().film_epilogue_forward(
        _cuda.check(h, "h"), _cuda.check(w, "gn_weight"), _cuda.check(b, "gn_bias"),
        0 if scale is None else _cuda.check(scale, "scale"), 0 if shift is None else _cuda.check(shift, "shift"),
        0 if residual is None else _cuda.check(residual, "residual"), _cuda.check(out, "out"),
        _cuda.check(mean, "mean"), _cuda.check(rstd, "rstd"), bsz, c, t, num_groups, float(eps), code,
        _cuda.stream())
    return out, (h, w, b, scale, mean, rstd)


def _film_backward_cuda(grad_out, h, w, b, scale, mean, rstd, num_groups):
    bsz, c, t = h.shape
    f32 = dict(device=h.device, dtype=torch.float32)
    go = grad_out.to(h.dtype).contiguous()
    dh = torch.empty_like(h)
    dscale, dshift = (torch.empty((bsz, c), **f32) for _ in range(2)) if scale is not None else (None, None)
    dw, db = (torch.empty((bsz, c), **f32) for _ in range(2))
    _cuda.ext().film_epilogue_backward(
        _cuda.check(go, "grad_out"), _cuda.check(h, "h"), _cuda.check(w, "gn_weight"), _cuda.check(b, "gn_bias"),
        0 if scale is None else _cuda.check(scale, "scale"), _cuda.check(mean, "mean"),
        _cuda.check(rstd, "rstd"), _cuda.check(dh, "dh"), 0 if scale is None else _cuda.check(dscale, "dscale"),
        0 if scale is None else _cuda.check(dshift, "dshift"), _cuda.check(dw, "dw"), _cuda.check(db, "db"),
        bsz, c, t, num_groups, _cuda.dtype_code(h, "film_epilogue"), _cuda.stream())
    return dh, dw.sum(0), db.sum(0), dscale, dshift


@register("film_epilogue", "cuda")
def film_epilogue_cuda(h, gn_weight, gn_bias, num_groups, scale=None, shift=None, residual=None, eps=1e-5):
    return FilmEpilogue.apply(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps,
                              (_film_forward_cuda, _film_backward_cuda))


def film_epilogue(h, gn_weight, gn_bias, num_groups, scale=None, shift=None, residual=None, eps=1e-5, backend=None):
    if (scale is None) != (shift is None):
        raise ValueError("FiLM needs both scale and shift, or neither")
    fn = get("film_epilogue", backend, h.device)
    return fn(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps)
