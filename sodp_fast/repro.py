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
from functools import cache, partial
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
    ablation_tasks: tuple[str, ...] = opt(help="tasks also fine-tuned with each ablation variant (paper Fig. 5); "
                                          "none: no ablation")
    ablation: tuple[str, ...] = opt(("none",), "ablation variants: none, kl, pl (other regularisers than bc), "
                                    "scratch (SODP_scratch: fresh weights after the init rollouts), bc-only (PPO "
                                    "off: BC toward B_target alone)")
    unseen_tasks: tuple[str, ...] = opt((), "tasks left out of the pre-training data, fine-tuned with bc and from "
                                        "scratch (paper Table 3); none: no such study")
    finetune_reg_weight: float = opt(1.0, "lambda: weight of every variant's regulariser (paper: 1)")
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
        for key in ("ablation_tasks", "unseen_tasks"):
            names = getattr(self, key)
            set_(key, () if [n.lower() for n in names] in ([], ["none"]) else tuple(resolve_tasks(list(names))))
        if not set(self.ablation_tasks) <= set(self.tasks):
            raise ReproError(f"ablation tasks {', '.join(sorted(set(self.ablation_tasks) - set(self.tasks)))} are not "
                             f"among the tasks ({', '.join(self.tasks)}); pick some of them or 'none'")
        if set(self.unseen_tasks) & set(self.tasks):
            raise ReproError(f"unseen tasks {', '.join(sorted(set(self.unseen_tasks) & set(self.tasks)))} are also "
                             "pre-training tasks; an unseen task must be left out of the data")
        if bad := [v for v in self.ablation if v not in VARIANTS or v == "bc"]:
            raise ReproError(f"unknown ablation variant(s) {', '.join(bad)}; choose from "
                             f"{', '.join(v for v in VARIANTS if v != 'bc')}")
        if not self.seeds:
            raise ReproError("need at least one seed")
        check_device(self.device)

    def finetune_runs(self) -> list[tuple[str, str, int]]:
        """(task, variant, seed) of every fine-tuning run, table by table and seed by seed within each, so that an
        interrupted study has its first tables complete over all seeds: SODP (bc) on every task (the goal's table),
        then the ablation variants, then bc and scratch on unseen tasks."""
        return ([(t, "bc", s) for s in self.seeds for t in self.tasks]
                + [(t, v, s) for s in self.seeds for t in self.ablation_tasks for v in self.ablation]
                + [(t, v, s) for s in self.seeds for t in self.unseen_tasks for v in ("bc", "scratch")])

    def variants(self, task: str) -> tuple[str, ...]:
        """The variants fine-tuned on ``task``, SODP (bc) first."""
        if task in self.unseen_tasks:
            return ("bc", "scratch")
        return ("bc", *self.ablation) if task in self.ablation_tasks else ("bc",)


# What each variant of a fine-tuning run sets in FinetuneConfig (paper §5.4 regularisers, §5.5 SODP_scratch).
# bc-only switches PPO off and keeps BC: the control for whether RL adds anything to imitating B_target.
VARIANTS: dict[str, dict] = {"bc": {"reg": "bc"}, "none": {"reg": "none"}, "kl": {"reg": "kl"}, "pl": {"reg": "pl"},
                             "scratch": {"reg": "bc", "from_scratch": True},
                             "bc-only": {"reg": "bc", "ppo_weight": 0.0}}


