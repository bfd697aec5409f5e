"""``sodp repro``: data → pre-train → evaluate → (fine-tune → evaluate) per task, seed and regulariser → report.

Every stage writes its artefact atomically, then a marker ``OUT/stages/<stage>.json`` (summary, wall time). A
rerun skips every stage with a marker; a killed stage resumes through its own mechanism (data generation skips
finished tasks, training continues from its last checkpoint, evaluations rerun). ``OUT/repro.json`` pins the
options, so a rerun cannot silently mix two configurations. Before/after evaluations are paired: the same seeds,
hence the same goals and initial states. ``command.txt`` and ``machine.txt`` get one block per invocation.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from sodp_fast.atomic import write_json, write_text
from sodp_fast.envs.tasks import DIFFICULTY, resolve_tasks
from sodp_fast.errors import ConfigError
from sodp_fast.nn.unet import PRESETS as UNETS
from sodp_fast.options import Options, opt
from sodp_fast.train.run import Progress, RunFolder, check_config
from sodp_fast.train.runtime import check_device


ReproError = ConfigError  # unusable preset, options, or an output folder holding another configuration


@dataclass(frozen=True)
class Preset(Options):
    """What one reproduction run computes. ``budget`` explains the numbers (printed by ``--dry-run``).

    ``seeds`` are the fine-tuning seeds, each evaluated with its own seed; data and pre-training use seed 0,
    so every fine-tuning run starts from the same pre-trained planner, as in the paper. A ``smoke`` preset only
    checks the set-up: its report says so and sets no goal."""

    name: str = opt(flag=False)
    tasks: tuple[str, ...] = opt(help="tasks (comma list or set name)")
    transitions_per_task: int = opt(help="pre-training data per task (paper: 1 M)", low=1)
    unet: str = opt(help="U-Net preset: tiny | small | default (paper)", choices=sorted(UNETS))
    pretrain_steps: int = opt(help="pre-training steps (paper: 5e5)", low=1)
    pretrain_batch: int = opt(help="pre-training batch (paper: 256)", low=1)
    pretrain_lr: float = opt(help="pre-training learning rate (paper: 1e-4)")
    finetune_env_steps: int = opt(help="env steps per (task, seed, regulariser) (paper: 1e6; Table 2: 1e5)", low=1)
    finetune_num_envs: int = opt(help="envs per rollout iteration", low=1)
    finetune_grad_steps: int = opt(help="gradient steps per rollout iteration", low=1)
    finetune_n_init: int = opt(help="N_init: pre-trained rollouts that seed the buffers (paper: 10 or 20)", low=1)
    finetune_lr: float = opt(help="fine-tuning learning rate (paper: 1e-5)")
    finetune_eval_every: int = opt(help="env steps between learning-curve points", low=1)
    finetune_eval_episodes: int = opt(help="episodes per learning-curve point", low=1)
    eval_episodes: int = opt(help="before/after evaluation episodes per task and seed (paper: 50)", low=1)
    seeds: tuple[int, ...] = opt(help="fine-tuning (and paired evaluation) seeds, comma list (paper: 3)")
    ablation_task: str | None = opt(help="fine-tuned a second time with --reg none (paper §5.4); none: no ablation")
    max_episode_steps: int = opt(500, "episode length", low=1)
    data_workers: int = opt(2, "processes generating data (0: in-process)", low=0)
    env_workers: int | None = opt(None, "env processes in fine-tuning/eval (none: one per core, 0: in-process)", low=0)
    device: str = opt("auto", "auto, cpu, cuda, cuda:1 ...")
    smoke: bool = opt(False, flag=False)
    budget: str = opt("", flag=False)

    RESUMABLE = ("data_workers", "env_workers", "device", "budget", "smoke")

    def __post_init__(self):
        super().__post_init__()
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen: normalise in place)
        set_("tasks", tuple(resolve_tasks(list(self.tasks))))
        set_("seeds", tuple(int(s) for s in self.seeds))
        if self.ablation_task is not None:
            set_("ablation_task", resolve_tasks(self.ablation_task)[0])
            if self.ablation_task not in self.tasks:
                raise ReproError(f"ablation task {self.ablation_task} is not among the tasks "
                                 f"({', '.join(self.tasks)}); pick one of them or 'none'")
        if not self.seeds:
            raise ReproError("need at least one seed")
        check_device(self.device)

    def finetune_runs(self) -> list[tuple[str, str, int]]:
        """(task, regulariser, seed) of every fine-tuning run: SODP (bc) on each task, then the ablation."""
        runs = [(t, "bc", s) for t in self.tasks for s in self.seeds]
        if self.ablation_task:
            runs += [(self.ablation_task, "none", s) for s in self.seeds]
        return runs


QUICKSTART = Preset(
    name="quickstart", tasks=("reach-v3",), transitions_per_task=20_000, unet="tiny", pretrain_steps=2_000,
    pretrain_batch=128, pretrain_lr=1e-3, finetune_env_steps=10_000, finetune_num_envs=10,
    finetune_grad_steps=10, finetune_n_init=10, finetune_lr=2e-6, finetune_eval_every=5_000,
    finetune_eval_episodes=10, eval_episodes=10, seeds=(0,), ablation_task=None, data_workers=1, smoke=True,
    budget="""\
