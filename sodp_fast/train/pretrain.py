"""Multi-task pre-training (paper §3.1, Algorithm 1 first loop, B.3): ε-prediction loss (Eq. 7) on windows
drawn uniformly from all tasks' transitions, no rewards and no task ids. Added, as in Diffusion Policy:
gradient-norm clipping and an EMA of the weights (``ema.py``), the model handed on.

The dataset lives on the training device when it fits, so a batch is two kernels with no host round trip; the
loss is synchronised only every ``log_every`` steps. Every random draw comes from two generators checkpointed
with the weights, the EMA and Adam's moments, so a killed and resumed run ends bit-identical (on CPU) to one that
never stopped. DDP (``torchrun``): ``batch_size`` is global, each rank has its own generators; rank 0 writes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sodp_fast.checkpoint import load_state_checked, planner_state, save_planner
from sodp_fast.envs.tasks import resolve_tasks
from sodp_fast.errors import CheckpointError, ConfigError, DivergedError, SodpError, check_fits
from sodp_fast.logging import RunLogger
from sodp_fast.nn.unet import PRESETS, preset
from sodp_fast.options import Options, opt
from sodp_fast.policy import DiffusionPlanner, PlannerConfig
from sodp_fast.train.batches import WindowBatches
from sodp_fast.train.ema import EMA
from sodp_fast.train.run import (Progress, TrainingRun, load_generator_state, load_optimizer_state, optimizer_state,
                                 record)
from sodp_fast.train.runtime import Runtime, check_device, setup, teardown

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
STATE_KIND = "sodp_fast.pretrain_state"
PretrainError = ConfigError  # unusable dataset or options for pre-training


@dataclass
class PretrainConfig(Options):
    data: str = opt(help="dataset folder (sodp data generate / import-mtdiff)")
    out: str = opt(help="run folder: config.json, metrics, checkpoints, model.safetensors")
    tasks: list[str] | None = opt(None, "subset of the dataset's tasks (names, comma list or set name; none: all)")
    steps: int = opt(500_000, "optimiser steps", low=1)
    batch_size: int = opt(256, "global batch (split across DDP processes)", low=1)
    lr: float = opt(1e-4, "Adam learning rate (constant)")
    grad_clip: float = opt(1.0, "max gradient norm")
    ema_power: float = opt(0.75, "EMA decay warm-up power")
    ema_max_decay: float = opt(0.9999, "EMA decay ceiling")
    preset: str = opt("default", "U-Net size", choices=sorted(PRESETS))
    num_timesteps: int = opt(100, "diffusion steps K", low=1)
    seed: int = opt(0, "seed of the weights and of every random draw")
    ckpt_every: int = opt(20_000, "steps between checkpoints", low=1)
    log_every: int = opt(100, "steps between metric records", low=1)
    device: str = opt("auto", "auto, cpu, cuda, cuda:1 ...")
    amp: str = opt("auto", "auto = bf16 autocast on CUDA only", choices=["auto", "bf16", "off"])
    data_on_device: str = opt("auto", "hold the dataset on the training device (auto: when it takes < half "
                              "its free memory)", choices=["auto", "yes", "no"])
    eval_batch: int = opt(256, "fixed batch on which the EMA's loss is logged", low=1)
    progress: bool = opt(True, "progress reporting (a bar on a terminal, plain lines otherwise)")

    RESUMABLE = ("steps", "ckpt_every", "log_every", "progress", "out")  # a moved run folder still resumes

    def __post_init__(self):
        super().__post_init__()
        if not self.lr > 0 or not self.grad_clip > 0:
            raise PretrainError(f"--lr and --grad-clip must be > 0, got {self.lr} and {self.grad_clip}")
        if not 0 <= self.ema_max_decay < 1 or not self.ema_power > 0:
            raise PretrainError("need --ema-power > 0 and 0 <= --ema-max-decay < 1")
        if self.tasks is not None:
            self.tasks = resolve_tasks(self.tasks)
        check_device(self.device)


def load_windows(cfg: PretrainConfig, pc: PlannerConfig, runtime: Runtime):
    """Load and check the dataset; returns (WindowBatches, obs_stats, summary dict)."""
    from sodp_fast.data.format import load_dataset
    from sodp_fast.data.windows import concat_episode_ends
    from sodp_fast.envs.metaworld import ACTION_DIM, OBS_DIM

    root = Path(cfg.data)
    ds = load_dataset(root, cfg.tasks)
    if not ds.tasks or sum(d.num_transitions for d in ds.tasks.values()) == 0:
        raise PretrainError(f"{root}: the dataset holds no transitions")
    if (ds.obs_dim, ds.action_dim) != (OBS_DIM, ACTION_DIM):
        raise PretrainError(f"{root}: observations/actions have dims {ds.obs_dim}/{ds.action_dim}, but the "
                            f"Meta-World tasks {', '.join(ds.tasks)} have {OBS_DIM}/{ACTION_DIM}")
    obs = np.concatenate([d.observations for d in ds.tasks.values()])
    actions = np.concatenate([d.actions for d in ds.tasks.values()])
    ends, _ = concat_episode_ends(ds)
    device = runtime.device
    need = WindowBatches.nbytes(len(obs), ds.obs_dim, ds.action_dim)
    if device.type == "cuda" and (cfg.data_on_device == "no" or (
            cfg.data_on_device == "auto" and need > torch.cuda.mem_get_info(device)[0] // 2)):
        device = torch.device("cpu")
    batches = WindowBatches(obs, actions, ends, pc.n_obs_steps, pc.horizon, pc.n_action_steps, device)
    if len(batches) == 0:
        raise PretrainError(f"{root}: no episode is long enough for a training window")
    summary = {"root": str(root.resolve()), "tasks": list(ds.tasks), "transitions": int(len(obs)),
               "episodes": int(len(ends)), "windows": len(batches), "data_device": str(device)}
    return batches, ds.obs_stats, summary


class _Loss(nn.Module):
    """The planner's loss as a forward(), so that DDP can wrap it."""

    def __init__(self, planner: DiffusionPlanner):
        super().__init__()
        self.planner = planner

    def forward(self, obs, actions, generator):
        return self.planner.loss(obs, actions, generator)


