"""The DDIM sampler against independent float64 formulas, torch.distributions, and a known answer."""
import math

import pytest
import torch
from torch.distributions import Normal

from sodp_fast.diffusion.ddim import DDIMSampler
from sodp_fast.diffusion.schedule import NoiseSchedule
from sodp_fast.nn.unet import preset
from sodp_fast.ops.ddim_step import ddim_logprob, ddim_step
from sodp_fast.policy import DiffusionPlanner, PlannerConfig

K, S = 100, 10


def alphas_cumprod_reference():
    f = [math.cos(((t / K) + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(K + 1)]
    out, prod = [], 1.0
    for t in range(K):
        prod *= 1 - min(1 - f[t + 1] / f[t], 0.999)
        out.append(prod)
    return out


AB = alphas_cumprod_reference()
TIMESTEPS = [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]  # "trailing" spacing, last step to ᾱ = 1


def song_step(x, eps, z, i, eta, std_min, clip):
    """DDIM (Song et al. 2021, Eq. 12) written from scratch; returns x_prev, mean, std."""
    a = AB[TIMESTEPS[i]]
    a_prev = AB[TIMESTEPS[i + 1]] if i + 1 < S else 1.0
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    mean = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    std = max(sigma, std_min)
    return mean + std * z, mean, std


@pytest.mark.parametrize("eta,clip", [(1.0, 1.0), (1.0, None), (0.0, 1.0), (0.5, None)])
@pytest.mark.parametrize("d", [48, 44])
def test_step_matches_independent_formula_and_normal_logprob(eta, clip, d):
    sampler = DDIMSampler(NoiseSchedule(K), S, eta=eta, std_min=0.1, clip=clip)
    assert sampler.timesteps.tolist() == TIMESTEPS
    for i in range(S):
        x, eps, z = (torch.randn(7, d, dtype=torch.float64) for _ in range(3))
        out, logp = ddim_step(x, eps, z, sampler.coef[i], clip, backend="torch")
        ref, mean, std = song_step(x, eps, z, i, eta, 0.1, clip)
        assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12), f"step {i}"
        ref_logp = Normal(mean, std).log_prob(ref).sum(-1)
        assert torch.allclose(logp, ref_logp, rtol=1e-10, atol=1e-10), f"step {i}"
        stored = ddim_logprob(x, eps, out, sampler.coef[i], clip, backend="torch")
        assert torch.allclose(stored, ref_logp, rtol=1e-10, atol=1e-10)


def test_std_floor_gives_every_step_a_density():
    s = DDIMSampler(NoiseSchedule(K), S, eta=1.0, std_min=0.1)
    std = s.coef[:, 4]
    assert (std >= 0.1).all()
    assert std[-1] == 0.1  # η = 1: the last transition (to ᾱ = 1) has σ = 0 before the floor
    assert std[0] > 0.9  # early steps are far above the floor, untouched
    assert (DDIMSampler(NoiseSchedule(K), S, eta=1.0, std_min=0.0).coef[-1, 4] == 0).all()


def tiny_planner(dtype=torch.float64):
    torch.manual_seed(0)
    cfg = PlannerConfig(obs_dim=5, action_dim=3, unet=preset("tiny"))
    return DiffusionPlanner(cfg).to(dtype)


def test_chain_logprobs_are_the_sampled_transitions_densities():
    planner = tiny_planner()
    obs = torch.randn(4, 2, 5, dtype=torch.float64)
    chain = planner.sample(obs)
    assert chain.latents.shape == (4, S + 1, 12, 3) and chain.log_probs.shape == (4, S)
    cond = planner.encode_obs(obs)
    for i, k in enumerate(TIMESTEPS):
        x = chain.latents[:, i].flatten(1)
        eps = planner.model(chain.latents[:, i], torch.full((4,), k), cond).flatten(1)
        _, mean, std = song_step(x, eps, torch.zeros_like(x), i, 1.0, 0.1, 1.0)
        ref = Normal(mean, std).log_prob(chain.latents[:, i + 1].flatten(1)).sum(-1)
        assert torch.allclose(chain.log_probs[:, i], ref, rtol=1e-9, atol=1e-9)


def test_recomputed_logprobs_give_ratio_one_float64():
    planner = tiny_planner()
    obs = torch.randn(6, 2, 5, dtype=torch.float64)
    chain = planner.sample(obs)
    new = planner.chain_log_prob(obs, chain.latents)
    assert (new - chain.log_probs).exp().sub(1).abs().max() < 1e-6
    # the minibatch path: random (chain, step) rows
    rows = torch.randint(0, 6, (9,))
    steps = torch.randint(0, S, (9,))
    pairs = torch.stack([chain.latents[rows, steps], chain.latents[rows, steps + 1]], 1)
    per_row = planner.chain_log_prob(obs[rows], pairs, steps)
    assert (per_row - chain.log_probs[rows, steps]).exp().sub(1).abs().max() < 1e-6


def test_recomputed_logprobs_float32_within_rounding():
    # float32: the U-Net is evaluated on a differently shaped batch (B·S rows, mixed timesteps), which changes
    # the rounding of ε̂; the first step amplifies it by 1/√ᾱ_99 ≈ 2e3. Log-ratios stay far below PPO's clip.
    planner = tiny_planner(torch.float32)
    obs = torch.randn(6, 2, 5)
    chain = planner.sample(obs)
    new = planner.chain_log_prob(obs, chain.latents)
    assert (new - chain.log_probs).exp().sub(1).abs().max() < 1e-3


def test_logprob_differentiable_and_changes_with_parameters():
    planner = tiny_planner()
    obs = torch.randn(3, 2, 5, dtype=torch.float64)
    chain = planner.sample(obs)
    planner.chain_log_prob(obs, chain.latents).sum().backward()
    grads = [p.grad for p in planner.model.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    with torch.no_grad():
        for p in planner.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert (planner.chain_log_prob(obs, chain.latents) - chain.log_probs).abs().max() > 1e-3


def test_deterministic_mode_depends_only_on_initial_noise():
    planner = tiny_planner()
    obs = torch.randn(3, 2, 5, dtype=torch.float64)
    x_init = torch.randn(3, 12, 3, dtype=torch.float64)
    a = planner.sample(obs, deterministic=True, x_init=x_init).sample
    b = planner.sample(obs, deterministic=True, x_init=x_init).sample
    c = planner.sample(obs, deterministic=False, x_init=x_init).sample
    assert torch.equal(a, b) and not torch.allclose(a, c)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(planner.sample(obs, deterministic=True, generator=g1).sample,
                       planner.sample(obs, deterministic=True, generator=g2).sample)


def test_bad_step_count_rejected():
    with pytest.raises(ValueError, match="divide"):
        DDIMSampler(NoiseSchedule(K), 7)


# --- known answer: Gaussian data, analytic optimal ε-predictor ---------------------------------------------

MU = torch.linspace(-0.5, 0.8, 48, dtype=torch.float64).view(12, 4)
SD = torch.linspace(0.2, 1.5, 48, dtype=torch.float64).view(12, 4)


def optimal_eps(x, k, cond):
    """E[ε | x_k] for x_0 ~ N(MU, SD²): √(1−ᾱ)(x − √ᾱ μ) / (ᾱ σ² + 1 − ᾱ)."""
    a = torch.tensor(AB, dtype=torch.float64)[k].view(-1, 1, 1)
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * SD**2 + 1 - a)


def chain_moments(eta, std_min, deterministic):
    """Exact mean and variance of the S-step sampler's output: every step is affine in x plus Gaussian noise,
    so moments propagate in closed form (independent of the sampler's code)."""
    m, v = torch.zeros_like(MU), torch.ones_like(SD)
    for i, k in enumerate(TIMESTEPS):
        a = AB[k]
        g = math.sqrt(1 - a) / (a * SD**2 + 1 - a)  # ε̂ = g (x − √a μ)
        a_prev = AB[TIMESTEPS[i + 1]] if i + 1 < S else 1.0
        e = 0.0 if deterministic else eta
        sigma = e * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        # x0 = (x − √(1−a) ε̂)/√a ; mean = √a_prev x0 + √(1 − a_prev − σ²) ε̂  → P x + q
        p_eps, q_eps = g, -g * math.sqrt(a) * MU
        p_x0 = (1 - math.sqrt(1 - a) * p_eps) / math.sqrt(a)
        q_x0 = -math.sqrt(1 - a) * q_eps / math.sqrt(a)
        c_dir = math.sqrt(max(1 - a_prev - sigma**2, 0.0))
        P, q = math.sqrt(a_prev) * p_x0 + c_dir * p_eps, math.sqrt(a_prev) * q_x0 + c_dir * q_eps
        std = 0.0 if deterministic else max(sigma, std_min)
        m, v = P * m + q, P**2 * v + std**2
    return m, v


@pytest.mark.parametrize("eta,std_min,deterministic", [(1.0, 0.0, False), (1.0, 0.1, False), (0.0, 0.0, True)])
def test_gaussian_known_answer(eta, std_min, deterministic):
    torch.manual_seed(1)
    n = 20000
    sampler = DDIMSampler(NoiseSchedule(K), S, eta=eta, std_min=std_min, clip=None)
    x = sampler.sample(optimal_eps, torch.zeros(n, 1, dtype=torch.float64), (12, 4), deterministic).sample
    m_ref, v_ref = chain_moments(eta, std_min, deterministic)
    # 5 standard errors, over 48 independent dims
    assert ((x.mean(0) - m_ref).abs() < 5 * (v_ref / n).sqrt()).all()
    assert ((x.var(0) / v_ref - 1).abs() < 5 * math.sqrt(2 / n)).all()
    # the chain reproduces the data mean; its variance is the data's shrunk by 10-step discretisation
    assert ((x.mean(0) - MU).abs() < 0.03 * SD + 5 * (v_ref / n).sqrt()).all()
    assert (v_ref < SD**2 + std_min**2 + 1e-12).all() and (v_ref > 0.2 * SD**2).all()