Set-up check of the whole pipeline on one task, ≈ 3.5 min on 2 CPU cores: it shows the installation works;
one fine-tuning update is not expected to change the success rate. Measured on a 2-core CPU shared with other
jobs (load ≈ 3.5):
  data      20 k transitions, one process                                             11 s
  pretrain  2 000 steps × batch 128 (13 epochs), tiny U-Net (236 k params), 0.065 s/step 131 s
  eval      10 episodes (one round of 10 envs), before and after                     9 + 12 s
  finetune  10 k env steps = 1 init iteration + 1 update iteration of 10 envs × 500 steps,
            evaluated before and after (10 episodes each)                             38 s
  total 3.4 min wall, plus ≈ 10 s of imports.""")

CPU_SMALL = Preset(
    name="cpu-small", tasks=("button-press-v3", "sweep-into-v3", "push-v3"), transitions_per_task=50_000,
    unet="tiny", pretrain_steps=8_000, pretrain_batch=256, pretrain_lr=1e-3, finetune_env_steps=150_000,
    finetune_num_envs=10, finetune_grad_steps=30, finetune_n_init=10, finetune_lr=2e-6,
    finetune_eval_every=15_000, finetune_eval_episodes=10, eval_episodes=50, seeds=(0,),
    ablation_task="sweep-into-v3",
    budget="""\
≈ 50 min on 2 CPU cores: three paper-MT10 tasks, one per difficulty class, and the BC-vs-none ablation.
Tasks: button-press (easy), sweep-into (medium), push (hard) in Seo et al.'s difficulty
classes; all three are in the paper's Table 6 (after fine-tuning 88.0, 60.7, 33.3 %). Their data run from
random to near-expert (generator calibration: button-press success by quintile 0/0/.2/.6/1; the hard schedule
anneals linearly to the expert), so a planner imitating the mixture solves them partly and leaves room for +20
points. Calibration: a tiny U-Net pre-trained for 6 k steps × batch 128 on 20 k transitions per task of these
three tasks (data success 35 / 55 / 28 %) solved 20 / 15 / 5 % of 20 episodes. Left out: drawer-close (the
paper reaches 100 %: little headroom), pick-place and basketball (they need a grasp, which a tiny U-Net is
unlikely to learn from 50 k transitions). Ablation on the medium task.
Rates measured on this 2-core CPU under load ≈ 3.5 from other jobs (tiny U-Net):
  data      3 × 50 k transitions (100 episodes each), 2 processes at ≈ 2 k steps/s        ≈ 1 min
  pretrain  8 k steps × batch 256 (≈ 14 epochs of 150 k windows) at ≈ 0.12 s/step
            (2 × the 0.065 s measured at batch 128; 0.045 s on the quiet machine)       ≈ 16 min
  eval      50 episodes (5 rounds of 10 envs, ≈ 50 s) × (3 before + 4 after)               ≈ 6 min
  finetune  4 runs (3 tasks bc + sweep-into none) × 150 k env steps (paper Table 2: 100 k) =
            1 init + 29 update iterations of 10 envs × 500 steps; measured 10 s per iteration
            (126 sampler calls + 30 gradient steps of PPO + BC at batch 256), 11 curve
            evaluations × 7 s → ≈ 6.3 min per run                                           ≈ 25 min
  total ≈ 48 min under that load (a quiet machine is ≈ 1.5–2× faster).
