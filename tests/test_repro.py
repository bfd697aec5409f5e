"""``sodp repro``: a micro preset runs end to end on real Meta-World, writes the table, plot and JSON, and a
rerun after a kill or a deleted marker redoes only the unfinished stages."""
import json
import re
import shutil
from pathlib import Path

import pytest

from sodp_fast import cli, repro
from sodp_fast.repro import Pipeline, ReproError, get_preset

# Everything tiny: one task, 2 episodes of 40 steps of data, 20 pre-training steps, 2 × 80 env steps of
# fine-tuning after one init iteration, 2 evaluation episodes; envs in-process (no worker start-up). Every kind
# of run: SODP on reach, the ablation none and scratch on reach, bc and scratch on push (unseen: no data).
MICRO = dict(tasks=("reach",), transitions_per_task=80, max_episode_steps=40, unet="tiny", pretrain_steps=20,
             pretrain_batch=16, finetune_env_steps=240, finetune_num_envs=2, finetune_grad_steps=2,
             finetune_n_init=2, finetune_reg_weight=3.0, finetune_eval_every=80, finetune_eval_episodes=2,
             eval_episodes=2, seeds=(0,),
             ablation_tasks=("reach",), ablation=("none", "scratch"), unseen_tasks=("push",), data_workers=0,
             env_workers=0, device="cpu",
             smoke=False)  # the full report, with its goal line (the quickstart itself is a smoke test)


def micro():
    return get_preset("quickstart", **MICRO)


