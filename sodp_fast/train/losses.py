"""Fine-tuning losses: the reward-improvement loss L_imp (Eq. 12) and the regularisers of Eq. 14, 23 and 24.

L_imp is PPO's clipped surrogate over every denoising step of a stored chain, the chain's weight broadcast to
all its steps (``sodp_fast.ops.ppo_clip_loss``). The regularisers differ in the target policy μ (Appendix E):

* ``bc`` (SODP, Eq. 14): μ = the proficient trajectories of B_target; the ε-prediction loss on their actions.
* ``kl`` (DPOK-like, Eq. 23): μ = the frozen pre-trained model; Σ_k KL(p_θ(x_{k−1}|x_k) ‖ p_pre(x_{k−1}|x_k))
  on the stored chains: Gaussians with the same std σ_k, so each KL is ‖μ_θ − μ_pre‖² / (2σ_k²) over Tp × A.
* ``pl`` (DLPO-like, Eq. 24): μ = θ itself; the ε-prediction loss on the model's own samples x_0 from B.
* ``none``: L_imp alone (DDPO / DPPO style).

The signal (``chunk_signal``). Eq. 12 weighs a chain by its chunk's own reward r(a⁰) (``signal="chunk"``); on
Meta-World that collapsed good planners (issue 13): the shaped reward pays for a move chunks after it is made, so
PPO on it did as much harm as on shuffled advantages. The default ``signal="return"`` weighs a chain by the
return-to-go from its chunk (γ = 1), the policy-gradient weight of the episodic objective, unbiased with the
per-index baseline below. Measurements: profiles/2026-12-02-cpu-2core-finetune-collapse/.

Reward normalisation (``chunk_advantages``). Meta-World rewards are all positive (a chunk earns up to ~80), so a
raw weight raises the likelihood of *every* sampled chain and the step size scales with the reward range. The
modes subtract a baseline that does not depend on the chain's own action (the gradient stays unbiased) and
divide by a scale:

* ``step`` (the default): r_{i,t} − mean_j r_{j,t} over the chains of B with the same chunk index t (the envs
  play in lock-step), divided by the std of these residuals. Meta-World's shaped reward grows through an episode
  as the arm nears the object or goal, so a batch-wide baseline gives early chunks negative and late chunks
  positive advantages whatever the action; the per-index mean removes that time trend. Leave-one-out is not
  needed: for groups of equal size n, r_i − mean = (n − 1)/n · (r_i − mean_{j≠i}), a factor the division by the
  std cancels. Needs ``num_envs`` ≥ 2 (a lone chain's residual is 0).
* ``batch``: standardised over all chains in B (DDPO's per-prompt statistics, DPPO's advantage normalisation);
  it keeps the time trend above.
* ``running``: standardised with running statistics over all chains seen so far (lags the policy).
* ``none``: Eq. 12 verbatim.
"""
from __future__ import annotations

import torch

from sodp_fast.ops.ppo_loss import ppo_clip_loss
from sodp_fast.train.buffers import RowBatch, TargetBuffer

REWARD_NORMS = ("step", "batch", "running", "none")
SIGNALS = ("return", "chunk")
LOG_RATIOS = ("mean", "sum")
REGULARIZERS = ("bc", "kl", "pl", "none")
_EPS = 1e-8


class RunningMoments:
    """Mean and variance of every reward seen so far (Chan et al. parallel update, float64)."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n, mean = x.numel(), float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / max(self.count - 1, 1)) ** 0.5

    def state(self) -> list[float]:
        return [self.count, self.mean, self.m2]

    def load(self, state: list[float]) -> None:
        self.count, self.mean, self.m2 = int(state[0]), float(state[1]), float(state[2])


def chunk_signal(chunks, signal: str) -> torch.Tensor:
    """The per-chain value Eq. 12 weighs a chain's log-ratio with (module doc: why ``return`` by default)."""
    if signal == "return":
        return chunks.returns
    if signal == "chunk":
        return chunks.rewards
    raise ValueError(f"signal must be one of {SIGNALS}, not {signal!r}")