Learning rates: pre-training 1e-3 (10× the paper's: 60× fewer steps, and the tiny U-Net's tests train at
1e-3); fine-tuning 2e-6, not the paper's 1e-5, which collapsed good tiny planners. The cpu-small results in
the README predate that change and used lr 1e-5 with the chunk-reward signal. Check the 'eval-pretrained'
stage (≈ 20 min in): a task at 0 % or ≥ 80 % before fine-tuning cannot show +20 points; swap it with --tasks in a fresh --out.""")

PAPER_MT10 = Preset(
    name="paper-mt10", tasks=("paper-mt10",), transitions_per_task=100_000, unet="default", pretrain_steps=20_000,
    pretrain_batch=256, pretrain_lr=1e-4, finetune_env_steps=100_000, finetune_num_envs=10,
    finetune_grad_steps=30, finetune_n_init=10, finetune_lr=1e-5, finetune_eval_every=20_000,
    finetune_eval_episodes=20, eval_episodes=50, seeds=(0,), ablation_task="basketball-v3", data_workers=16,
    budget="""\
GPU design (one H100/H200, 16 cores): the paper's ten Table-6 tasks, default U-Net (66 M params), paper
hyper-parameters (batch 256, lr 1e-4 / 1e-5, K = 100, DDIM 10, λ = 1, N_init 10, p_step 30, 50 evaluation
episodes), budgets cut to fit a ≈ 30 min device session run as repeated ≤ 10 min commands (each rerun resumes:
pre-training checkpoints every 2 000 steps, fine-tuning every curve point):
  data      10 × 100 k transitions (paper: 1 M), 10 processes at ≈ 1.5 k steps/s           ≈ 1.5 min
  pretrain  20 k steps (paper: 5e5) × batch 256, bf16; ASSUMED ≈ 100 steps/s              ≈ 3.5 min
  finetune  11 runs (10 tasks bc + basketball none) × 100 k env steps (the paper's Table 2
            budget; main results 1 M) = 1 init + 19 update iterations of 10 envs × 30
            gradient steps; ASSUMED 3 s rollout + 1 s update per iteration, 6 evaluations  ≈ 17 min
  eval      50 episodes × 21 evaluations; ASSUMED ≈ 5 s each                             ≈ 2 min
  total ≈ 24 min. The ASSUMED rates are not measured yet: read the stage times in results.json after the first
session and rescale. Paper: 3 seeds (--seeds 0,1,2 triples fine-tuning); ablation on basketball, a task of
the paper's Figure 5. Needs Meta-World installed on the GPU machine (pip install metaworld==3.1.1).""")

PRESETS: dict[str, Preset] = {p.name: p for p in (QUICKSTART, CPU_SMALL, PAPER_MT10)}


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise ReproError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# -- stages -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    name: str
    plan: str                        # one line: what it computes (the budget)
    run: Callable[[], dict]          # does the work; returns a JSON-ready summary for the marker
    resumable: Path | None = None    # a file whose presence means the stage stopped midway and will resume


def run_label(task: str, reg: str, seed: int) -> str:
    return f"{task}-{reg}-s{seed}"


