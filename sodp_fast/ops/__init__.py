"""Fused hot-path ops, each beside its PyTorch reference, behind ``sodp_fast.ops.dispatch``."""
from sodp_fast.ops import ddim_step, film_epilogue, ppo_loss  # noqa: F401  (registers backends)
