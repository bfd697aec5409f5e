"""Conv-block epilogue of the U-Net's residual blocks: GroupNorm → Mish → FiLM (scale, shift) → + residual.

Diffusion Policy's ConditionalResidualBlock1D runs conv → GroupNorm → Mish, then FiLM on the first block's
output and the residual add on the second's; every elementwise stage after the convolution is one memory pass
in eager PyTorch. This op is that whole epilogue, so a fused kernel reads the conv output once and writes once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sodp_fast.ops.dispatch import get, register


@register("film_epilogue", "torch")
def film_epilogue_torch(h, gn_weight, gn_bias, num_groups, scale=None, shift=None, residual=None, eps=1e-5):
    """h [B, C, T]; scale, shift [B, C] (or None); residual [B, C, T] (or None)."""
    y = F.mish(F.group_norm(h, num_groups, gn_weight, gn_bias, eps))
    if scale is not None:
        y = y * scale.unsqueeze(-1) + shift.unsqueeze(-1)
    if residual is not None:
        y = y + residual
    return y


def film_epilogue(h, gn_weight, gn_bias, num_groups, scale=None, shift=None, residual=None, eps=1e-5, backend=None):
    if (scale is None) != (shift is None):
        raise ValueError("FiLM needs both scale and shift, or neither")
    fn = get("film_epilogue", backend, h.device)
    return fn(h, gn_weight, gn_bias, num_groups, scale, shift, residual, eps)
