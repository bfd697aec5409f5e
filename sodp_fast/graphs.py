"""CUDA-graph-captured DDIM sampling: the whole S-step chain (U-Net forwards, fused steps, log-probs) replayed
as one graph per batch size. At rollout batch sizes (one chain per environment, 8 … 256) the default U-Net's
~60 kernels per forward × 10 steps are launch-bound in eager PyTorch; a replay launches them from one host call.

* **Static buffers** per captured batch size (observations, x_K, noise, and the chain written into the graph's
  pool); a call returns copies of its rows, or with ``clone_outputs=False`` views the next replay overwrites.
* **Fresh noise on every replay.** The captured region starts with ``x_K.normal_()`` and ``noise.normal_()``
  on the default CUDA generator, which is graph-safe (Philox; "CUDA Graph-safe RNG states" in ATen's
  CUDAGeneratorImpl.h): each replay reads the generator's seed/offset and advances the offset by the region's
  recorded total, so replays draw new numbers and ``torch.cuda.manual_seed`` makes them repeatable. Only the
  default generator may be used in capture, hence no ``generator`` on the graph path. ``last_noise`` exposes
  the draws, which is how tests compare a replay with eager sampling on the same noise.
* **The eager code path, captured.** The graph runs ``DDIMSampler.sample`` itself, from a copy of the sampler
  whose coefficient tables are already on the device in float32, so it does no host→device copy (not allowed
  in capture) and computes exactly what eager sampling computes. Parameters are read in place: optimizer steps
  and ``load_state_dict`` are seen by later replays; replacing a parameter tensor object is not.
* **Warm-up on a side stream** (lazy init, cuDNN/cuBLAS handles, Triton compilation, as capture requires), then
  capture into one memory pool for all batch sizes: safe because every graph's outputs stay referenced and
  replays run one after another on one stream.
* **Fallback.** On CPU, or if capture fails (logged once), calls run the same eager sampler.
* **Padding.** A batch b runs on the smallest captured size ≥ b (rows are independent: conv and GroupNorm never
  mix samples); batches over the largest size run in chunks of it.

Only sampling is captured; the PPO update step runs eagerly.
"""
from __future__ import annotations

import bisect
import contextlib
import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from sodp_fast.diffusion.ddim import DDIMChain

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    obs: torch.Tensor  # [B, To, obs_dim]
    x_init: torch.Tensor  # [B, Tp, A]
    noise: torch.Tensor | None  # [B, S, Tp, A]; None when deterministic
    chain: DDIMChain  # outputs, rewritten by every replay


