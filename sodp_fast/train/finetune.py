"""Task-guided RL fine-tuning of a pre-trained planner (paper §3.2, Algorithm 1 second loop, B.3), top to bottom:

1. **Init**: ``ceil(n_init / num_envs)`` rollout iterations of the pre-trained planner fill B and B_target without
   updating; ``from_scratch`` (SODP_scratch, §5.5) then re-initialises the weights, keeping those buffers (as in
   the paper) and the observation statistics (data, not learned).
2. **Rollout** (``rollout.py``): every env plays one whole episode; every chunk's chain and log-probs are stored.
3. **Buffers** (``buffers.py``): B ← the last ``replay_iterations`` iterations; B_target ← the proficient episodes.
4. **Update** (``losses.py``): ``grad_steps`` (p_step) Adam steps on L_imp (Eq. 12) + λ · regulariser. p_step
   counts per iteration: with ``num_envs = 1`` the paper's "p_step gradient steps per episode".
5. **Eval** (deterministic DDIM on fresh envs with a fixed seed, so every point of a curve sees the same
   episodes) and **checkpoint**, both at iteration boundaries.

Resume: env episode seeds derive from (seed, env, episode index), so a resumed run seeks its envs to the
iteration and ends bit-identical (on CPU) to one that never stopped. Evaluation never touches the training RNG.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import torch

from sodp_fast.checkpoint import load_planner, planner_from_state, save_planner
from sodp_fast.errors import CheckpointError, ConfigError, DivergedError
from sodp_fast.eval import CurveEvaluator
from sodp_fast.options import Options, opt
from sodp_fast.policy import DiffusionPlanner
from sodp_fast.train.buffers import ReplayBuffer, TargetBuffer
from sodp_fast.train.losses import (LOG_RATIOS, REGULARIZERS, REWARD_NORMS, SIGNALS, RunningMoments,
                                    chunk_advantages, chunk_signal, improvement_loss, regularizer)
from sodp_fast.train.rollout import Episode, OnlineSource
from sodp_fast.train.run import (Progress, Timers, TrainingRun, load_generator_state,
                                 load_optimizer_state, optimizer_state, record)
from sodp_fast.train.runtime import check_device, resolve_device

STATE_FILE = "state.safetensors"
MODEL_FILE = "model.safetensors"
STATE_KIND = "sodp_fast.finetune_state"
FinetuneError = ConfigError  # unusable options, checkpoint or run folder for fine-tuning


@dataclass
class FinetuneConfig(Options):
    out: str = opt(help="run folder")
    task: str = opt(flag=False)  # --task / --tasks are the command's (one run, or one process per task)
    ckpt: str | None = opt(None, "pre-trained planner (.safetensors); required unless resuming")
    env_steps: int = opt(1_000_000, "env steps of fine-tuning (init rollouts included)", low=1)
    num_envs: int = opt(8, "parallel envs per rollout iteration", low=1)
    env_groups: int = opt(1, "env groups pipelined so stepping overlaps sampling (1 = no overlap; rollout.py)", low=1)
    num_workers: int | None = opt(None, "env worker processes in all (none: one per CPU core; 0: in-process)", low=0)
    max_episode_steps: int = opt(500, "episode length", low=1)
    n_init: int = opt(10, "N_init: initial rollouts that fill B and B_target", low=1)
    grad_steps: int = opt(10, "p_step: gradient steps per rollout iteration", low=1)
    batch_size: int = opt(256, "transitions (chain x step) per gradient step; also the BC batch", low=1)
    lr: float = opt(2e-6, "Adam learning rate (paper: 1e-5, which collapsed the tiny planner; see losses.py)")
    lr_decay: float = opt(0.999, "exponential lr decay per iteration")
    clip_eps: float = opt(0.1, "PPO clip epsilon")
    grad_clip: float = opt(1.0, "max gradient norm")
    reg: str = opt("bc", "regulariser: bc (SODP), kl (DPOK-like), pl (DLPO-like), none", choices=REGULARIZERS)
    reg_weight: float = opt(1.0, "lambda: regulariser weight")
    ppo_weight: float = opt(1.0, "weight of L_imp (Eq. 12); 0 trains on the regulariser alone, the control that "
                            "shows what RL adds to BC", low=0)
    reward_norm: str = opt("step", "chunk-reward baseline of Eq. 12: step = per chunk index over the envs "
                           "(see sodp_fast/train/losses.py)", choices=REWARD_NORMS)
    signal: str = opt("return", "what weighs a chain in Eq. 12: return = the return-to-go from its chunk (this and "
                      "every later chunk reward of the episode), chunk = the chunk's own reward (the paper's r(a^0))",
                      choices=SIGNALS)
    log_ratio: str = opt("mean", "PPO ratio from the mean (DPPO) or the sum (exact chain likelihood) of the "
                         "per-dimension log-ratios of a denoising step", choices=LOG_RATIOS)
    replay_iterations: int = opt(1, "B keeps the chunks of this many recent iterations", low=1)
    target_size: int = opt(10, "n: proficient trajectories kept in B_target", low=1)
    from_scratch: bool = opt(False, "SODP_scratch: fresh weights after the init rollouts")
    offline_data: str | None = opt(None, "SODP_off: fine-tune on this dataset's episodes of the task")
    eval_every: int = opt(100_000, "env steps between evaluations", low=1)
    eval_episodes: int = opt(10, "episodes per evaluation", low=1)
    eval_num_envs: int = opt(10, "parallel envs for evaluation", low=1)
    ckpt_every: int = opt(50_000, "env steps between checkpoints", low=1)
    seed: int = opt(0, "seed")
    device: str = opt("auto", "auto, cpu, cuda, cuda:1 ...")
    cuda_graphs: bool = opt(False, "sample rollouts with CUDA-graph replays of the whole DDIM chain (GPU only)")
    progress: bool = opt(True, "progress reporting (a bar on a terminal, plain lines otherwise)")

    RESUMABLE = ("env_steps", "eval_every", "eval_episodes", "eval_num_envs", "ckpt_every", "num_workers",
                 "progress", "device", "ckpt", "out", "cuda_graphs")

    def __post_init__(self):
        super().__post_init__()
        if self.reward_norm == "step" and self.num_envs < 2:
            raise FinetuneError("--reward-norm step baselines each chunk with the same chunk of the other envs: "
                                "it needs --num-envs >= 2 (or choose --reward-norm batch)")
        if self.env_groups > self.num_envs:
            raise FinetuneError(f"--env-groups ({self.env_groups}) cannot exceed --num-envs ({self.num_envs})")
        if not (self.lr > 0 and 0 < self.lr_decay <= 1 and self.clip_eps > 0 and self.grad_clip > 0):
            raise FinetuneError("need --lr > 0, 0 < --lr-decay <= 1, --clip-eps > 0 and --grad-clip > 0")
        if self.reg_weight < 0:
            raise FinetuneError(f"--reg-weight must be >= 0, got {self.reg_weight}")
        if self.ppo_weight == 0 and (self.reg == "none" or self.reg_weight == 0):
            raise FinetuneError("--ppo-weight 0 with no regulariser leaves nothing to train")
        check_device(self.device)


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
        sums = torch.zeros(4 + (cfg.reg != "none"), device=self.device)
        for _ in range(cfg.grad_steps):
            batch = self.replay.sample(cfg.batch_size, adv, self.gen_update)
            l_imp, clip_frac, approx_kl = improvement_loss(planner, batch, cfg.clip_eps, cfg.log_ratio)
            reg = regularizer(cfg.reg, planner, batch, self.target, self.reference, cfg.batch_size, self.gen_update)
            loss = cfg.ppo_weight * l_imp if reg is None else cfg.ppo_weight * l_imp + cfg.reg_weight * reg
            if not torch.isfinite(loss):
                raise DivergedError(f"loss became {loss.item()} at gradient step {self.grad_steps + 1} "
                                    f"(iteration {self.iteration}, {self.env_steps} env steps); the last good "
                                    f"checkpoint is {cfg.out}/{STATE_FILE}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(planner.parameters(), cfg.grad_clip)
            self.opt.step()
            self.grad_steps += 1
            sums += torch.stack([l_imp.detach(), clip_frac, approx_kl, grad_norm.detach(), *([] if reg is None
                                                                                             else [reg.detach()])])
        names = ("loss_imp", "clip_frac", "approx_kl", "grad_norm", f"loss_{cfg.reg}")  # no loss_none
        return {**dict(zip(names, (sums / cfg.grad_steps).tolist())), "lr": lr}

    # -- checkpointing --------------------------------------------------------------------------------
    def save(self, run: TrainingRun) -> None:
        opt_t, opt_meta = optimizer_state(self.opt)
        rep_t, rep_meta = self.replay.state()
        tgt_t, tgt_meta = self.target.state()
        tensors = {**opt_t, **rep_t, **tgt_t, "rng.rollout": self.gen_rollout.get_state(),
                   "rng.update": self.gen_update.get_state()}
        run.save_state(self.planner, tensors, iteration=self.iteration, env_steps=self.env_steps,
                       grad_steps=self.grad_steps, optimizer=opt_meta, replay=rep_meta, target=tgt_meta,
                       running=self.running.state(), last_eval=self.last_eval)

    def load(self, path, tensors: dict, meta: dict) -> None:
        """The planner's weights came with it (``planner_from_state``); the rest is validated here."""
        counters = [record(meta, k, path) for k in ("iteration", "env_steps", "grad_steps")]
        running = record(meta, "running", path)
        if not all(isinstance(c, int) and c >= 0 for c in counters) or not (
                isinstance(running, list) and len(running) == 3):
            raise CheckpointError(f"{path}: corrupt counters in the checkpoint")
        load_optimizer_state(self.opt, tensors, record(meta, "optimizer", path), path)
        self.replay.load(tensors, record(meta, "replay", path), self.device, self.planner.config, path)
        self.target.load(tensors, record(meta, "target", path), self.device, self.planner.config, path)
        load_generator_state(self.gen_rollout, tensors, "rng.rollout", path)
        load_generator_state(self.gen_update, tensors, "rng.update", path)
        self.running.load(running)
        self.iteration, self.env_steps, self.grad_steps = counters
        self.last_eval = meta.get("last_eval", {})


