"""Batched PPO ratio/clip loss over (chain × denoising-step) rows (paper Eq. 12): PyTorch reference and fused
backends. Each row is one denoising transition of one chain, its advantage the chain's chunk reward broadcast to
every step. In the PPO convention (minimise):

    ρ        = exp(new − old)
    loss     = mean_rows max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))
    clip_frac = mean_rows [|ρ − 1| > ε]                 (logging: share of rows whose ratio is clipped)
    approx_kl = mean_rows (ρ − 1) − log ρ               (logging: the k3 estimator, ≥ 0 row by row)

∂loss/∂new = −A·ρ/N, and 0 where the clipped term is strictly larger (A > 0 and ρ > 1 + ε, or A < 0 and
ρ < 1 − ε). Only ``new_logp`` gets a gradient; the two logging outputs are detached.

Why fused: eager PyTorch spends ~15 launches on [N]-sized vectors here (N = 2560 for 256 chains × 10 steps), so
the update step is launch-bound; the Triton forward is one pass writing per-program partial sums (then one tiny
sum), the backward one pass that recomputes ρ. The compiled backends (cuda, cpp) share their per-row math
(``csrc/kernel_math.h``), which forms ρ − 1 as expm1(new − old): at PPO's small log-ratios ρ − 1 keeps float32
relative accuracy and the k3 term ≈ log²ρ/2 is 1/|log ρ| times more accurate than with exp(·) − 1.

Tolerances against a float64 reference (‖out − ref‖/‖ref‖), all backends accumulating in float32 or better:
float32 inputs ≲ 1e-5 for the loss, the two logging scalars and the gradient; bf16 inputs ≲ 1e-2.
"""
from __future__ import annotations

import torch

from sodp_fast.ops import _cpp, _cuda
from sodp_fast.ops.dispatch import get, register, tl, triton


@register("ppo_loss", "torch")
def ppo_loss_torch(new_logp, old_logp, advantages, clip_eps):
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)).mean()
    with torch.no_grad():
        clip_frac = ((ratio - 1).abs() > clip_eps).to(ratio.dtype).mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()
    return loss, clip_frac, approx_kl


class PPOClipLoss(torch.autograd.Function):
    """The fused backends' loss on their ``launch(new, old, adv, clip_eps, grad_loss=None)``: the float32 means
    (loss, clip_frac, approx_kl) [3], or ∂loss/∂new given ∂L/∂loss."""

    @staticmethod
    def forward(ctx, new_logp, old_logp, advantages, clip_eps, launch):
        ctx.clip_eps, ctx.launch = float(clip_eps), launch
        out = launch(new_logp, old_logp, advantages, ctx.clip_eps)
        ctx.save_for_backward(new_logp, old_logp, advantages)
        loss, clip_frac, approx_kl = out.to(new_logp.dtype).unbind()
        ctx.mark_non_differentiable(clip_frac, approx_kl)
        return loss, clip_frac, approx_kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_clip, _grad_kl):
        return ctx.launch(*ctx.saved_tensors, ctx.clip_eps, grad_loss), None, None, None, None