def markers(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The micro run, killed once in the middle of the ablation's fine-tuning and then rerun to the end."""
    import sodp_fast.train.finetune as ft

    out = tmp_path_factory.mktemp("repro") / "run"
    real_update, real_finetune, resumed = ft.Finetuner.update, ft.finetune, []

    def killed_update(self):
        if self.cfg.reg == "none":
            raise KeyboardInterrupt  # after the init rollouts' checkpoint, before the first update
        return real_update(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft.Finetuner, "update", killed_update)
        with pytest.raises(KeyboardInterrupt):
            repro.run(micro(), out, progress=False, command="test")
    at_kill = markers(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "finetune", lambda cfg, resume=False: resumed.append((cfg.reg, resume))
                   or real_finetune(cfg, resume))
        results = repro.run(micro(), out, progress=False, command="test")
    return out, results, at_kill, resumed


def test_micro_preset_runs_end_to_end(finished):
    out, res = finished[:2]
    for name in ("results.json", "results.md", "curves.png", "command.txt", "machine.txt", "repro.json"):
        assert (out / name).stat().st_size > 0, name
    assert len(markers(out)) == 14  # data, pretrain, eval-pretrained, 5 × (finetune, eval), report
    [row] = res["tasks"]
    assert row["task"] == "reach-v3" and row["difficulty"] == "easy" and row["variant"] == "bc"
    assert 0 <= row["before"]["success_mean"] <= 1 and 0 <= row["after"]["success_mean"] <= 1
    assert row["delta"]["mean"] == pytest.approx(100 * (row["after"]["success_mean"] - row["before"]["success_mean"]))
    assert row["delta"]["beyond_spread"] is None  # one seed: no spread to exceed
    [abl], [unseen] = res["ablation"], res["unseen"]
    assert [r["variant"] for r in abl["rows"]] == ["bc", "none", "scratch"] and abl["task"] == "reach-v3"
    assert [r["variant"] for r in unseen["rows"]] == ["bc", "scratch"] and unseen["rows"][0]["data_success"] is None
    assert unseen["rows"][1]["bc_minus"]["mean"] == pytest.approx(
        100 * (unseen["rows"][0]["after"]["success_mean"] - unseen["rows"][1]["after"]["success_mean"]))
    assert json.loads((out / "results.json").read_text()) == res
    md = (out / "results.md").read_text()
    assert "| reach-v3 | easy |" in md and "| none |" in md and "Goal (mean after ≥ 2 × mean before)" in md
    assert "## Unseen tasks (paper Table 3): not in the pre-training data: push-v3" in md
    assert (out / "ablation.png").stat().st_size > 0
    machine = (out / "machine.txt").read_text()
    assert "cores:" in machine and "torch:" in machine and "cpu:" in machine
    for label in ("reach-v3-bc-s0", "reach-v3-none-s0"):  # learning curves: before, then after each iteration
        recs = [json.loads(line) for line in (out / "finetune" / label / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs if "eval_success_rate" in r] == [0, 160, 240]  # init iteration: 80 steps
        cfg = json.loads((out / "finetune" / label / "config.json").read_text())
        assert cfg["reg_weight"] == 3.0 and cfg["lr"] == micro().finetune_lr  # the preset's λ and lr reach every run


def test_a_smoke_preset_reports_a_set_up_check_not_a_result(finished):
    res = json.loads(json.dumps(finished[1]))
    res["preset"]["smoke"], res["goal_ratio"], res["summary"]["goal_met"] = True, None, None
    md = repro.results_markdown(res)
    assert "Set-up check (smoke test), not a result" in md and "Goal" not in md and "NOT met" not in md
    assert repro.QUICKSTART.smoke and not repro.CPU_MT10.smoke and not repro.PAPER_MT10.smoke


def test_rerun_redoes_only_the_stages_without_a_marker(finished, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    before = markers(out)
    # As after a kill while evaluating the ablation run: its eval and the report have no marker yet.
    for stage in ("eval/reach-v3-none-s0", "report"):
        Pipeline(micro(), out).marker(stage).unlink()
    (out / "results.json").unlink()
    calls = []
    monkeypatch.setattr("sodp_fast.train.finetune.finetune", lambda *a, **k: calls.append("finetune"))
    monkeypatch.setattr("sodp_fast.train.pretrain.pretrain", lambda *a, **k: calls.append("pretrain"))
    res = repro.run(micro(), out, progress=False, command="test")
    assert calls == []
    after = markers(out)
    redone = {k for k in after if after[k] != before.get(k)}
    assert redone == {"eval_reach-v3-none-s0.json", "report.json"}
    assert res["tasks"] == finished[1]["tasks"]  # deterministic evaluation: same numbers again
    assert (out / "command.txt").read_text().count("test") == 3  # one line per invocation


def test_a_killed_run_resumes_the_killed_stage_from_its_checkpoint(finished):
    out, _, at_kill, resumed = finished
    assert set(at_kill) == {"data.json", "pretrain.json", "eval-pretrained.json", "finetune_reach-v3-bc-s0.json",
                            "eval_reach-v3-bc-s0.json"}
    assert {k: v for k, v in markers(out).items() if k in at_kill} == at_kill  # finished stages not redone
    # the killed stage ran again from its own checkpoint; the runs after it (reach scratch, then the unseen
    # table's bc and scratch on push) started fresh
    assert resumed == [("none", True), ("bc", False), ("bc", False), ("bc", False)]


def test_other_options_on_an_existing_run_are_refused(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    with pytest.raises(ReproError, match="eval_episodes"):
        repro.run(get_preset("quickstart", **{**MICRO, "eval_episodes": 3}), out, progress=False)


def test_paper_mt10_dry_run_prints_the_plan(tmp_path, capsys):
    assert cli.main(["repro", "--preset", "paper-mt10", "--dry-run", "--out", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    assert "default U-Net, 20,000 steps" in text and "26/26 report" in text and "basketball-v3-none-s0" in text
    assert not (tmp_path / "p").exists()


def test_cli_overrides_reach_the_preset(tmp_path, capsys):
    args = cli.build_parser().parse_args(["repro", "--preset", "cpu-mt10", "--tasks", "reach,push", "--seeds", "0,1",
                                          "--ablation-tasks", "none", "--unseen-tasks", "none", "--finetune-lr",
                                          "3e-4", "--finetune-reg-weight", "5"])
    from sodp_fast.commands.repro import preset_from_args

    p = preset_from_args(args)
    assert p.tasks == ("reach-v3", "push-v3") and p.seeds == (0, 1) and p.ablation_tasks == p.unseen_tasks == ()
    assert p.finetune_lr == 3e-4 and p.finetune_reg_weight == 5 and p.unet == "tiny" and len(p.finetune_runs()) == 4
    with pytest.raises(ReproError, match="not among the tasks"):
        get_preset("cpu-mt10", tasks=("reach",))
    with pytest.raises(ReproError, match="must be left out of the data"):
        get_preset("cpu-mt10", unseen_tasks=("reach",))
    with pytest.raises(ReproError, match="unknown ablation variant"):
        get_preset("cpu-mt10", ablation=("bc",))


def test_plot_accepts_a_repro_folder(finished, tmp_path, capsys):
    out = finished[0]
    assert cli.main(["plot", str(out), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_the_readme_states_the_presets_budgets():
    """The time a preset's budget (printed by --dry-run) states first is the one the README gives."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for preset, where in ((repro.QUICKSTART, "**1. Install and run the main job"),
                          (repro.CPU_MT10, "`sodp repro --preset cpu-mt10` runs")):
        [stated] = re.findall(r"≈ [\d.]+ (?:min|h) on 2 CPU cores", preset.budget.splitlines()[0])
        assert stated in readme.split(where, 1)[1][:120], (preset.name, stated)


def test_gains_are_paired_by_seed_and_checked_against_their_spread():
    c = repro.compare([0.5, 0.6, 0.7], [0.2, 0.2, 0.3])  # paired gains 30, 40, 40 points
    assert c["mean"] == pytest.approx(110 / 3) and c["std"] == pytest.approx(5.7735, rel=1e-4) and c["beyond_spread"]
    assert repro.compare([0.5, 0.1, 0.4], [0.2, 0.3, 0.2])["beyond_spread"] is False  # +30, −20, +20: within spread
    assert repro.compare([0.5], [0.2])["beyond_spread"] is None


def test_cpu_mt10_runs_the_issues_study_table_by_table():
    p = repro.CPU_MT10
    runs = p.finetune_runs()
    assert len(p.tasks) == 10 and p.seeds == (0, 1, 2) and len(runs) == 3 * (10 + 3 * 5 + 3 * 2)
    main = [(t, "bc", s) for s in p.seeds for t in p.tasks]
    assert runs[:len(main)] == main  # the goal's table complete over all seeds first, then the ablation's
    assert {v for _, v, _ in runs[len(main):len(main) + 3 * 3 * 5]} == set(p.ablation)
    assert {v for _, v, _ in runs} == {"bc", "none", "kl", "pl", "scratch", "bc-only"}
    assert not set(p.unseen_tasks) & set(p.tasks) and set(p.ablation_tasks) <= set(p.tasks)