# -- the driver -------------------------------------------------------------------------------------------
def finetune(cfg: FinetuneConfig, resume: bool = False, make_env=None) -> dict:
    """Run (or resume) fine-tuning in ``cfg.out``; returns the summary written to ``summary.json``.

    ``make_env(num_envs, seed, num_workers)`` builds a vector env with ChunkVecEnv's interface; the default
    is Meta-World's ``cfg.task`` (tests plug in a toy env here).
    """
    from sodp_fast.envs.tasks import canonical_task
    from sodp_fast.envs.workers import build_env_groups, check_dims, metaworld_env_factory

    if make_env is None:
        cfg.task = canonical_task(cfg.task)
    device = resolve_device(cfg.device)
    with TrainingRun(cfg, STATE_KIND, STATE_FILE, resume) as run, contextlib.ExitStack() as stack:
        resumed = run.resume_state()
        needs_ckpt = resumed is None or cfg.reg == "kl"  # the start of a fresh run; always the KL reference
        if needs_ckpt and not cfg.ckpt:
            raise FinetuneError("--ckpt (the pre-trained planner) is required"
                                + ("" if resumed is None else " as the KL reference"))
        pretrained = load_planner(cfg.ckpt, device)[0] if needs_ckpt else None  # read once for both uses
        planner = pretrained if resumed is None else planner_from_state(run.state_path, *resumed).to(device)
        reference = None
        if cfg.reg == "kl":
            reference = copy.deepcopy(pretrained) if resumed is None else pretrained
            reference.requires_grad_(False).eval()
        c = planner.config
        if make_env is None:
            from sodp_fast.envs.metaworld import ACTION_DIM, OBS_DIM

            check_dims(cfg.ckpt or run.state_path, c, OBS_DIM, ACTION_DIM)
            make_env = metaworld_env_factory(cfg.task, c.n_obs_steps, c.n_action_steps, cfg.max_episode_steps, cfg.seed)
        timers = Timers(sync_cuda=device.type == "cuda")
        if cfg.offline_data:
            from sodp_fast.train.offline import OfflineSource

            source = OfflineSource(cfg.offline_data, cfg.task, c, cfg.num_envs, cfg.seed, device, timers)
        else:
            if cfg.cuda_graphs and device.type == "cuda":
                torch.cuda.manual_seed(cfg.seed)
            envs = build_env_groups(make_env, cfg.num_envs, cfg.env_groups, cfg.seed, cfg.num_workers)
            source = stack.enter_context(contextlib.closing(OnlineSource(envs, device, timers, cfg.cuda_graphs)))
        env = source if cfg.offline_data else source.envs[0]
        check_dims(cfg.offline_data or cfg.ckpt or run.state_path, c, env.obs_dim, env.action_dim)
        tuner = Finetuner(cfg, planner, reference, device)
        if resumed is not None:
            tuner.load(run.state_path, *resumed)
        run.write_json("config.json", cfg.to_dict())
        evaluator = stack.enter_context(contextlib.closing(CurveEvaluator(
            make_env, cfg.task, cfg.eval_episodes, cfg.eval_num_envs, cfg.seed, cfg.num_workers, timers)))
        logger = stack.enter_context(run.logger(tuner.env_steps if resumed else None))
        _loop(tuner, run, source, evaluator, logger, timers, fresh=resumed is None)
        save_planner(run.path / MODEL_FILE, planner, {"finetuned_from": cfg.ckpt, "task": cfg.task,
                                                      "env_steps": tuner.env_steps})
        summary = {"task": cfg.task, "env_steps": tuner.env_steps, "iterations": tuner.iteration,
                   "grad_steps": tuner.grad_steps, **{f"final_{k}": v for k, v in tuner.last_eval.items()},
                   "seconds": dict(timers.seconds)}
        run.write_json("summary.json", summary)
        return summary


