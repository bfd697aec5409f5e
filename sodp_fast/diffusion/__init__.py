"""Noise schedule, training loss and DDIM sampler: the numerically exact diffusion core."""
