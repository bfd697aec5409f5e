import math

import torch

from sodp_fast.diffusion.schedule import NoiseSchedule, cosine_betas, denoising_loss


def test_cosine_betas_match_closed_form():
    K, s = 100, 0.008
    f = [math.cos(((t / K) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(K + 1)]
    ref = [min(1 - f[t + 1] / f[t], 0.999) for t in range(K)]
    betas = cosine_betas(K)
    assert betas.dtype == torch.float64
    assert torch.allclose(betas, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0)
    assert betas.max() <= 0.999 and betas[-1] == 0.999  # the clip is active at the end of a cosine schedule


def test_alphas_cumprod_is_product_and_decreasing():
    sch = NoiseSchedule(100)
    prod, out = 1.0, []
    for b in sch.betas.tolist():
        prod *= 1 - b
        out.append(prod)
    assert torch.allclose(sch.alphas_cumprod, torch.tensor(out, dtype=torch.float64), rtol=1e-12)
    assert (sch.alphas_cumprod.diff() < 0).all()


def test_denoising_loss_zero_for_oracle_and_positive_otherwise():
    sch = NoiseSchedule(100)
    x0 = torch.randn(64, 12, 4, dtype=torch.float64)
    ab = sch.alphas_cumprod

    def oracle(x, k, cond):  # knows x0, so it can recover the exact noise
        a = ab[k].view(-1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    loss = denoising_loss(oracle, sch, x0, torch.zeros(64, 1))
    assert loss < 1e-16
    zero = denoising_loss(lambda x, k, c: torch.zeros_like(x), sch, x0, torch.zeros(64, 1), reduction="none")
    assert zero.shape == (64,) and 0.7 < zero.mean() < 1.3  # E‖ε‖² per dim = 1
