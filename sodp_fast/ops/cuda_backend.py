"""The "cuda" backend of the PPO-path ops, on the compiled extension ``sodp_fast._cuda_ext`` (``csrc/``).

* ``ddim_logprob``: log-prob of stored transitions x → x_prev under ε̂, differentiable in ε̂ only (x, x_prev
  and the coefficients are data of the stored chain; passing them with ``requires_grad`` is an error rather than
  a silently missing gradient).
* ``ppo_loss``: (loss, clip_frac, approx_kl) in one launch, backward in one launch.

Every launch goes on the current stream with memory from torch's allocator and no host synchronisation, so
these ops can be captured in a CUDA graph. Inputs are fp32 or bf16; reductions and log-probs are fp32.
The sampling op ``ddim_step`` registers its cuda backend beside its reference in ``ddim_step.py``.
"""
from __future__ import annotations

import torch

from sodp_fast.ops import _cuda
from sodp_fast.ops.ddim_step import NUM_COEF, _clip_arg
from sodp_fast.ops.dispatch import register


def _dtype_code(t: torch.Tensor, op: str) -> int:
    if t.dtype not in _cuda.DTYPE_CODES:
        raise RuntimeError(f"{op}: the cuda backend supports {list(_cuda.DTYPE_CODES)}, got {t.dtype}")
    return _cuda.DTYPE_CODES[t.dtype]


def _row_coef(coef: torch.Tensor, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """fp32 coefficients as [1, 6] (shared, stride 0) or [N, 6] (per row, stride 6)."""
    coef = coef.detach().to(device=device, dtype=torch.float32).reshape(-1, NUM_COEF).contiguous()
    if coef.shape[0] == 1:
        return coef, 0
    if coef.shape[0] != n:
        raise ValueError(f"coef has {coef.shape[0]} rows for {n} rows of x")
    return coef, NUM_COEF


class DDIMLogProbCUDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps, x_prev, coef, clip):
        n, d = x.shape
        coef, stride = _row_coef(coef, n, x.device)
        code = _dtype_code(x, "ddim_logprob")
        logp = torch.empty(n, device=x.device, dtype=torch.float32)
        _cuda.ext().ddim_logprob(_cuda.check(x, "x"), _cuda.check(eps, "eps", x.dtype),
                                 _cuda.check(x_prev, "x_prev", x.dtype), _cuda.check(coef, "coef"), stride,
                                 _cuda.check(logp, "logp"), n, d, _clip_arg(clip), code, _cuda.stream())
        ctx.save_for_backward(x, eps, x_prev, coef)
        ctx.stride, ctx.clip = stride, clip
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        x, eps, x_prev, coef = ctx.saved_tensors
        n, d = x.shape
        grad_logp = grad_logp.to(torch.float32).contiguous()
        grad_eps = torch.empty_like(eps)
        _cuda.ext().ddim_logprob_backward(_cuda.check(x, "x"), _cuda.check(eps, "eps"), _cuda.check(x_prev, "x_prev"),
                                          _cuda.check(coef, "coef"), ctx.stride, _cuda.check(grad_logp, "grad_logp"),
                                          _cuda.check(grad_eps, "grad_eps"), n, d, _clip_arg(ctx.clip),
                                          _dtype_code(x, "ddim_logprob"), _cuda.stream())
        return None, grad_eps, None, None, None


@register("ddim_logprob", "cuda")
def ddim_logprob_cuda(x, eps, x_prev, coef, clip):
    """Rows x, eps, x_prev [N, D] → log-prob [N] (fp32). ε̂ is cast to x's dtype (e.g. a bf16 U-Net output
    under autocast with fp32 latents) before the kernel, differentiably."""
    if (x.requires_grad or x_prev.requires_grad or coef.requires_grad) and torch.is_grad_enabled():
        raise RuntimeError("the cuda ddim_logprob differentiates w.r.t. eps only; detach x, x_prev and coef "
                           "(stored chain data) or use backend='torch'")
    eps = eps.to(x.dtype).contiguous()
    return DDIMLogProbCUDA.apply(x.contiguous(), eps, x_prev.to(x.dtype).contiguous(), coef, clip)


class PPOClipLossCUDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, new_logp, old_logp, advantages, clip_eps):
        n = new_logp.shape[0]
        code = _dtype_code(new_logp, "ppo_loss")
        ext = _cuda.ext()
        workspace = torch.empty(ext.ppo_workspace_floats(), device=new_logp.device, dtype=torch.float32)
        out = torch.empty(3, device=new_logp.device, dtype=torch.float32)
        ext.ppo_loss_forward(_cuda.check(new_logp, "new_logp"), _cuda.check(old_logp, "old_logp", new_logp.dtype),
                             _cuda.check(advantages, "advantages", new_logp.dtype), n, clip_eps,
                             _cuda.check(workspace, "workspace"), _cuda.check(out, "out"), code, _cuda.stream())
        ctx.save_for_backward(new_logp, old_logp, advantages)
        ctx.clip_eps = clip_eps
        loss, clip_frac, approx_kl = out.to(new_logp.dtype).unbind()
        ctx.mark_non_differentiable(clip_frac, approx_kl)
        return loss, clip_frac, approx_kl

    @staticmethod
    def backward(ctx, grad_loss, _grad_clip, _grad_kl):
        new_logp, old_logp, advantages = ctx.saved_tensors
        n = new_logp.shape[0]
        grad_loss = grad_loss.to(torch.float32).reshape(1).contiguous()
        grad_new = torch.empty_like(new_logp)
        _cuda.ext().ppo_loss_backward(_cuda.check(new_logp, "new_logp"), _cuda.check(old_logp, "old_logp"),
                                      _cuda.check(advantages, "advantages"), _cuda.check(grad_loss, "grad_loss"), n,
                                      ctx.clip_eps, _cuda.check(grad_new, "grad_new"),
                                      _dtype_code(new_logp, "ppo_loss"), _cuda.stream())
        return grad_new, None, None, None


@register("ppo_loss", "cuda")
def ppo_loss_cuda(new_logp, old_logp, advantages, clip_eps):
    """1-D rows (``ppo_clip_loss`` flattens and validates); old log-probs and advantages are cast to
    new_logp's dtype."""
    dtype = new_logp.dtype
    return PPOClipLossCUDA.apply(new_logp.contiguous(), old_logp.to(dtype).contiguous(),
                                 advantages.to(dtype).contiguous(), float(clip_eps))