class Pretrainer:
    """Model, EMA, optimiser and RNG of one run; ``train_step()`` is one update (no host synchronisation)."""

    def __init__(self, planner: DiffusionPlanner, batches: WindowBatches, cfg: PretrainConfig, runtime: Runtime):
        if cfg.batch_size % runtime.world_size:
            raise PretrainError(f"batch size {cfg.batch_size} is not divisible by {runtime.world_size} processes")
        self.cfg, self.rt, self.batches = cfg, runtime, batches
        self.local_batch = cfg.batch_size // runtime.world_size
        window = 4 * (batches.obs.shape[1] * batches.n_obs_steps + batches.actions.shape[1] * batches.horizon)
        check_fits(window * max(self.local_batch, cfg.eval_batch), f"a batch of {self.local_batch} windows")
        self.planner = planner.to(runtime.device).train()
        self.ema = EMA(self.planner, cfg.ema_power, cfg.ema_max_decay)
        self.params = list(self.planner.model.parameters())
        loss = _Loss(self.planner)
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            loss = DistributedDataParallel(loss, device_ids=ids)
        self.loss_fn = loss
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, fused=runtime.device.type == "cuda")
        base = cfg.seed * 1_000_003 + runtime.rank * 7919
        self.data_gen = torch.Generator(batches.device).manual_seed(base + 1)
        self.noise_gen = torch.Generator(runtime.device).manual_seed(base + 2)
        self.step = 0
        self.loss_sum = torch.zeros((), device=runtime.device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=runtime.device)

    def train_step(self) -> torch.Tensor:
        obs, act = self.batches.sample(self.local_batch, self.data_gen)
        obs = obs.to(self.rt.device, non_blocking=True)
        act = act.to(self.rt.device, non_blocking=True)
        with self.rt.autocast():
            loss = self.loss_fn(obs, act, self.noise_gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.step)
        loss = loss.detach().float()
        finite = torch.isfinite(loss) & torch.isfinite(gnorm)
        self.bad_step = torch.where((self.bad_step < 0) & ~finite, self.step, self.bad_step)
        self.loss_sum += loss
        return loss

    def first_bad_step(self) -> int | None:
        """First step whose loss or gradient norm was not finite, on any rank (synchronises)."""
        bad = torch.where(self.bad_step < 0, torch.iinfo(torch.long).max, self.bad_step)
        if self.rt.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        b = int(bad)
        return None if b == torch.iinfo(torch.long).max else b

    def pop_mean_loss(self, n: int) -> float:
        mean = float(self.loss_sum) / max(1, n)
        self.loss_sum = torch.zeros_like(self.loss_sum)
        return mean

    # -- checkpoint state ----------------------------------------------------------------------------
    def _all_ranks(self, t: torch.Tensor) -> list[torch.Tensor]:
        if not self.rt.distributed:
            return [t]
        comm = t.to(self.rt.device)
        out = [torch.empty_like(comm) for _ in range(self.rt.world_size)]
        dist.all_gather(out, comm)
        return [o.cpu() for o in out]

    def save(self, run: TrainingRun, data_summary: dict) -> None:
        """The state checkpoint and the EMA model; collective under DDP (call on every rank; rank 0 writes)."""
        tensors = {f"ema.{k}": v for k, v in self.ema.model.state_dict().items()}
        optim_tensors, optim_meta = optimizer_state(self.optimizer)
        tensors.update(optim_tensors)
        for name, gen in (("data", self.data_gen), ("noise", self.noise_gen)):
            for r, s in enumerate(self._all_ranks(gen.get_state())):
                tensors[f"rng.{name}.{r}"] = s
        if self.rt.is_main:
            run.save_state(self.planner, tensors, data=_data_key(data_summary), step=self.step,
                           world_size=self.rt.world_size, optimizer=optim_meta)
            model_meta = {"kind": "sodp_fast.pretrained_ema", "step": self.step, "tasks": data_summary["tasks"],
                          "dataset": data_summary["root"]}
            save_planner(run.path / MODEL_FILE, self.ema.model, model_meta)

    def load(self, path: Path, tensors: dict, meta: dict, data: dict) -> None:
        """Everything (``data``: what identifies this run's dataset) is validated before the first tensor is
        copied in."""
        step = record(meta, "step", path)
        if not isinstance(step, int) or not 0 <= step <= self.cfg.steps:
            raise CheckpointError(f"{path}: checkpoint is at step {step}, outside 0 … --steps {self.cfg.steps}")
        if record(meta, "world_size", path) != self.rt.world_size:
            raise CheckpointError(f"{path}: checkpoint was written by {meta['world_size']} processes, "
                                  f"resuming with {self.rt.world_size}")
        if PlannerConfig.from_dict(record(meta, "planner_config", path)) != self.planner.config:
            raise CheckpointError(f"{path}: checkpoint's planner config differs from this run's")
        if meta.get("data") != data:
            raise CheckpointError(f"{path}: checkpoint was trained on different data ({meta.get('data')})")
        _, state = planner_state(path, tensors, meta)
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        r = self.rt.rank
        load_state_checked(path, self.planner, state)
        load_state_checked(path, self.ema.model, ema)
        load_optimizer_state(self.optimizer, tensors, record(meta, "optimizer", path), path)
        load_generator_state(self.data_gen, tensors, f"rng.data.{r}", path)
        load_generator_state(self.noise_gen, tensors, f"rng.noise.{r}", path)
        self.step = step


