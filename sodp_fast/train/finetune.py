"""Task-guided RL fine-tuning of a pre-trained planner (paper §3.2, Algorithm 1 second loop, B.3).

The data path, top to bottom:

1. **Init.** The planner starts as a copy of the pre-trained one. ``ceil(n_init / num_envs)`` rollout
   iterations (≥ n_init episodes) fill B and B_target without updating. ``from_scratch`` (SODP_scratch,
   §5.5) then re-initialises the weights with the same config: as in the paper, its buffers start from the
   *pre-trained* model's rollouts (the normaliser's observation statistics are kept: they are data, not
   learned).
2. **Rollout** (``rollout.OnlineSource``): one iteration = every env plays one whole episode with the current
   policy; one batched ``planner.sample`` per chunk for all envs, the chain, its log-probs and the chunk
   reward (sum of the Ta executed rewards, γ = 1) stored per chunk.
3. **Buffers** (``buffers.py``): B ← the iteration's chunks (B keeps the last ``replay_iterations``
   iterations); B_target ← each episode if it ranks among the ``target_size`` most proficient.
4. **Update**: ``grad_steps`` (p_step) Adam steps on L_imp (Eq. 12, PPO clip over chains × denoising steps,
   ``batch_size`` transitions) + ``reg_weight`` · regulariser (BC Eq. 14 by default; KL Eq. 23, PL Eq. 24 or
   none: ``losses.py``); gradient-norm clipping; lr = lr₀ · lr_decay^iteration (exponential decay per
   iteration). p_step counts per iteration, i.e. per episode of every env: with ``num_envs = 1`` this is the
   paper's "p_step gradient steps per episode"; more envs give fewer updates per env step. The chunk reward
   enters L_imp through ``reward_norm``; the default ``step`` subtracts the mean reward of the same chunk
   index over the envs (so it needs ``num_envs`` ≥ 2), which removes the reward's growth through a Meta-World
   episode (``losses.py`` says why).
5. **Eval** every ``eval_every`` env steps (deterministic DDIM, fresh eval envs with a fixed seed, so every
   point of a learning curve sees the same episodes) and **checkpoint** every ``ckpt_every`` env steps, both
   at iteration boundaries.

Resume: a checkpoint holds the weights, Adam's moments, the two RNG states, both buffers and the counters;
env episode seeds derive from (seed, env, episode index), so a resumed run re-creates identical envs by
seeking to the iteration index, and ends bit-identical (on CPU) to a run that never stopped. Evaluation never
touches the training RNG.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from sodp_fast.checkpoint import load_planner, load_state_checked, load_tensors, planner_state, save_planner
from sodp_fast.errors import CheckpointError, DivergedError, SodpError
from sodp_fast.logging import RunLogger
from sodp_fast.policy import DiffusionPlanner
from sodp_fast.train.buffers import ReplayBuffer, TargetBuffer
from sodp_fast.train.losses import (LOG_RATIOS, REGULARIZERS, REWARD_NORMS, SIGNALS, RunningMoments, chunk_advantages,
                                    chunk_signal, improvement_loss, regularizer)
from sodp_fast.train.rollout import Episode, OnlineSource, Timers
from sodp_fast.train.runtime import resolve_device
from sodp_fast.train.state import generator_state, optimizer_from_flat, optimizer_to_flat, set_generator_state

STATE_FILE = "state.safetensors"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
STATE_KIND = "sodp_fast.finetune_state"


class FinetuneError(SodpError):
    """Unusable options, checkpoint or run folder for fine-tuning."""


@dataclass
class FinetuneConfig:
    out: str
    task: str
    ckpt: str | None = None         # pre-trained planner (required unless resuming)
    env_steps: int = 1_000_000
    num_envs: int = 8
    env_groups: int = 1             # vector envs pipelined: sample one while the others step (see rollout.py)
    num_workers: int | None = None  # env worker processes in all (None: one per CPU core)
    max_episode_steps: int = 500
    n_init: int = 10
    grad_steps: int = 10            # p_step per iteration
    batch_size: int = 256
    lr: float = 2e-6                # paper: 1e-5, which collapsed the tiny planner (see losses.py)
    lr_decay: float = 0.999         # per iteration
    clip_eps: float = 0.1
    grad_clip: float = 1.0
    reg: str = "bc"
    reg_weight: float = 1.0         # λ
    reward_norm: str = "step"       # Eq. 12 baseline: per chunk index (see losses.py)
    signal: str = "return"          # what weighs a chain: return-to-go from its chunk, or the chunk reward
    log_ratio: str = "mean"         # PPO ratio from the mean or the sum of the per-dimension log-ratios
    replay_iterations: int = 1
    target_size: int = 10           # n: proficient trajectories kept in B_target
    from_scratch: bool = False
    offline_data: str | None = None
    eval_every: int = 100_000
    eval_episodes: int = 10
    eval_num_envs: int = 10
    ckpt_every: int = 50_000
    seed: int = 0
    device: str = "auto"
    cuda_graphs: bool = False       # sample rollouts with CUDA-graph replays (GPU only; see rollout.OnlineSource)
    progress: bool = True

    # Options that may differ when resuming: they do not change what is computed.
    RESUMABLE = ("env_steps", "eval_every", "eval_episodes", "eval_num_envs", "ckpt_every", "num_workers",
                 "progress", "device", "ckpt", "out", "cuda_graphs")

    def __post_init__(self):
        if self.reg not in REGULARIZERS:
            raise FinetuneError(f"--reg must be one of {', '.join(REGULARIZERS)}, not {self.reg!r}")
        if self.reward_norm not in REWARD_NORMS:
            raise FinetuneError(f"--reward-norm must be one of {', '.join(REWARD_NORMS)}, not {self.reward_norm!r}")
        if self.log_ratio not in LOG_RATIOS:
            raise FinetuneError(f"--log-ratio must be one of {', '.join(LOG_RATIOS)}, not {self.log_ratio!r}")
        if self.signal not in SIGNALS:
            raise FinetuneError(f"--signal must be one of {', '.join(SIGNALS)}, not {self.signal!r}")
        if self.reward_norm == "step" and self.num_envs < 2:
            raise FinetuneError("--reward-norm step baselines each chunk with the same chunk of the other envs: "
                                "it needs --num-envs >= 2 (or choose --reward-norm batch)")
        for name in ("env_steps", "num_envs", "env_groups", "n_init", "grad_steps", "batch_size",
                     "replay_iterations", "target_size", "eval_every", "eval_episodes", "ckpt_every"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.env_groups > self.num_envs:
            raise FinetuneError(f"--env-groups ({self.env_groups}) cannot exceed --num-envs ({self.num_envs})")
        if not (self.lr > 0 and 0 < self.lr_decay <= 1 and self.clip_eps > 0):
            raise FinetuneError("need lr > 0, 0 < lr_decay <= 1 and clip_eps > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


# -- environments -----------------------------------------------------------------------------------------
EnvFactory = Callable[[int, int, int | None], object]  # (num_envs, seed, num_workers) -> vector env


def metaworld_env_factory(task: str, n_obs_steps: int, n_action_steps: int, max_episode_steps: int,
                          goal_seed: int) -> EnvFactory:
    """ChunkVecEnv builder; every group draws goals from the same pre-sampled pool (``goal_seed``)."""
    from sodp_fast.envs.metaworld import make_env
    from sodp_fast.envs.workers import ChunkVecEnv

    single = functools.partial(make_env, task, max_episode_steps=max_episode_steps, goal_seed=goal_seed)

    def make(num_envs: int, seed: int, num_workers: int | None = None):
        return ChunkVecEnv(task, num_envs, seed=seed, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
                           num_workers=num_workers, max_episode_steps=max_episode_steps, env_factory=single)

    return make


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def build_envs(make_env: EnvFactory, cfg: FinetuneConfig) -> list:
    """``env_groups`` vector envs with distinct seeds; the worker processes are shared out between them."""
    import os

    workers = cfg.num_workers if cfg.num_workers is not None else os.cpu_count() or 1
    per_group = [max(1, w) if workers else 0 for w in _split(workers, cfg.env_groups)]
    envs = []
    try:
        for g, n in enumerate(_split(cfg.num_envs, cfg.env_groups)):
            envs.append(make_env(n, cfg.seed * cfg.env_groups + g, min(per_group[g], n) if workers else 0))
    except BaseException:
        for e in envs:
            e.close()
        raise
    return envs


def check_dims(ckpt: str, planner: DiffusionPlanner, env) -> None:
    c = planner.config
    for name, have in (("obs_dim", env.obs_dim), ("action_dim", env.action_dim)):
        if getattr(c, name) != have:
            raise CheckpointError(f"{ckpt}: checkpoint has {name}={getattr(c, name)}, but the task env has "
                                  f"{name}={have}")


# -- the fine-tuning state and its update -----------------------------------------------------------------
class Finetuner:
    """Planner, optimiser, buffers, RNG and counters of one fine-tuning run."""

    def __init__(self, cfg: FinetuneConfig, planner: DiffusionPlanner, reference: DiffusionPlanner | None,
                 device: torch.device):
        self.cfg, self.planner, self.reference, self.device = cfg, planner, reference, device
        self.opt = torch.optim.Adam(planner.parameters(), lr=cfg.lr)
        self.replay = ReplayBuffer(cfg.replay_iterations)
        self.target = TargetBuffer(cfg.target_size, planner.config.horizon, planner.config.n_action_steps)
        self.running = RunningMoments()
        self.gen_rollout = torch.Generator(device).manual_seed(cfg.seed)
        self.gen_update = torch.Generator(device).manual_seed(cfg.seed + 1)
        self.iteration = self.env_steps = self.grad_steps = 0
        self.last_eval: dict = {}

    @property
    def init_iterations(self) -> int:
        return 0 if self.cfg.offline_data else math.ceil(self.cfg.n_init / self.cfg.num_envs)

    def absorb(self, ep: Episode) -> None:
        """Rollout → buffers."""
        self.replay.add(ep.chunks)
        for traj in ep.trajectories:
            self.target.offer(traj)
        self.running.update(chunk_signal(ep.chunks, self.cfg.signal))
        self.env_steps += ep.env_steps
        self.iteration += 1

    def reinitialize(self) -> None:
        """SODP_scratch: fresh weights with the same config; observation statistics kept."""
        torch.manual_seed(self.cfg.seed)
        fresh = DiffusionPlanner(self.planner.config).to(self.device)
        fresh.normalizer.load_state_dict(self.planner.normalizer.state_dict())
        self.planner.load_state_dict(fresh.state_dict())

    def update(self) -> dict[str, float]:
        """``grad_steps`` steps of L_imp + λ·regulariser on B (and B_target); returns mean metrics."""
        cfg, planner = self.cfg, self.planner
        lr = cfg.lr * cfg.lr_decay ** self.iteration
        for group in self.opt.param_groups:
            group["lr"] = lr
        chunks = self.replay.chunks
        adv = chunk_advantages(chunk_signal(chunks, cfg.signal), cfg.reward_norm, self.running, chunks.index)
        sums = torch.zeros(5, device=self.device)
        for _ in range(cfg.grad_steps):
            batch = self.replay.sample(cfg.batch_size, adv, self.gen_update)
            l_imp, clip_frac, approx_kl = improvement_loss(planner, batch, cfg.clip_eps, cfg.log_ratio)
            reg = regularizer(cfg.reg, planner, batch, self.target, self.reference, cfg.batch_size,
                              self.gen_update)
            loss = l_imp if reg is None else l_imp + cfg.reg_weight * reg
            if not torch.isfinite(loss):
                raise DivergedError(f"loss became {loss.item()} at gradient step {self.grad_steps + 1} "
                                    f"(iteration {self.iteration}, {self.env_steps} env steps); the last good "
                                    f"checkpoint is {Path(cfg.out) / STATE_FILE}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(planner.parameters(), cfg.grad_clip)
            self.opt.step()
            self.grad_steps += 1
            reg_value = reg.detach() if reg is not None else torch.zeros((), device=self.device)
            sums += torch.stack([l_imp.detach(), reg_value, clip_frac, approx_kl, grad_norm.detach()])
        names = ("loss_imp", f"loss_{cfg.reg}", "clip_frac", "approx_kl", "grad_norm")
        out = dict(zip(names, (sums / cfg.grad_steps).tolist()))
        if cfg.reg == "none":
            del out["loss_none"]
        return {**out, "lr": lr}

    # -- checkpointing --------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        opt_t, opt_meta = optimizer_to_flat(self.opt)
        rep_t, rep_meta = self.replay.state()
        tgt_t, tgt_meta = self.target.state()
        tensors = {**opt_t, **rep_t, **tgt_t, "rng.rollout": generator_state(self.gen_rollout),
                   "rng.update": generator_state(self.gen_update)}
        meta = {"kind": STATE_KIND, "finetune_config": self.cfg.to_dict(), "iteration": self.iteration,
                "env_steps": self.env_steps, "grad_steps": self.grad_steps, "optimizer": opt_meta,
                "replay": rep_meta, "target": tgt_meta, "running": self.running.state(),
                "last_eval": self.last_eval}
        save_planner(path, self.planner, meta, tensors)

    def load(self, path: Path, tensors: dict, meta: dict) -> None:
        _, state = planner_state(path, tensors, meta)
        load_state_checked(path, self.planner, state)
        optimizer_from_flat(self.opt, tensors, meta["optimizer"], where=str(path))
        self.replay.load(tensors, meta["replay"], self.device)
        self.target.load(tensors, meta["target"], self.device)
        self.running.load(meta["running"])
        set_generator_state(self.gen_rollout, tensors["rng.rollout"], str(path))
        set_generator_state(self.gen_update, tensors["rng.update"], str(path))
        self.iteration, self.env_steps, self.grad_steps = meta["iteration"], meta["env_steps"], meta["grad_steps"]
        self.last_eval = meta.get("last_eval", {})


# -- the driver -------------------------------------------------------------------------------------------
def _check_resumable(path: Path, meta: dict, cfg: FinetuneConfig) -> None:
    if meta.get("kind") != STATE_KIND:
        raise CheckpointError(f"{path}: not a fine-tuning state checkpoint")
    old = meta["finetune_config"]
    for k, v in cfg.to_dict().items():
        if k not in cfg.RESUMABLE and old.get(k) != v:
            raise FinetuneError(f"cannot resume {cfg.out}: option {k} was {old.get(k)!r}, now {v!r}")


def _load_start(cfg: FinetuneConfig, resume: bool, device):
    """(planner, reference for KL or None, resume state or None)."""
    run = Path(cfg.out)
    state_path = run / STATE_FILE
    if resume:
        tensors, meta = load_tensors(state_path)
        _check_resumable(state_path, meta, cfg)
        cfg_p, state = planner_state(state_path, tensors, meta)
        planner = DiffusionPlanner(cfg_p).to(device)
        resume_state = (state_path, tensors, meta)
    else:
        if state_path.exists():
            raise FinetuneError(f"{run} already holds a fine-tuning run; pass --resume or choose another --out")
        if not cfg.ckpt:
            raise FinetuneError("--ckpt (the pre-trained planner) is required")
        planner, _, _ = load_planner(cfg.ckpt, device)
        resume_state = None
    reference = None
    if cfg.reg == "kl":
        if not cfg.ckpt:
            raise FinetuneError("--reg kl needs --ckpt (the pre-trained model is the KL reference)")
        reference, _, _ = load_planner(cfg.ckpt, device)
        reference.requires_grad_(False).eval()
    return planner, reference, resume_state


def finetune(cfg: FinetuneConfig, resume: bool = False, make_env: EnvFactory | None = None) -> dict:
    """Run (or resume) fine-tuning in ``cfg.out``; returns the summary written to ``summary.json``.

    ``make_env(num_envs, seed, num_workers)`` builds a vector env with ChunkVecEnv's interface; the default
    is Meta-World's ``cfg.task`` (tests plug in a toy env here).
    """
    from sodp_fast.envs.tasks import canonical_task

    if make_env is None:
        cfg.task = canonical_task(cfg.task)
    device = resolve_device(cfg.device)
    planner, reference, resume_state = _load_start(cfg, resume, device)
    c = planner.config
    if make_env is None:
        from sodp_fast.envs.metaworld import ACTION_DIM, OBS_DIM

        check_dims(cfg.ckpt or cfg.out, planner, argparse.Namespace(obs_dim=OBS_DIM, action_dim=ACTION_DIM))
        make_env = metaworld_env_factory(cfg.task, c.n_obs_steps, c.n_action_steps, cfg.max_episode_steps,
                                         cfg.seed)
    timers = Timers(sync_cuda=device.type == "cuda")
    if cfg.offline_data:
        from sodp_fast.train.offline import OfflineSource

        source = OfflineSource(cfg.offline_data, cfg.task, c, cfg.num_envs, cfg.seed, device, timers)
    else:
        if cfg.cuda_graphs and device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed)
        source = OnlineSource(build_envs(make_env, cfg), device, timers, cuda_graphs=cfg.cuda_graphs)
    try:
        check_dims(cfg.offline_data or cfg.ckpt or str(Path(cfg.out) / STATE_FILE), planner,
                   source if cfg.offline_data else source.envs[0])
        tuner = Finetuner(cfg, planner, reference, device)
        if resume_state is not None:
            tuner.load(*resume_state)
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        (run / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        logger = RunLogger(run, resume_step=tuner.env_steps if resume_state else None)
        evaluator = Evaluator(make_env, cfg, timers)
        try:
            _loop(tuner, source, evaluator, logger, timers, fresh=resume_state is None)
        finally:
            evaluator.close()
            logger.close()
    finally:
        source.close()
    save_planner(run / MODEL_FILE, planner, {"finetuned_from": cfg.ckpt, "task": cfg.task,
                                             "env_steps": tuner.env_steps})
    summary = {"task": cfg.task, "env_steps": tuner.env_steps, "iterations": tuner.iteration,
               "grad_steps": tuner.grad_steps, **{f"final_{k}": v for k, v in tuner.last_eval.items()},
               "seconds": dict(timers.seconds)}
    (run / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


class Evaluator:
    """Evaluates on one eval vector env, opened on first use and kept open; every evaluation replays the same
    episodes (the env is sought back to episode 0), so each point of a learning curve sees the same goals."""

    def __init__(self, make_env: EnvFactory, cfg: FinetuneConfig, timers: Timers):
        self.make_env, self.cfg, self.timers, self.venv = make_env, cfg, timers, None

    def __call__(self, tuner: Finetuner) -> dict[str, float]:
        from sodp_fast.eval import evaluate

        cfg = self.cfg
        with self.timers("eval"):
            if self.venv is None:
                self.venv = self.make_env(min(cfg.eval_num_envs, cfg.eval_episodes), cfg.seed + 7919,
                                          cfg.num_workers)
            self.venv.seek(0)
            res = evaluate(tuner.planner, cfg.task, cfg.eval_episodes, seed=cfg.seed, venv=self.venv)
        tuner.last_eval = {"eval_success_rate": res["success_rate"], "eval_return_mean": res["return_mean"],
                           "eval_return_std": res["return_std"]}
        return tuner.last_eval

    def close(self) -> None:
        if self.venv is not None:
            self.venv.close()


def _loop(tuner: Finetuner, source, evaluate, logger: RunLogger, timers: Timers, fresh: bool) -> None:
    cfg = tuner.cfg
    run = Path(cfg.out)
    source.seek(tuner.iteration)
    if fresh:
        logger.log(0, **evaluate(tuner))
        if cfg.offline_data:
            source.fill_target(tuner.target)
        while tuner.iteration < tuner.init_iterations:
            tuner.absorb(source.collect(tuner.planner, tuner.gen_rollout))
        if cfg.from_scratch:
            tuner.reinitialize()
        tuner.save(run / STATE_FILE)
    t0, steps0 = time.perf_counter(), tuner.env_steps
    while tuner.env_steps < cfg.env_steps:
        before = tuner.env_steps
        ep = source.collect(tuner.planner, tuner.gen_rollout)
        tuner.absorb(ep)
        with timers("update"):
            metrics = tuner.update()
        rate = (tuner.env_steps - steps0) / (time.perf_counter() - t0)
        logger.log(tuner.env_steps, **metrics, train_return_mean=float(ep.returns.mean()),
                   train_success_rate=float(ep.success.mean()), env_steps_per_s=rate, **tuner.target.stats(),
                   **timers.shares())
        last = tuner.env_steps >= cfg.env_steps
        if last or tuner.env_steps // cfg.eval_every > before // cfg.eval_every:
            ev = evaluate(tuner)
            logger.log(tuner.env_steps, **ev)
            if cfg.progress:
                print(f"[{cfg.task}] {tuner.env_steps} env steps: success {ev['eval_success_rate']:.2f}, "
                      f"return {ev['eval_return_mean']:.1f} ({rate:.0f} env steps/s)", flush=True)
        if last or tuner.env_steps // cfg.ckpt_every > before // cfg.ckpt_every:
            tuner.save(run / STATE_FILE)