QUICKSTART = Preset(
    name="quickstart", tasks=("reach-v3",), transitions_per_task=20_000, unet="tiny", pretrain_steps=2_000,
    pretrain_batch=128, pretrain_lr=1e-3, finetune_env_steps=10_000, finetune_num_envs=10,
    finetune_grad_steps=10, finetune_n_init=10, finetune_lr=2e-6, finetune_eval_every=5_000,
    finetune_eval_episodes=10, eval_episodes=10, seeds=(0,), ablation_tasks=(), data_workers=1, smoke=True,
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

CPU_MT10 = Preset(
    name="cpu-mt10", tasks=("paper-mt10",), transitions_per_task=50_000, unet="tiny", pretrain_steps=10_000,
    pretrain_batch=256, pretrain_lr=1e-3, finetune_env_steps=40_000, finetune_num_envs=10, finetune_grad_steps=30,
    finetune_n_init=10, finetune_lr=1e-5, finetune_reg_weight=10.0, finetune_eval_every=10_000,
    finetune_eval_episodes=10, eval_episodes=50, seeds=(0, 1, 2),
    ablation_tasks=("reach-v3", "sweep-into-v3", "window-open-v3"),
    ablation=("none", "kl", "pl", "scratch", "bc-only"),
    unseen_tasks=("drawer-open-v3", "plate-slide-side-v3", "handle-pull-side-v3"),
    budget="""\
≈ 4 h on 2 CPU cores (measured stage times are in results.json): the paper's ten Table-6 tasks,
one multi-task pre-training, then per task and seed: SODP (bc) on all ten (Table 6), the regulariser ablation
(none, kl, pl, scratch, and bc-only: PPO off) on reach, sweep-into and window-open (Fig. 5; pre-trained
26 / 36 / 68 % in the calibration, so each has room to rise or fall), and bc vs scratch on three tasks left out
of the data: drawer-open, plate-slide-side, handle-pull-side (Table 3). Pre-trained mean 33 % (the paper's:
32 %). 3 seeds; runs go table by table (main, ablation, unseen), so an interrupted study has its first tables
complete over all seeds. Resumable stage by stage.
  data      10 × 50 k transitions (100 episodes per task), 2 processes (measured)         ≈ 1 min
  pretrain  tiny U-Net (236 k params), 10 k steps × batch 256 at 0.031 s/step (measured)  ≈ 5 min
  eval      50 episodes 18-36 s (measured); 13 tasks × 3 seeds before, 93 runs after       ≈ 50 min
  finetune  93 runs (30 bc, 45 ablation, 18 unseen) × 40 k env steps = 1 init + 7 update iterations of
            10 envs × 30 grad steps, plus 5 curve points × 10 episodes: 83-180 s per run (measured) ≈ 3 h
Budgets are cut ≈ 25× from the paper's 1 M env steps per task to fit. Fine-tuning lr 1e-5 (the paper's) with
λ = 10, not 1: at λ = 1 PPO's noise collapsed good tiny planners at lr 1e-5 and lr 2e-6 left them unchanged; λ was
chosen on button-press-wall and reach-wall, tasks outside this study (profiles/2026-12-02-cpu-2core-finetune-lambda/).
Pre-training lr 1e-3 (10× the paper's: 50× fewer steps).""")

PAPER_MT10 = Preset(
    name="paper-mt10", tasks=("paper-mt10",), transitions_per_task=100_000, unet="default", pretrain_steps=20_000,
    pretrain_batch=256, pretrain_lr=1e-4, finetune_env_steps=100_000, finetune_num_envs=10,
    finetune_grad_steps=30, finetune_n_init=10, finetune_lr=1e-5, finetune_eval_every=20_000,
    finetune_eval_episodes=20, eval_episodes=50, seeds=(0,), ablation_tasks=("basketball-v3",), data_workers=16,
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

PRESETS: dict[str, Preset] = {p.name: p for p in (QUICKSTART, CPU_MT10, PAPER_MT10)}


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
            Stage("eval-pretrained", f"{len(p.tasks + p.unseen_tasks)} tasks × {len(p.seeds)} seeds × "
                  f"{p.eval_episodes} episodes", partial(self._evaluate, self.pretrain_dir / pt.MODEL_FILE,
                                                         list(p.tasks + p.unseen_tasks), p.seeds, "pretrained")),
        ]
        for task, variant, seed in p.finetune_runs():
            label = run_label(task, variant, seed)
            out.append(Stage(f"finetune/{label}", f"{p.finetune_env_steps:,} env steps, {p.finetune_num_envs} "
                             f"envs, {p.finetune_grad_steps} grad steps/iteration, lr {p.finetune_lr:g}, λ "
                             f"{p.finetune_reg_weight:g}, {variant}",
                             partial(self._finetune, task, variant, seed), self.finetune_dir / label / ft.STATE_FILE))
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

    def _finetune(self, task: str, variant: str, seed: int) -> dict:
        from sodp_fast.train.finetune import STATE_FILE, FinetuneConfig, finetune
        from sodp_fast.train.pretrain import MODEL_FILE

        p, run = self.p, self.finetune_dir / run_label(task, variant, seed)
        cfg = FinetuneConfig(out=str(run), task=task, ckpt=str(self.pretrain_dir / MODEL_FILE),
                             env_steps=p.finetune_env_steps, num_envs=p.finetune_num_envs,
                             env_groups=min(2, p.finetune_num_envs), num_workers=p.env_workers,
                             max_episode_steps=p.max_episode_steps, n_init=p.finetune_n_init,
                             grad_steps=p.finetune_grad_steps, lr=p.finetune_lr,
                             reg_weight=p.finetune_reg_weight, **VARIANTS[variant],
                             eval_every=p.finetune_eval_every, eval_episodes=p.finetune_eval_episodes,
                             ckpt_every=p.finetune_eval_every, seed=seed, device=p.device, progress=self.progress)
        summary = finetune(cfg, resume=(run / STATE_FILE).exists())
        return {k: summary[k] for k in ("env_steps", "iterations", "grad_steps")}

    def _report(self) -> dict:
        results = collect_results(self)
        write_json(self.out / "results.json", results)
        write_text(self.out / "results.md", results_markdown(results))
        plot_curves(self, results, self.out / "curves.png")
        if results["ablation"] or results["unseen"]:
            plot_ablation(results, self.out / "ablation.png")
        sm = results["summary"]
        return {"before": sm["before_mean"], "after": sm["after_mean"], "goal_met": sm["goal_met"]}


# -- report -------------------------------------------------------------------------------------------------
GOAL_RATIO = 2.0  # the study's goal: mean fine-tuned success ≥ this × mean pre-trained success over the tasks


def _std(x) -> float:
    """Spread over seeds: sample std (ddof 1); 0 for one seed, where no spread is known."""
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def compare(a, b) -> dict:
    """a − b in points, paired by seed (a seed fixes the evaluation goals and the init rollouts): mean ± std over
    seeds, and whether the gain exceeds the seed-to-seed spread (mean > std; unknown with one seed)."""
    d = 100 * (np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    return {"mean": float(d.mean()), "std": _std(d),
            "beyond_spread": bool(d.mean() > _std(d)) if len(d) > 1 else None}


def collect_results(pipe: Pipeline) -> dict:
    from sodp_fast.data.format import MANIFEST

    p = pipe.p
    data = json.loads((pipe.data / MANIFEST).read_text())["tasks"]
    before_eval = json.loads((pipe.eval_dir / "pretrained.json").read_text())

    def side(evals: list[dict], task: str) -> dict:
        """Success per seed (the run of seed s in evals[s]) and returns over all those episodes."""
        runs = [next(r for r in e["tasks"][task]["runs"] if r["seed"] == s) for e, s in zip(evals, p.seeds)]
        succ, rets = [r["success_rate"] for r in runs], np.concatenate([r["returns"] for r in runs])
        return {"per_seed": succ, "success_mean": float(np.mean(succ)), "success_std": _std(succ),
                "return_mean": float(rets.mean()), "return_std": float(rets.std())}

    @cache  # bc rows of ablation and unseen tasks are also the main table's: read once
    def row(task: str, variant: str) -> dict:
        after = [json.loads((pipe.eval_dir / f"{run_label(task, variant, s)}.json").read_text()) for s in p.seeds]
        b, a = side([before_eval] * len(p.seeds), task), side(after, task)
        return {"task": task, "difficulty": DIFFICULTY[task], "variant": variant,
                "data_success": data[task]["success_rate"] if task in data else None, "before": b, "after": a,
                "delta": compare(a["per_seed"], b["per_seed"])}

    main = [row(t, "bc") for t in p.tasks]
    per_seed = lambda key: np.mean([r[key]["per_seed"] for r in main], axis=0)  # noqa: E731 (task mean per seed)
    before, after = per_seed("before"), per_seed("after")
    ratio = float(after.mean() / before.mean()) if before.mean() > 0 else None
    summary = {"before_mean": float(before.mean()), "before_std": _std(before), "after_mean": float(after.mean()),
               "after_std": _std(after), "delta": compare(after, before), "ratio": ratio,
               "goal_met": None if p.smoke else ratio is not None and ratio >= GOAL_RATIO}

    def study(task: str) -> dict:
        rows = [row(task, v) for v in p.variants(task)]
        for r in rows[1:]:
            r["bc_minus"] = compare(rows[0]["after"]["per_seed"], r["after"]["per_seed"])
        return {"task": task, "rows": rows}

    seconds = {s.name: json.loads(pipe.marker(s.name).read_text())["seconds"] for s in pipe.stages()
               if pipe.marker(s.name).exists()}
    return {"preset": p.to_dict(), "goal_ratio": None if p.smoke else GOAL_RATIO, "tasks": main,
            "summary": summary, "ablation": [study(t) for t in p.ablation_tasks],
            "unseen": [study(t) for t in p.unseen_tasks],
            "stage_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1)}


def _pct(r: dict, seeds: int) -> str:
    return f"{100 * r['success_mean']:.1f}" + (f" ± {100 * r['success_std']:.1f}" if seeds > 1 else "")


def _pts(c: dict, seeds: int) -> str:
    return f"{c['mean']:+.1f}" + (f" ± {c['std']:.1f}" if seeds > 1 else "")


def _beyond(c: dict) -> str:
    return {True: "yes", False: "no", None: "n/a (1 seed)"}[c["beyond_spread"]]


def results_markdown(res: dict) -> str:
    p, n = res["preset"], len(res["preset"]["seeds"])
    smoke = ["**Set-up check (smoke test), not a result.** This preset runs every stage once at toy scale to "
             "show that the installation works end to end; its before/after numbers come from a few episodes "
             "and one or two updates and say nothing about SODP. For results run `sodp repro --preset "
             "cpu-mt10` (CPU) or `--preset paper-mt10` (GPU).", ""] if p.get("smoke") else []
    spread = (f"mean ± std over seeds {p['seeds']} (sample std); 'beyond spread': the mean paired gain "
              "exceeds its std over seeds") if n > 1 else f"one seed ({p['seeds'][0]}): no spread is known"
    lines = [f"# SODP {'set-up check' if smoke else 'reproduction'}: preset {p['name']}", "", *smoke,
             f"Success rate (%) over {p['eval_episodes']} episodes per task and seed; {spread}. Before = the "
             f"pre-trained planner, after = fine-tuned for {p['finetune_env_steps']:,} env steps with SODP's BC "
             "regulariser; both on the same goals and initial states per seed (deterministic DDIM). Return = mean "
             "episode return; data = the share of successful episodes in the pre-training data.", "",
             "| Task | Difficulty | Data | Success before | Success after | Δ (points) | Beyond spread "
             "| Return before | Return after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["tasks"]:
        lines.append(f"| {r['task']} | {r['difficulty']} | {100 * r['data_success']:.0f} | {_pct(r['before'], n)} "
                     f"| {_pct(r['after'], n)} | {_pts(r['delta'], n)} | {_beyond(r['delta'])} "
                     f"| {r['before']['return_mean']:.0f} | {r['after']['return_mean']:.0f} |")
    sm = res["summary"]
    pm = lambda k: f"{100 * sm[k + '_mean']:.1f}" + (f" ± {100 * sm[k + '_std']:.1f}" if n > 1 else "")  # noqa
    lines.append(f"| **Average** | | | {pm('before')} | {pm('after')} | {_pts(sm['delta'], n)} | "
                 f"{_beyond(sm['delta'])} | | |")
    if res["goal_ratio"] is not None:
        ratio = "undefined (pre-trained mean 0)" if sm["ratio"] is None else f"{sm['ratio']:.2f}×"
        lines += ["", f"Goal (mean after ≥ {res['goal_ratio']:g} × mean before): after/before = {ratio}: "
                  f"{'met' if sm['goal_met'] else 'NOT met'}."]
    else:
        lines += ["", "Set-up check passed: every stage ran and wrote its files (no goal applies to a smoke test)."]
    titles = {"ablation": "Regulariser ablation (paper Fig. 5)", "unseen": "Unseen tasks (paper Table 3): not in "
              "the pre-training data"}
    for key, title in titles.items():
        for st in res[key]:
            lines += ["", f"## {title}: {st['task']}", "",
                      "| Variant | Success before | Success after | Δ (points) | bc − variant (points) | bc ahead "
                      "beyond spread |", "|---|---|---|---|---|---|"]
            for r in st["rows"]:
                vs = r.get("bc_minus")
                name = "bc (SODP)" if r["variant"] == "bc" else r["variant"]
                lines.append(f"| {name} | {_pct(r['before'], n)} | {_pct(r['after'], n)} | {_pts(r['delta'], n)} | "
                             f"{_pts(vs, n) if vs else ''} | {_beyond(vs) if vs else ''} |")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in res["stage_seconds"].items())
    lines += ["", f"Stage wall times: {times}; total {res['total_seconds'] / 60:.1f} min (see machine.txt).", ""]
    return "\n".join(lines)


def plot_curves(pipe: Pipeline, res: dict, out: Path) -> None:
    """Evaluation success vs env steps, one panel per task, one line per variant: mean over seeds, band ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sodp_fast.logging import read_metrics, save_figure

    p = pipe.p
    tasks = list(p.tasks + p.unseen_tasks)
    before = {r["task"]: r["before"]["success_mean"] for st in [{"rows": res["tasks"]}, *res["unseen"]]
              for r in st["rows"]}
    cols = min(5, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for i, variant in enumerate(p.variants(task)):
            curves = [dict((r["step"], r["eval_success_rate"]) for r in
                           read_metrics(pipe.finetune_dir / run_label(task, variant, s)) if "eval_success_rate" in r)
                      for s in p.seeds]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            y = np.array([[c[x] for x in steps] for c in curves])
            ax.plot(steps, y.mean(0), "-o", color=f"C{i}", markersize=3, label=variant)
            if len(curves) > 1:
                ax.fill_between(steps, y.mean(0) - y.std(0, ddof=1), y.mean(0) + y.std(0, ddof=1), color=f"C{i}",
                                alpha=0.2)
        ax.axhline(before[task], color="grey", linestyle=":", label="pre-trained")
        unseen = " unseen" if task in p.unseen_tasks else ""
        ax.set_title(f"{task} ({DIFFICULTY[task]}{unseen})", fontsize=9)
        ax.set(xlabel="env steps", ylabel="success rate", ylim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle(f"evaluation success (deterministic DDIM, {p.finetune_eval_episodes} episodes per point): mean over "
                 f"{len(p.seeds)} seed(s), band ± std; dotted: pre-trained planner ({p.eval_episodes} episodes)",
                 fontsize=9)
    save_figure(fig, out)


def plot_ablation(res: dict, out: Path) -> None:
    """Bars of final success per ablation task and variant (mean over seeds, error bar ± std), like paper Fig. 5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sodp_fast.logging import save_figure

    studies = res["ablation"] + res["unseen"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.9 * len(studies), 3.4))
    variants = list(dict.fromkeys(r["variant"] for st in studies for r in st["rows"]))
    width = 0.8 / (len(variants) + 1)
    for j, v in enumerate(["pre-trained", *variants]):
        xs, ys, es = [], [], []
        for i, st in enumerate(studies):
            r = next((r for r in st["rows"] if r["variant"] == v), None) if v != "pre-trained" else st["rows"][0]
            if r is not None:
                side = r["before" if v == "pre-trained" else "after"]
                xs.append(i + (j - len(variants) / 2) * width)
                ys.append(100 * side["success_mean"])
                es.append(100 * side["success_std"])
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=v, color="lightgrey" if j == 0 else f"C{j - 1}")
    ax.set_xticks(range(len(studies)), [st["task"].removesuffix("-v3") + ("\n(unseen)" if st in res["unseen"] else "")
                                        for st in studies], fontsize=8)
    ax.set(ylabel="success rate (%)", ylim=(0, 100))
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"final success, mean ± std over {len(res['preset']['seeds'])} seed(s)", fontsize=9)
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
             f"ablation: {', '.join(pipe.p.ablation_tasks) or 'none'} ({', '.join(pipe.p.ablation)}); unseen: "
             f"{', '.join(pipe.p.unseen_tasks) or 'none'}; device {pipe.p.device}", "", "stages:"]
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
