import copy

import pytest
import torch

from sodp_fast.train.buffers import ReplayBuffer, Chunks, TargetBuffer, Trajectory
from sodp_fast.train.losses import (RunningMoments, bc_loss, chunk_advantages, improvement_loss, kl_loss,
                                    pl_loss, step_means)
from toy_env import OBS_DIM, TARGET, toy_planner_config
from sodp_fast.policy import DiffusionPlanner


@pytest.fixture
def planner():
    torch.manual_seed(0)
    return DiffusionPlanner(toy_planner_config())


def _replay(planner, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 2, OBS_DIM, generator=g)
    chain = planner.sample(obs, generator=g)
    buf = ReplayBuffer()
    rewards = torch.randn(n, generator=g)
    buf.add(Chunks(obs, chain.latents, chain.log_probs, rewards, rewards, torch.arange(n) // 4))
    return buf


def test_ratio_is_one_before_the_first_update(planner):
    buf = _replay(planner)
    c = buf.chunks
    whole = planner.chain_log_prob(c.obs, c.latents)
    assert torch.allclose(whole, c.log_probs, atol=1e-4, rtol=1e-5)
    batch = buf.sample(128, torch.randn(len(c)), torch.Generator().manual_seed(1))
    loss, clip_frac, approx_kl = improvement_loss(planner, batch, clip_eps=0.1)
    assert clip_frac.item() == 0.0 and abs(approx_kl.item()) < 1e-6
    assert torch.allclose(loss, -batch.advantages.mean(), atol=1e-4)


def _grad_norm(planner, loss):
    planner.zero_grad()
    loss.backward()
    return sum(p.grad.abs().sum() for p in planner.parameters() if p.grad is not None)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clipping_zeroes_the_gradient_outside_the_band(planner, sign):
    buf = _replay(planner)
    batch = buf.sample(64, torch.full((len(buf),), sign), torch.Generator().manual_seed(1))
    # ρ = e^{±1}: beyond 1 + ε for A > 0 and below 1 − ε for A < 0 → the clipped term wins, no gradient
    d = batch.transitions[0, 0].numel()  # the ratio is per dimension: shift the summed log-probs by ±d
    batch.old_log_probs = batch.old_log_probs - sign * d
    loss, clip_frac, _ = improvement_loss(planner, batch, clip_eps=0.2)
    assert clip_frac.item() == 1.0
    assert _grad_norm(planner, loss) == 0
    # on the other side of the band the unclipped term is the max: a gradient flows
    batch.old_log_probs = batch.old_log_probs + 2 * sign * d
    loss, _, _ = improvement_loss(planner, batch, clip_eps=0.2)
    assert _grad_norm(planner, loss) > 0


def test_bc_pulls_samples_toward_the_target(planner):
    target = TargetBuffer(capacity=1, horizon=8, n_action_steps=4)
    obs = torch.randn(1, 2, OBS_DIM).repeat(4, 1, 1)
    target.offer(Trajectory(obs, torch.tensor(TARGET).repeat(16, 1), 0.0, True))
    g = torch.Generator().manual_seed(0)

    def distance():
        s = planner.sample(obs[:1].repeat(64, 1, 1), generator=torch.Generator().manual_seed(5)).sample
        return (s.mean((0, 1)) - torch.tensor(TARGET)).norm().item()

    before = distance()
    opt = torch.optim.Adam(planner.parameters(), lr=3e-3)
    for _ in range(60):
        loss = bc_loss(planner, target, 64, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = distance()
    assert after < 0.5 * before, (before, after)


def test_kl_is_zero_at_the_reference_and_matches_the_gaussian_formula(planner):
    reference = copy.deepcopy(planner).requires_grad_(False)
    buf = _replay(planner)
    batch = buf.sample(32, torch.zeros(len(buf)), torch.Generator().manual_seed(2))
    assert kl_loss(planner, reference, batch).item() == 0.0
    with torch.no_grad():
        for p in planner.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    kl = kl_loss(planner, reference, batch)
    assert kl.item() > 0 and _grad_norm(planner, kl) > 0
    # KL(N(m1, s²) ‖ N(m2, s²)) per row equals E_{x~p1}[log p1 − log p2]; check the closed form by Monte Carlo
    x_t, steps = batch.transitions[:1, 0], batch.steps[:1]
    with torch.no_grad():
        m1, s = step_means(planner, batch.obs[:1], x_t, steps)
        m2, _ = step_means(reference, batch.obs[:1], x_t, steps)
        x = m1 + s * torch.randn(200_000, m1.shape[1], generator=torch.Generator().manual_seed(3))
        mc = (((x - m2) ** 2 - (x - m1) ** 2) / (2 * s**2)).sum(1).mean()
        closed = ((m1 - m2) ** 2 / (2 * s**2)).sum()
    assert abs(mc - closed) < 0.05 * closed + 1e-3


def test_pl_loss_is_a_finite_differentiable_scalar(planner):
    buf = _replay(planner)
    batch = buf.sample(32, torch.zeros(len(buf)), torch.Generator().manual_seed(2))
    loss = pl_loss(planner, batch, torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and _grad_norm(planner, loss) > 0


def test_reward_normalisations():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert torch.equal(chunk_advantages(r, "none"), r)
    b = chunk_advantages(r, "batch")
    assert abs(b.mean().item()) < 1e-6 and abs(b.std(unbiased=False).item() - 1) < 1e-5
    running = RunningMoments()
    running.update(r[:2])
    running.update(r[2:])
    assert abs(running.mean - r.mean().item()) < 1e-9 and abs(running.std - r.std().item()) < 1e-6
    assert torch.allclose(chunk_advantages(r, "running", running), (r - r.mean()) / r.std())
    with pytest.raises(ValueError):
        chunk_advantages(r, "bogus")


def test_step_baseline_removes_what_all_envs_share_at_a_chunk_index():
    """Rows in (chunk, env) order, 3 chunks × 4 envs: a reward that grows with the chunk index (the same for
    every env) earns no advantage; what differs between envs at the same index survives, standardised."""
    index = torch.arange(3).repeat_interleave(4)
    growth = 10.0 * index.float()
    assert torch.equal(chunk_advantages(growth, "step", index=index), torch.zeros(12))
    per_env = torch.tensor([1.0, -1.0, 0.0, 0.0]).repeat(3)
    a = chunk_advantages(growth + per_env, "step", index=index)
    assert torch.allclose(a, per_env / per_env.std(unbiased=False))
    assert (chunk_advantages(growth + per_env, "batch")[:4] < 0).all()  # the batch baseline ranks by time
    # a group of unequal size (chains of another episode length) still gets its own mean subtracted
    a = chunk_advantages(torch.tensor([1.0, 3.0, 5.0]), "step", index=torch.tensor([0, 0, 1]))
    assert a[2] == 0 and a[0] == -a[1] and a[1] > 0