def build_planner(cfg: PretrainConfig, obs_dim: int, action_dim: int) -> DiffusionPlanner:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every rerun
    return DiffusionPlanner(PlannerConfig(obs_dim=obs_dim, action_dim=action_dim, num_timesteps=cfg.num_timesteps,
                                          unet=preset(cfg.preset)))


@torch.no_grad()
def fixed_batch_loss(planner: DiffusionPlanner, batch, seed: int) -> float:
    """Loss on a fixed batch with fixed k and ε: comparable across steps, runs and checkpoints (``planner`` is in
    eval mode, as the EMA model always is)."""
    device = next(planner.parameters()).device
    obs, act = (x.to(device) for x in batch)
    return float(planner.loss(obs, act, torch.Generator(device).manual_seed(seed)))


def _data_key(summary: dict) -> dict:
    """What identifies the training data in a checkpoint (a changed dataset must not be resumed on)."""
    return {k: summary[k] for k in ("tasks", "transitions", "episodes")}


def pretrain(cfg: PretrainConfig, resume: bool = False) -> Pretrainer:
    """Run (or resume) pre-training into ``cfg.out``; returns the trainer (its ``.ema.model`` is the result)."""
    runtime = setup(cfg.device, cfg.amp)
    try:
        with TrainingRun(cfg, STATE_KIND, STATE_FILE, resume, owner=runtime.is_main) as run:
            batches, stats, summary = load_windows(cfg, PlannerConfig(), runtime)  # the default window sizes
            planner = build_planner(cfg, len(stats.mean), batches.actions.shape[1])
            planner.normalizer.set_stats(stats.mean, stats.std)
            resumed = run.resume_state()
            trainer = Pretrainer(planner, batches, cfg, runtime)
            if resumed is not None:
                trainer.load(run.state_path, *resumed, data=_data_key(summary))
            run.write_json("config.json", {"pretrain": cfg.to_dict(), "planner": planner.config.to_dict(),
                                         "world_size": runtime.world_size, "device": str(runtime.device),
                                         "amp": str(runtime.amp_dtype), "data": summary})
            eval_batch = batches.sample(cfg.eval_batch, torch.Generator(batches.device).manual_seed(cfg.seed + 12345))
            with run.logger(trainer.step if resumed is not None else None) as logger:
                _loop(trainer, run, summary, logger, eval_batch, trainer.step)
            return trainer
    finally:
        teardown(runtime)


