"""Exponential moving average of the weights, the model that pre-training hands on.

Decay schedule as in Diffusion Policy's EMAModel: ``decay(n) = 1 - (1 + n)^-power`` clipped to
``[0, max_decay]`` with power 0.75, so early on the average follows the fast-moving weights closely (0.41
after 1 step, 0.97 after 100, 0.995 after 1k) and later it averages over ~1/(1-0.9999) = 10k steps.  The
decay depends only on the step number, which is checkpointed, so a resumed run averages identically.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of ``model`` updated in place after every optimiser step (one fused kernel per dtype)."""

    def __init__(self, model: nn.Module, power: float = 0.75, max_decay: float = 0.9999):
        self.power, self.max_decay = power, max_decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._ema, self._src = list(self.model.parameters()), list(model.parameters())

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimiser step ``step`` (1-based)."""
        weight = 1.0 - min(max(0.0, 1.0 - (1.0 + step) ** -self.power), self.max_decay)
        torch._foreach_lerp_(self._ema, [p.detach() for p in self._src], weight)