def _loop(tuner: Finetuner, run: TrainingRun, source, evaluator, logger, timers: Timers, fresh: bool) -> None:
    cfg = tuner.cfg

    def evaluate() -> dict:
        tuner.last_eval = evaluator(tuner.planner)
        return tuner.last_eval

    source.seek(tuner.iteration)
    bar = Progress(cfg.env_steps, f"finetune {cfg.task}", "env step", initial=tuner.env_steps, enabled=cfg.progress)
    if fresh:
        logger.log(0, **evaluate())
        bar.update(0, eval_success=tuner.last_eval["eval_success_rate"])
        if cfg.offline_data:
            source.fill_target(tuner.target)
        while tuner.iteration < (0 if cfg.offline_data else math.ceil(cfg.n_init / cfg.num_envs)):
            before = tuner.env_steps
            tuner.absorb(source.collect(tuner.planner, tuner.gen_rollout))
            bar.update(tuner.env_steps - before)
        if cfg.from_scratch:
            tuner.reinitialize()
        tuner.save(run)
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
            logger.log(tuner.env_steps, **evaluate())
        bar.update(tuner.env_steps - before, train_success=float(ep.success.mean()),
                   eval_success=tuner.last_eval.get("eval_success_rate", float("nan")))
        if last or tuner.env_steps // cfg.ckpt_every > before // cfg.ckpt_every:
            tuner.save(run)
    bar.close()