if triton is not None:

    @triton.jit
    def _ppo_fwd_kernel(new_ptr, old_ptr, adv_ptr, part_ptr, n, s_new, s_old, s_adv, clip_eps,
                        BLOCK: tl.constexpr, ITERS: tl.constexpr):
        """Program p reduces rows [p·ITERS·BLOCK, (p+1)·ITERS·BLOCK) into part[p] = (Σloss, Σclipped, Σk3)."""
        pid = tl.program_id(0)
        acc_loss = tl.zeros([BLOCK], dtype=tl.float32)
        acc_clip = tl.zeros([BLOCK], dtype=tl.float32)
        acc_kl = tl.zeros([BLOCK], dtype=tl.float32)
        for it in range(ITERS):
            offs = (pid * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
            m = offs < n
            new = tl.load(new_ptr + offs * s_new, mask=m, other=0.0).to(tl.float32)
            old = tl.load(old_ptr + offs * s_old, mask=m, other=0.0).to(tl.float32)
            adv = tl.load(adv_ptr + offs * s_adv, mask=m, other=0.0).to(tl.float32)
            log_ratio = new - old
            ratio = tl.exp(log_ratio)
            clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_eps), 1.0 + clip_eps)
            acc_loss += tl.where(m, tl.maximum(-adv * ratio, -adv * clipped), 0.0)
            acc_clip += tl.where(m & (tl.abs(ratio - 1.0) > clip_eps), 1.0, 0.0)
            acc_kl += tl.where(m, (ratio - 1.0) - log_ratio, 0.0)
        tl.store(part_ptr + pid * 3, tl.sum(acc_loss, axis=0))
        tl.store(part_ptr + pid * 3 + 1, tl.sum(acc_clip, axis=0))
        tl.store(part_ptr + pid * 3 + 2, tl.sum(acc_kl, axis=0))

    @triton.jit
    def _ppo_bwd_kernel(new_ptr, old_ptr, adv_ptr, gout_ptr, gnew_ptr, n, s_new, s_old, s_adv, clip_eps, inv_n,
                        BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        new = tl.load(new_ptr + offs * s_new, mask=m, other=0.0).to(tl.float32)
        old = tl.load(old_ptr + offs * s_old, mask=m, other=0.0).to(tl.float32)
        adv = tl.load(adv_ptr + offs * s_adv, mask=m, other=0.0).to(tl.float32)
        g = tl.load(gout_ptr).to(tl.float32)
        ratio = tl.exp(new - old)
        # the clipped term is strictly the max only outside the band on the side the advantage pushes towards
        frozen = ((adv > 0) & (ratio > 1.0 + clip_eps)) | ((adv < 0) & (ratio < 1.0 - clip_eps))
        grad = tl.where(frozen, 0.0, -adv * ratio * inv_n * g)
        tl.store(gnew_ptr + offs, grad.to(gnew_ptr.dtype.element_ty), mask=m)


_BLOCK = 1024
_MAX_PROGRAMS = 128  # partial sums to add after the forward; ITERS grows instead beyond 128 · BLOCK rows


def _ppo_triton(new_logp, old_logp, advantages, clip_eps, grad_loss=None):
    n = new_logp.shape[0]
    strides = (new_logp.stride(0), old_logp.stride(0), advantages.stride(0))
    if grad_loss is not None:
        grad_new = torch.empty(n, device=new_logp.device, dtype=new_logp.dtype)
        _ppo_bwd_kernel[(triton.cdiv(n, _BLOCK),)](new_logp, old_logp, advantages, grad_loss, grad_new, n, *strides,
                                                   clip_eps, 1.0 / n, BLOCK=_BLOCK)
        return grad_new
    blocks = triton.cdiv(n, _BLOCK)
    iters = triton.cdiv(blocks, _MAX_PROGRAMS)
    programs = triton.cdiv(blocks, iters)
    part = torch.empty(programs, 3, device=new_logp.device, dtype=torch.float32)
    _ppo_fwd_kernel[(programs,)](new_logp, old_logp, advantages, part, n, *strides, clip_eps, BLOCK=_BLOCK, ITERS=iters)
    return part.sum(0) / n


@register("ppo_loss", "triton")
def ppo_loss_triton(new_logp, old_logp, advantages, clip_eps):
    return PPOClipLoss.apply(new_logp, old_logp, advantages, clip_eps, _ppo_triton)


def _ppo_cpp(new_logp, old_logp, advantages, clip_eps, grad_loss=None):
    n = new_logp.shape[0]
    ptrs = (_cpp.ptr(new_logp, "new_logp"), _cpp.ptr(old_logp, "old_logp"), _cpp.ptr(advantages, "advantages"))
    out = torch.empty(3 if grad_loss is None else n, dtype=torch.float32)
    if grad_loss is None:
        _cpp.ext().ppo_loss_forward(*ptrs, n, clip_eps, out.data_ptr())
    else:
        _cpp.ext().ppo_loss_backward(*ptrs, float(grad_loss), n, clip_eps, out.data_ptr())
    return out


@register("ppo_loss", "cpp")
def ppo_loss_cpp(new_logp, old_logp, advantages, clip_eps):
    """CPU kernels (float32; other dtypes run the reference): each chunk of rows summed in double."""
    if not _cpp.runs(new_logp):
        return ppo_loss_torch(new_logp, old_logp, advantages, clip_eps)
    return PPOClipLoss.apply(new_logp.contiguous(), old_logp.to(new_logp.dtype).contiguous(),
                             advantages.to(new_logp.dtype).contiguous(), clip_eps, _ppo_cpp)


def _ppo_cuda(new_logp, old_logp, advantages, clip_eps, grad_loss=None):
    n, code, ext = new_logp.shape[0], _cuda.dtype_code(new_logp, "ppo_loss"), _cuda.ext()
    ptrs = (_cuda.check(new_logp, "new_logp"), _cuda.check(old_logp, "old_logp", new_logp.dtype),
            _cuda.check(advantages, "advantages", new_logp.dtype))
    if grad_loss is not None:
        grad_loss = grad_loss.to(torch.float32).reshape(1).contiguous()
        grad_new = torch.empty_like(new_logp)
        ext.ppo_loss_backward(*ptrs, _cuda.check(grad_loss, "grad_loss"), n, clip_eps,
                              _cuda.check(grad_new, "grad_new"), code, _cuda.stream())
        return grad_new
    workspace = torch.empty(ext.ppo_workspace_floats(), device=new_logp.device, dtype=torch.float32)
    out = torch.empty(3, device=new_logp.device, dtype=torch.float32)
    ext.ppo_loss_forward(*ptrs, n, clip_eps, _cuda.check(workspace, "workspace"), _cuda.check(out, "out"), code,
                         _cuda.stream())
    return out


@register("ppo_loss", "cuda")
def ppo_loss_cuda(new_logp, old_logp, advantages, clip_eps):
    """fp32 or bf16; old log-probs and advantages are cast to new_logp's dtype."""
    dtype = new_logp.dtype
    return PPOClipLoss.apply(new_logp.contiguous(), old_logp.to(dtype).contiguous(),
                             advantages.to(dtype).contiguous(), clip_eps, _ppo_cuda)


def ppo_clip_loss(new_logp, old_logp, advantages, clip_eps, backend=None):
    """(loss, clip_frac, approx_kl) for rows of any shape (flattened); ``advantages`` must match that shape.

    Only ``loss`` is differentiable, w.r.t. ``new_logp``. Returns 0-dim tensors (no host sync).
    """
    if new_logp.shape != old_logp.shape or new_logp.shape != advantages.shape:
        raise ValueError(f"new_logp {tuple(new_logp.shape)}, old_logp {tuple(old_logp.shape)} and advantages "
                         f"{tuple(advantages.shape)} must have the same shape (broadcast the chunk reward first)")
    if new_logp.numel() == 0:
        raise ValueError("ppo_clip_loss needs at least one row")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    fn = get("ppo_loss", backend, new_logp.device)
    return fn(new_logp.reshape(-1), old_logp.detach().reshape(-1), advantages.detach().reshape(-1), float(clip_eps))