class Pipeline:
    """The stages of one preset in one output folder, and where each writes."""

    def __init__(self, preset: Preset, out: str | Path, progress: bool = True):
        self.p, self.out, self.progress = preset, Path(out), progress
        self.data = self.out / "data"
        self.pretrain_dir = self.out / "pretrain"
        self.eval_dir = self.out / "eval"
        self.finetune_dir = self.out / "finetune"

    def marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage.replace('/', '_')}.json"

    def stages(self) -> list[Stage]:
        from sodp_fast.data.format import MANIFEST
        from sodp_fast.train import finetune as ft
        from sodp_fast.train import pretrain as pt

        p = self.p
        out = [
            Stage("data", f"{len(p.tasks)} tasks × {p.transitions_per_task:,} transitions "
                  f"(episodes of {p.max_episode_steps} steps), {p.data_workers} processes", self._data,
                  self.data / MANIFEST),
            Stage("pretrain", f"{p.unet} U-Net, {p.pretrain_steps:,} steps × batch {p.pretrain_batch}, "
                  f"lr {p.pretrain_lr:g}", self._pretrain, self.pretrain_dir / pt.STATE_FILE),
            Stage("eval-pretrained", f"{len(p.tasks)} tasks × {len(p.seeds)} seeds × {p.eval_episodes} episodes",
                  partial(self._evaluate, self.pretrain_dir / pt.MODEL_FILE, list(p.tasks), p.seeds, "pretrained")),
        ]
        for task, reg, seed in p.finetune_runs():
            label = run_label(task, reg, seed)
            out.append(Stage(f"finetune/{label}", f"{p.finetune_env_steps:,} env steps, {p.finetune_num_envs} "
                             f"envs, {p.finetune_grad_steps} grad steps/iteration, lr {p.finetune_lr:g}, reg {reg}",
                             partial(self._finetune, task, reg, seed), self.finetune_dir / label / ft.STATE_FILE))
            out.append(Stage(f"eval/{label}", f"{p.eval_episodes} episodes, seed {seed}", partial(
                self._evaluate, self.finetune_dir / label / ft.MODEL_FILE, [task], (seed,), label)))
        out.append(Stage("report", "results.json, results.md, curves.png", self._report))
        return out

    # -- the work of each stage ------------------------------------------------------------------------
    def _data(self) -> dict:
        from sodp_fast.data.generate import generate

        manifest = generate(list(self.p.tasks), self.data, self.p.transitions_per_task, seed=0,
                            workers=self.p.data_workers, max_episode_steps=self.p.max_episode_steps,
                            progress=self.progress)
        return {t: {k: r[k] for k in ("transitions", "success_rate", "mean_return")}
                for t, r in manifest["tasks"].items()}

    def _pretrain(self) -> dict:
        from sodp_fast.train.pretrain import STATE_FILE, PretrainConfig, pretrain

        p = self.p
        cfg = PretrainConfig(data=str(self.data), out=str(self.pretrain_dir), steps=p.pretrain_steps,
                             batch_size=p.pretrain_batch, lr=p.pretrain_lr, preset=p.unet, seed=0,
                             ckpt_every=min(2_000, p.pretrain_steps), log_every=min(100, p.pretrain_steps),
                             device=p.device, progress=self.progress)
        trainer = pretrain(cfg, resume=(self.pretrain_dir / STATE_FILE).exists())
        return {"steps": trainer.step}

    def _evaluate(self, ckpt: Path, tasks: list[str], seeds: tuple[int, ...], name: str) -> dict:
        """Evaluate ``ckpt`` into ``eval/<name>.json``."""
        from sodp_fast.checkpoint import load_planner
        from sodp_fast.envs.metaworld import ACTION_DIM, OBS_DIM
        from sodp_fast.eval import evaluate_tasks
        from sodp_fast.train.runtime import resolve_device

        p = self.p
        planner, _, _ = load_planner(ckpt, resolve_device(p.device), expect={"obs_dim": OBS_DIM,
                                                                            "action_dim": ACTION_DIM})
        bar = Progress(len(tasks) * len(seeds), "evaluate", "evaluation", enabled=self.progress, interval=0)
        res = evaluate_tasks(planner, tasks, p.eval_episodes, seeds, num_workers=p.env_workers,
                             max_episode_steps=p.max_episode_steps,
                             progress=lambda r: bar.update(1, **{r["task"]: r["success_rate"]}))
        bar.close()
        res["checkpoint"] = str(ckpt)
        write_json(self.eval_dir / f"{name}.json", res)
        return {t: round(r["success_mean"], 3) for t, r in res["tasks"].items()}

    def _finetune(self, task: str, reg: str, seed: int) -> dict:
        from sodp_fast.train.finetune import STATE_FILE, FinetuneConfig, finetune
        from sodp_fast.train.pretrain import MODEL_FILE

        p, run = self.p, self.finetune_dir / run_label(task, reg, seed)
        cfg = FinetuneConfig(out=str(run), task=task, ckpt=str(self.pretrain_dir / MODEL_FILE),
                             env_steps=p.finetune_env_steps, num_envs=p.finetune_num_envs,
                             env_groups=min(2, p.finetune_num_envs), num_workers=p.env_workers,
                             max_episode_steps=p.max_episode_steps, n_init=p.finetune_n_init,
                             grad_steps=p.finetune_grad_steps, lr=p.finetune_lr, reg=reg,
                             eval_every=p.finetune_eval_every, eval_episodes=p.finetune_eval_episodes,
                             ckpt_every=p.finetune_eval_every, seed=seed, device=p.device, progress=self.progress)
        summary = finetune(cfg, resume=(run / STATE_FILE).exists())
        return {k: summary[k] for k in ("env_steps", "iterations", "grad_steps")}

    def _report(self) -> dict:
        results = collect_results(self)
        write_json(self.out / "results.json", results)
        write_text(self.out / "results.md", results_markdown(results))
        plot_curves(self, results, self.out / "curves.png")
        if self.p.smoke:
            return {"smoke_test": True, "tasks": len(results["tasks"])}
        return {"goal_met": sum(r["goal_met"] for r in results["tasks"]), "tasks": len(results["tasks"])}