def chunk_advantages(rewards: torch.Tensor, mode: str, running: RunningMoments | None = None,
                     index: torch.Tensor | None = None) -> torch.Tensor:
    """The per-chain weight of Eq. 12 (see module doc); ``index`` [M] is each chain's chunk index (``step``)."""
    if mode == "none":
        return rewards
    if mode == "batch":
        return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + _EPS)
    if mode == "running":
        return (rewards - running.mean) / (running.std + _EPS)
    if mode == "step":
        counts = torch.bincount(index).to(rewards.dtype)
        sums = torch.zeros_like(counts).index_add_(0, index, rewards)
        resid = rewards - (sums / counts.clamp(min=1))[index]
        return resid / (resid.std(unbiased=False) + _EPS)
    raise ValueError(f"reward normalisation must be one of {REWARD_NORMS}, not {mode!r}")


def improvement_loss(planner, batch: RowBatch, clip_eps: float, log_ratio: str = "mean"):
    """Eq. 12 on a minibatch of transitions → (loss, clip_frac, approx_kl). ``log_ratio="mean"`` (default, DPPO's
    convention): the ratio is exp of the mean, not the sum, of the Tp × A per-dimension log-ratios; with the sum,
    PPO's gradient was 60–100× BC's and λ = 1 BC could not hold a good planner (see the module doc's profile)."""
    if log_ratio not in LOG_RATIOS:
        raise ValueError(f"log_ratio must be one of {LOG_RATIOS}, not {log_ratio!r}")
    d = batch.transitions[0, 0].numel() if log_ratio == "mean" else 1
    new = planner.chain_log_prob(batch.obs, batch.transitions, batch.steps)
    return ppo_clip_loss(new / d, batch.old_log_probs / d, batch.advantages, clip_eps)


def bc_loss(planner, target: TargetBuffer, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Eq. 14: ε-prediction loss on (obs history, executed actions) pairs of proficient trajectories."""
    obs, actions = target.sample(batch_size, generator)
    return planner.loss(obs, actions, generator=generator)


def step_means(planner, obs: torch.Tensor, x_t: torch.Tensor, steps: torch.Tensor):
    """Mean [B, Tp·A] and std [B, 1] of p(x_{k−1} | x_k) at sampler step indices ``steps``."""
    return planner.sampler.step_mean(planner.model, planner.encode_obs(obs), x_t, steps)


def kl_loss(planner, reference, batch: RowBatch) -> torch.Tensor:
    """Eq. 23 on stored chains: E_chain Σ_k KL(p_θ ‖ p_pre), estimated from the minibatch's (chain, step) rows."""
    x_t = batch.transitions[:, 0]
    mean, std = step_means(planner, batch.obs, x_t, batch.steps)
    with torch.no_grad():
        ref_mean, _ = step_means(reference, batch.obs, x_t, batch.steps)
    per_row = ((mean - ref_mean) ** 2 / (2 * std**2)).sum(1)
    return per_row.mean() * planner.sampler.num_steps


def pl_loss(planner, batch: RowBatch, generator: torch.Generator) -> torch.Tensor:
    """Eq. 24: the ε-prediction loss on the model's own samples x_0 (clipped to the action box)."""
    return planner.loss(batch.obs, batch.clean.clamp(-1, 1), generator=generator)


def regularizer(kind: str, planner, batch: RowBatch, target: TargetBuffer | None, reference,
                batch_size: int, generator: torch.Generator) -> torch.Tensor | None:
    """The regulariser of variant ``kind`` (None for ``none``)."""
    if kind == "bc":
        return bc_loss(planner, target, batch_size, generator)
    if kind == "kl":
        return kl_loss(planner, reference, batch)
    if kind == "pl":
        return pl_loss(planner, batch, generator)
    if kind == "none":
        return None
    raise ValueError(f"regulariser must be one of {REGULARIZERS}, not {kind!r}")