def default_batch_sizes(max_batch: int) -> list[int]:
    """Powers of two below ``max_batch``, and ``max_batch``: padding then wastes < half a batch."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return [2**i for i in range((max_batch - 1).bit_length())] + [max_batch]


class GraphedSampler:
    """``GraphedSampler(planner, 256)(obs_hist) -> DDIMChain``, graph-replayed on CUDA, eager elsewhere.

    ``batch_sizes``: an int (the largest batch; powers of two below it are captured too) or the exact sizes to
    capture. ``backend`` selects the ``ddim_step`` implementation (see ``sodp_fast.ops.dispatch``). ``model``
    replaces ``planner.model`` as the noise model (e.g. a ``torch.compile``'d copy; benchmarks use it).
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the U-Net under autocast on CUDA; latents, DDIM steps and
    log-probs stay float32. Graphs are captured lazily on first use of a size, or all at once by ``capture()``.
    """

    def __init__(self, planner, batch_sizes: int | Sequence[int] = 256, deterministic: bool = False,
                 backend: str | None = "auto", autocast_dtype: torch.dtype | None = None,
                 clone_outputs: bool = True, warmup_iters: int = 2, model=None):
        sizes = default_batch_sizes(batch_sizes) if isinstance(batch_sizes, int) else sorted(set(batch_sizes))
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive, got {batch_sizes}")
        self.planner, self.batch_sizes, self.deterministic, self.backend = planner, sizes, deterministic, backend
        self.clone_outputs, self.warmup_iters = clone_outputs, warmup_iters
        self.model = planner.model if model is None else model
        self.device = next(planner.parameters()).device
        self.autocast_dtype = autocast_dtype if self.device.type == "cuda" else None
        # the planner's sampler with device-resident float32 coefficient tables (see the module docstring)
        self._sampler = planner.sampler.to(self.device, torch.float32)
        self.use_graphs = self.device.type == "cuda"
        self._graphs: dict[int, _Captured] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._last: _Captured | None = None

    # ---- the computation that eager calls run and graphs capture -------------------------------------------
    def _float_eps(self, x, k, cond):  # bf16 ε̂ under autocast → the latents' dtype, so DDIM steps stay float32
        return self.model(x, k, cond).to(x.dtype)

    @torch.no_grad()
    def eager(self, obs_hist: torch.Tensor, generator: torch.Generator | None = None,
              x_init: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> DDIMChain:
        """What a replay computes, uncaptured. Without autocast it is literally ``planner.sample``'s call; with it,
        one autocast region spans the chain so weights are cast once per chain, not once per step."""
        p = self.planner
        if self.autocast_dtype is None:
            model, ctx = self.model, contextlib.nullcontext()
        else:
            model, ctx = self._float_eps, torch.autocast("cuda", dtype=self.autocast_dtype)
        with ctx:
            return self._sampler.sample(model, p.encode_obs(obs_hist), p.action_shape, self.deterministic,
                                        generator, x_init=x_init, noise=noise, backend=self.backend)

    # ---- capture --------------------------------------------------------------------------------------------
    def capture(self) -> "GraphedSampler":
        """Capture every batch size now (keeps capture time out of the first calls)."""
        for b in self.batch_sizes:
            if not self.use_graphs or self._graph_for(b) is None:  # None: capture failed, sampling eagerly now
                break
        return self

    def _graph_for(self, b: int) -> _Captured | None:
        if b in self._graphs:
            return self._graphs[b]
        c, s, dev = self.planner.config, self._sampler.num_steps, self.device
        obs = torch.zeros(b, c.n_obs_steps, c.obs_dim, device=dev)
        x_init = torch.empty(b, c.horizon, c.action_dim, device=dev)
        noise = None if self.deterministic else torch.empty(b, s, c.horizon, c.action_dim, device=dev)

        def body() -> DDIMChain:
            x_init.normal_()
            if noise is not None:
                noise.normal_()
            return self.eager(obs, x_init=x_init, noise=noise)

        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_iters):
                body()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                chain = body()
        except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly instead
            log.warning("CUDA-graph capture of the sampler failed at batch %d (%s: %s); sampling eagerly from "
                        "now on", b, type(e).__name__, e)
            self.use_graphs = False
            self._graphs.clear()
            return None
        self._graphs[b] = _Captured(graph, obs, x_init, noise, chain)
        return self._graphs[b]

    # ---- calls ----------------------------------------------------------------------------------------------
    def __call__(self, obs_hist: torch.Tensor, generator: torch.Generator | None = None) -> DDIMChain:
        """B chains for obs_hist [B, To, obs_dim]. ``generator`` works on the eager path only (replays draw
        from the default CUDA generator: seed it with ``torch.cuda.manual_seed``)."""
        if self.use_graphs and generator is not None:
            raise ValueError("graph replays draw from the default CUDA generator; seed it with "
                             "torch.cuda.manual_seed instead of passing a generator")
        if not self.use_graphs:
            return self.eager(obs_hist, generator)
        parts, chunk = [], self.batch_sizes[-1]
        for start in range(0, obs_hist.shape[0], chunk):
            part = self._replay(obs_hist[start:start + chunk])
            if part is None:  # capture failed just now: run the whole batch eagerly
                return self.eager(obs_hist)
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return DDIMChain(torch.cat([p.latents for p in parts]), torch.cat([p.log_probs for p in parts]))

    def _replay(self, obs: torch.Tensor) -> DDIMChain | None:
        r = obs.shape[0]
        cap = self._graph_for(self.batch_sizes[bisect.bisect_left(self.batch_sizes, r)])
        if cap is None:
            return None
        cap.obs[:r].copy_(obs)  # rows past r keep earlier (finite) observations: padding
        cap.graph.replay()
        self._last = cap
        lat, lp = cap.chain.latents[:r], cap.chain.log_probs[:r]
        return DDIMChain(lat.clone(), lp.clone()) if self.clone_outputs else DDIMChain(lat, lp)

    def last_noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x_K, noise) buffers of the graph replayed last, all its captured rows (valid until the next call)."""
        if self._last is None:
            raise RuntimeError("no graph has been replayed yet")
        return self._last.x_init, self._last.noise