# -- report -------------------------------------------------------------------------------------------------
GOAL_POINTS = 20.0  # the reproduction's goal: fine-tuning adds at least this many success points per task


def _over_seeds(evals: list[dict], task: str) -> dict:
    """Success mean ± std over seeds and return mean ± std over all episodes (as ``evaluate_tasks`` does)."""
    rates = np.array([e["tasks"][task]["success_mean"] for e in evals])
    rets = np.concatenate([r["returns"] for e in evals for r in e["tasks"][task]["runs"]])
    return {"success_mean": float(rates.mean()), "success_std": float(rates.std()),
            "return_mean": float(rets.mean()), "return_std": float(rets.std())}


def collect_results(pipe: Pipeline) -> dict:
    from sodp_fast.data.format import MANIFEST

    p = pipe.p
    before = json.loads((pipe.eval_dir / "pretrained.json").read_text())
    data = json.loads((pipe.data / MANIFEST).read_text())["tasks"]

    def after(task: str, reg: str) -> dict:
        return _over_seeds([json.loads((pipe.eval_dir / f"{run_label(task, reg, s)}.json").read_text())
                            for s in p.seeds], task)

    def row(task: str, reg: str) -> dict:
        b, a = _over_seeds([before], task), after(task, reg)
        delta = 100 * (a["success_mean"] - b["success_mean"])
        return {"task": task, "difficulty": DIFFICULTY[task], "regularizer": reg,
                "data_success": data[task]["success_rate"], "before": b, "after": a, "delta_points": delta,
                "goal_met": None if p.smoke else delta >= GOAL_POINTS}

    seconds = {s.name: json.loads(pipe.marker(s.name).read_text())["seconds"] for s in pipe.stages()
               if pipe.marker(s.name).exists()}
    ablation = ({"task": p.ablation_task, "rows": [row(p.ablation_task, r) for r in ("bc", "none")]}
                if p.ablation_task else None)
    return {"preset": p.to_dict(), "goal_points": None if p.smoke else GOAL_POINTS,
            "tasks": [row(t, "bc") for t in p.tasks], "ablation": ablation,
            "stage_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1)}


def _pct(r: dict, seeds: int) -> str:
    return f"{100 * r['success_mean']:.1f}" + (f" ± {100 * r['success_std']:.1f}" if seeds > 1 else "")


def results_markdown(res: dict) -> str:
    p, n = res["preset"], len(res["preset"]["seeds"])
    smoke = ["**Set-up check (smoke test), not a result.** This preset runs every stage once at toy scale to "
             "show that the installation works end to end; its before/after numbers come from a few episodes "
             "and one or two updates and say nothing about SODP. For results run `sodp repro --preset "
             "cpu-small` (CPU) or `--preset paper-mt10` (GPU).", ""] if p.get("smoke") else []
    lines = [f"# SODP {'set-up check' if smoke else 'reproduction'}: preset {p['name']}", "", *smoke,
             f"Success rate (%) over {p['eval_episodes']} episodes per task and seed (seeds {p['seeds']}"
             f"{', ± std over seeds' if n > 1 else ''}); before = the pre-trained planner, after = fine-tuned "
             f"for {p['finetune_env_steps']:,} env steps with SODP's BC regulariser. Both are evaluated on the same "
             "goals and initial states (deterministic DDIM). Return = mean episode return; data = the share of "
             "successful episodes in the pre-training data.", "",
             "| Task | Difficulty | Data | Success before | Success after | Δ (points) | Return before "
             "| Return after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["tasks"]:
        lines.append(f"| {r['task']} | {r['difficulty']} | {100 * r['data_success']:.0f} | {_pct(r['before'], n)} | "
                     f"{_pct(r['after'], n)} | {r['delta_points']:+.1f} | {r['before']['return_mean']:.0f} | "
                     f"{r['after']['return_mean']:.0f} |")
    mean = lambda key, side: np.mean([r[side][key] for r in res["tasks"]])  # noqa: E731
    lines.append(f"| **Average** | | | {100 * mean('success_mean', 'before'):.1f} | "
                 f"{100 * mean('success_mean', 'after'):.1f} | "
                 f"{np.mean([r['delta_points'] for r in res['tasks']]):+.1f} | {mean('return_mean', 'before'):.0f} | "
                 f"{mean('return_mean', 'after'):.0f} |")
    met = [r["task"] for r in res["tasks"] if r["goal_met"]]
    missed = [f"{r['task']} ({r['delta_points']:+.1f})" for r in res["tasks"] if r["goal_met"] is False]
    if res["goal_points"] is not None:
        lines += ["", f"Goal (+{res['goal_points']:.0f} points per task): met on {len(met)} of {len(res['tasks'])} "
                  f"tasks{': ' + ', '.join(met) if met else ''}"
                  + (f"; NOT met: {', '.join(missed)}." if missed else ".")]
    else:
        lines += ["", "Set-up check passed: every stage ran and wrote its files (no goal applies to a smoke test)."]
    if res["ablation"]:
        lines += ["", f"## Regulariser ablation (paper §5.4): {res['ablation']['task']}", "",
                  "| Regulariser | Success before | Success after | Δ (points) | Return after |",
                  "|---|---|---|---|---|"]
        for r in res["ablation"]["rows"]:
            name = "bc (SODP)" if r["regularizer"] == "bc" else r["regularizer"]
            lines.append(f"| {name} | {_pct(r['before'], n)} | {_pct(r['after'], n)} | {r['delta_points']:+.1f} | "
                         f"{r['after']['return_mean']:.0f} |")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in res["stage_seconds"].items())
    lines += ["", f"Stage wall times: {times}; total {res['total_seconds'] / 60:.1f} min (see machine.txt).", ""]
    return "\n".join(lines)


def plot_curves(pipe: Pipeline, res: dict, out: Path) -> None:
    """Success vs env steps: one panel per task (SODP), and BC vs none on the ablation task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sodp_fast.logging import read_metrics, save_figure

    p = pipe.p
    panels = [(t, ("bc",)) for t in p.tasks] + ([(p.ablation_task, ("bc", "none"))] if p.ablation_task else [])
    before = {r["task"]: r["before"]["success_mean"] for r in res["tasks"]}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (task, regs) in zip(axes[0], panels):
        for i, (reg, seed) in enumerate((r, s) for r in regs for s in p.seeds):
            recs = read_metrics(pipe.finetune_dir / run_label(task, reg, seed))
            label = f"{reg}" + (f" s{seed}" if len(p.seeds) > 1 else "")
            for key, style in (("eval_success_rate", "-o"), ("train_success_rate", "--x")):
                pts = [(r["step"], r[key]) for r in recs if key in r]
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{i}", markersize=3, alpha=1.0 if style == "-o" else 0.4,
                            label=label if style == "-o" else None)
        ax.axhline(before[task], color="grey", linestyle=":", label="pre-trained")
        ax.set_title(f"{task} ({DIFFICULTY[task]})" + (": BC vs none" if len(regs) > 1 else ""), fontsize=10)
        ax.set(xlabel="env steps", ylabel="success rate", ylim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("solid: evaluation (deterministic DDIM); dashed: training rollouts; dotted: pre-trained planner",
                 fontsize=9)
    save_figure(fig, out)


# -- running ------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def machine_block(device: str) -> str:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"date: {_now()}\ncpu: {cpu}\ncores: {os.cpu_count()}\ngpu: {gpu}\ndevice: {device}\n"
            f"python: {platform.python_version()}\ntorch: {torch.__version__}\n"
            f"OMP_NUM_THREADS: {os.environ.get('OMP_NUM_THREADS', 'unset')}\n")


def status(pipe: Pipeline, stage: Stage) -> str:
    if pipe.marker(stage.name).exists():
        return "done"
    return "partial" if stage.resumable is not None and stage.resumable.exists() else "pending"


def describe(pipe: Pipeline) -> str:
    """The stage plan with budgets and each stage's state (``--dry-run``)."""
    stages = pipe.stages()
    lines = [f"preset {pipe.p.name} → {pipe.out}", "", pipe.p.budget, "",
             f"tasks: {', '.join(f'{t} ({DIFFICULTY[t]})' for t in pipe.p.tasks)}; seeds {list(pipe.p.seeds)}; "
             f"ablation: {pipe.p.ablation_task or 'none'}; device {pipe.p.device}", "", "stages:"]
    width = max(len(s.name) for s in stages)
    for i, s in enumerate(stages, 1):
        lines.append(f"  {i:>2}/{len(stages)} {s.name:<{width}}  {status(pipe, s):<8} {s.plan}")
    return "\n".join(lines)


def run(preset: Preset, out: str | Path, progress: bool = True, command: str | None = None) -> dict:
    """Run the pipeline's unfinished stages in order; returns ``results.json``'s content."""
    from sodp_fast.data.format import read_json

    with RunFolder(out) as folder:
        out, pinned = folder.path, folder.path / "repro.json"  # the options; a rerun may not change finished work
        if pinned.exists():
            check_config(read_json(pinned).get("preset", {}), preset.to_dict(), Preset.RESUMABLE, out)
        write_json(pinned, {"preset": preset.to_dict(), "updated": _now()})
        command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        folder.append_text("command.txt", f"# {_now()}\n{command}\n")
        folder.append_text("machine.txt", machine_block(preset.device) + "\n")
        pipe = Pipeline(preset, out, progress)
        stages = pipe.stages()
        for i, stage in enumerate(stages, 1):
            marker = pipe.marker(stage.name)
            head = f"[{i}/{len(stages)}] {stage.name}"
            if marker.exists():
                print(f"{head}: done, skipped", flush=True)
                continue
            print(f"{head} ({'resuming' if status(pipe, stage) == 'partial' else 'starting'}): {stage.plan}",
                  flush=True)
            t0 = time.perf_counter()
            summary = stage.run()
            seconds = time.perf_counter() - t0
            write_json(marker, {"stage": stage.name, "seconds": round(seconds, 1), "finished": _now(),
                                "summary": summary})
            print(f"{head}: finished in {seconds:.0f} s", flush=True)
        results = json.loads((out / "results.json").read_text())
        print((out / "results.md").read_text(), end="", flush=True)
    return results