def _loop(trainer: Pretrainer, run: TrainingRun, summary: dict, logger: RunLogger, eval_batch, start: int) -> None:
    cfg, rt = trainer.cfg, trainer.rt
    if start == 0 and rt.is_main:
        logger.log(0, ema_loss=fixed_batch_loss(trainer.ema.model, eval_batch, cfg.seed))
    last_good = start if start else None
    bar = Progress(cfg.steps, "pretrain", "step", initial=start, enabled=rt.is_main and cfg.progress)
    t0, since, elapsed = time.perf_counter(), 0, 0.0  # steps/s counts training only, not evals or checkpoints
    while trainer.step < cfg.steps:
        trainer.train_step()
        since += 1
        bar.update(1)
        step = trainer.step
        last = step == cfg.steps
        ckpt, log = step % cfg.ckpt_every == 0 or last, step % cfg.log_every == 0 or last
        if not (ckpt or log):
            continue
        elapsed += time.perf_counter() - t0
        bad = trainer.first_bad_step()
        if bad is not None:
            where = (f"last good checkpoint: {run.state_path} (step {last_good})" if last_good
                     else "no checkpoint was written")
            raise DivergedError(f"loss became NaN/inf at step {bad}; training stopped ({where})")
        if log:
            loss = trainer.pop_mean_loss(since)
            rate = since / elapsed
            since, elapsed = 0, 0.0
            if rt.is_main:
                ema_loss = fixed_batch_loss(trainer.ema.model, eval_batch, cfg.seed)
                logger.log(step, loss=loss, ema_loss=ema_loss, steps_per_s=rate)
                bar.update(0, loss=loss, ema=ema_loss)
        if ckpt:
            trainer.save(run, summary)
            last_good = step
            if rt.is_main:
                logger.plot()
        t0 = time.perf_counter()
    bar.close()
    if rt.distributed:
        _check_ranks_agree(trainer)


def _check_ranks_agree(trainer: Pretrainer) -> None:
    """DDP keeps replicas identical; a cheap checksum comparison catches a rank that drifted."""
    total = torch.stack([p.detach().double().sum() for p in trainer.params]).sum().reshape(1)
    sums = trainer._all_ranks(total)
    if any(not torch.equal(s, sums[0]) for s in sums):
        raise SodpError(f"DDP replicas diverged: parameter checksums {[float(s) for s in sums]}")
