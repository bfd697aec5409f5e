"""DDIM sampler that returns the whole denoising chain and the log-prob of every transition.

Fine-tuning treats the S-step chain as an MDP (paper Eq. 9) of Gaussian policy steps, so the sampler must draw
x_prev from exactly the density whose log-prob it reports, and recompute that log-prob for a stored chain under
new parameters (``chain_log_prob``, the PPO update).

* **Timesteps** are "trailing": K−1, K−1−K/S, …, K/S−1, then ᾱ = 1 (the clean sample), so the chain starts at
  ᾱ_{K−1} ≈ 2e−7, from pure noise as its prior N(0, I) assumes; "leading" spacing (90 … 0 for K = 100) would
  start at ᾱ = 0.02 from a prior that does not match.
* **η** scales the DDIM variance σ_t² = η² (1−ᾱ_prev)/(1−ᾱ_t) (1 − ᾱ_t/ᾱ_prev). Fine-tuning uses η = 1.
* **Std floor σ_min = 0.1.** With η = 1 the last transition (to ᾱ = 1) has σ = 0 and the one before it
  σ ≈ 0.01: no (or a needle-sharp) density, and exploding PPO ratios. Each step's std is max(σ_t, σ_min) in
  sampling and in the log-prob alike, so the reported density is the one sampled from; the mean keeps the
  unfloored σ_t (σ_min = 0 is plain DDIM). 0.1 is 5 % of the [−1, 1] action range (DPPO floors at 0.1 too):
  large enough that float32 ratios are exact to ~1e−6 per unit of log-ratio, small enough that the extra action
  noise is below what Meta-World's controllers react to.
* **Deterministic mode** (evaluation) is DDIM with η = 0 and no noise, the probability-flow sampler: x_K maps
  to an action deterministically (seed the generator for repeatable evaluations).
* **Log-probs sum over all Tp × A dims** of the latent, unclamped: the MDP action of Eq. 9 is the whole latent
  a^{k−1}, and the next step depends on all of it, so only the full sum is the chain's exact likelihood ratio.
  (DPPO clamps each dimension's log-prob to [−5, 2] and averages over the executed Ta × A dims: tamer ratios,
  but not the chain's likelihood ratio.) The PPO update divides the sums by Tp × A by default
  (``--log-ratio mean``, ``losses.improvement_loss`` says why); the sampler reports the exact sums.
* **Few steps are biased even with a perfect ε̂.** For Gaussian data and the analytic optimal predictor the
  10-step chain reproduces the data mean but only 40–80 % of its variance (plug-in x̂0 discards Var[x0 | x_t];
  ``tests/test_ddim.py`` computes the chain's moments in closed form). Fine-tuning optimises the sampler that is
  actually run, so the bias is part of the policy being improved, not an error in it.
* **One owner of the step math.** Only ``DDIMSampler`` reads the coefficient table ``coef`` [S, 6] (columns
  c0 … c5 of ``sodp_fast.ops.ddim_step``): sampling, the PPO log-prob, the per-step mean (KL regulariser),
  offline fine-tuning's forward-posterior chains and the device-resident copy that CUDA graphs capture.
* **x̂0 is clipped** to the action bounds [−clip, clip] (Meta-World actions live in [−1, 1]); ``clip=None``
  disables it (for unbounded data such as the Gaussian known-answer test).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from sodp_fast.diffusion.schedule import NoiseSchedule
from sodp_fast.ops.ddim_step import NUM_COEF, ddim_logprob, ddim_mean_torch, ddim_step


@dataclass
class DDIMChain:
    """``latents[:, 0]`` is x_K (noise), ``latents[:, -1]`` the clean sample; ``log_probs[:, i]`` is the
    log-prob of ``latents[:, i] → latents[:, i + 1]``."""

    latents: torch.Tensor  # [B, S + 1, Tp, A]
    log_probs: torch.Tensor  # [B, S]

    @property
    def sample(self) -> torch.Tensor:
        return self.latents[:, -1]


class DDIMSampler:
    def __init__(self, schedule: NoiseSchedule, num_steps: int = 10, eta: float = 1.0, std_min: float = 0.1,
                 clip: float | None = 1.0):
        K = schedule.num_timesteps
        if not 1 <= num_steps <= K or K % num_steps:
            raise ValueError(f"num_steps must divide the {K} timesteps, got {num_steps}")
        if eta < 0 or std_min < 0:
            raise ValueError("eta and std_min must be >= 0")
        self.schedule, self.num_steps, self.eta, self.std_min, self.clip = schedule, num_steps, eta, std_min, clip
        self.timesteps = torch.arange(K - 1, -1, -(K // num_steps))  # [S]: 99, 89, …, 9
        self.coef = self.step_coefficients(eta, std_min)  # [S, 6] float64
        self.coef_deterministic = self.step_coefficients(0.0, 0.0)

    def step_coefficients(self, eta: float, std_min: float) -> torch.Tensor:
        ab = self.schedule.alphas_cumprod
        a_t = ab[self.timesteps]
        a_prev = torch.cat([ab[self.timesteps[1:]], torch.ones(1, dtype=ab.dtype)])
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        coef = torch.stack([1 / a_t.sqrt(), (1 - a_t).sqrt(), a_prev.sqrt(),
                            (1 - a_prev - sigma**2).clamp(min=0).sqrt(), sigma.clamp(min=std_min), a_t.sqrt()], 1)
        assert coef.shape == (self.num_steps, NUM_COEF)
        return coef

    @torch.no_grad()
    def sample(self, model, cond: torch.Tensor, shape: tuple[int, int], deterministic: bool = False,
               generator: torch.Generator | None = None, x_init: torch.Tensor | None = None,
               noise: torch.Tensor | None = None, backend: str | None = None) -> DDIMChain:
        """Draw B = cond.shape[0] chains of latents of ``shape`` = (Tp, A).

        ``x_init`` [B, Tp, A] and ``noise`` [B, S, Tp, A] replace the random draws (used by tests and by the
        CUDA-graph sampler, which fills static buffers).
        """
        b, dev = cond.shape[0], cond.device
        dtype = cond.dtype if cond.is_floating_point() else torch.float32
        x = x_init if x_init is not None else torch.randn((b, *shape), device=dev, dtype=dtype, generator=generator)
        if noise is None and not deterministic:
            noise = torch.randn((b, self.num_steps, *shape), device=dev, dtype=dtype, generator=generator)
        coef = (self.coef_deterministic if deterministic else self.coef).to(device=dev, dtype=dtype)
        latents, log_probs = [x], []
        for i, k in enumerate(self.timesteps.tolist()):
            eps = model(x, torch.full((b,), k, device=dev, dtype=torch.long), cond)
            x, logp = ddim_step(x, eps, None if deterministic else noise[:, i], coef[i], self.clip, backend)
            latents.append(x)
            log_probs.append(logp)
        return DDIMChain(torch.stack(latents, 1), torch.stack(log_probs, 1))

    def chain_log_prob(self, model, cond: torch.Tensor, latents: torch.Tensor, steps: torch.Tensor | None = None,
                       backend: str | None = None) -> torch.Tensor:
        """Log-probs of stored transitions under the current ``model`` (the PPO path), differentiable.

        ``latents`` [B, S + 1, Tp, A] with ``steps=None`` gives [B, S] for whole chains in one batched U-Net
        call over B × S; or pass per-row transitions ``latents`` [N, 2, Tp, A] with their step indices
        ``steps`` [N] (a minibatch drawn jointly over chains × steps) to get [N].
        """
        if steps is None:
            b, s1 = latents.shape[:2]
            if s1 != self.num_steps + 1:
                raise ValueError(f"expected chains of {self.num_steps + 1} latents, got {s1}")
            steps = torch.arange(self.num_steps, device=latents.device).repeat(b)
            x_t, x_prev = latents[:, :-1].flatten(0, 1), latents[:, 1:].flatten(0, 1)
            cond = cond.repeat_interleave(self.num_steps, 0)
            return self._transition_log_prob(model, cond, x_t, x_prev, steps, backend).view(b, self.num_steps)
        return self._transition_log_prob(model, cond, latents[:, 0], latents[:, 1], steps, backend)

    def _transition_log_prob(self, model, cond, x_t, x_prev, steps, backend):
        eps = model(x_t, self.timesteps.to(steps.device)[steps], cond)
        return ddim_logprob(x_t, eps, x_prev, self._rows(steps, x_t), self.clip, backend)

    def _rows(self, steps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.coef.to(device=like.device, dtype=like.dtype)[steps]

    def step_mean(self, model, cond: torch.Tensor, x_t: torch.Tensor, steps: torch.Tensor):
        """Mean [B, Tp·A] and (floored) std [B, 1] of p(x_{k−1} | x_k) for latents ``x_t`` [B, Tp, A] at sampler
        step indices ``steps`` [B], differentiable (the KL regulariser compares two models' means)."""
        eps = model(x_t, self.timesteps.to(steps.device)[steps], cond)
        return ddim_mean_torch(x_t.flatten(1), eps.flatten(1), self._rows(steps, x_t), self.clip)

    @torch.no_grad()
    def posterior_chain(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, S + 1, Tp, A] chains from the DDIM forward posterior that end exactly at ``x0`` [B, Tp, A]:
        x_K ~ q(x_K | x0), then x_{k−1} ~ q_σ(x_{k−1} | x_k, x0) with this sampler's (floored) std."""
        _, sq_1m_at, sq_aprev, dir_coef, std, sq_at = self.coef.to(device=x0.device, dtype=x0.dtype).unbind(1)
        z = torch.randn((x0.shape[0], self.num_steps + 1, *x0.shape[1:]), device=x0.device, dtype=x0.dtype,
                        generator=generator)
        x = sq_at[0] * x0 + sq_1m_at[0] * z[:, 0]
        latents = [x]
        for i in range(self.num_steps - 1):
            eps = (x - sq_at[i] * x0) / sq_1m_at[i]
            x = sq_aprev[i] * x0 + dir_coef[i] * eps + std[i] * z[:, i + 1]
            latents.append(x)
        latents.append(x0)
        return torch.stack(latents, 1)

    def to(self, device, dtype: torch.dtype = torch.float32) -> "DDIMSampler":
        """A copy whose coefficient tables already live on ``device`` in ``dtype``: sampling with it does no
        host→device copy (which a CUDA-graph capture does not allow)."""
        out = copy.copy(self)
        out.coef = self.coef.to(device, dtype)
        out.coef_deterministic = self.coef_deterministic.to(device, dtype)
        return out
