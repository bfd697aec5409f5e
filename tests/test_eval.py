import json

import numpy as np
import pytest
import torch

from sodp_fast import cli
from sodp_fast.checkpoint import save_planner
from sodp_fast.envs.workers import ChunkVecEnv
from sodp_fast.eval import evaluate, markdown_table, rounds_for
from sodp_fast.nn.unet import preset
from sodp_fast.policy import DiffusionPlanner, PlannerConfig

FAST = dict(max_episode_steps=20)


@pytest.fixture(scope="module")
def planner():
    torch.manual_seed(0)
    return DiffusionPlanner(PlannerConfig(unet=preset("tiny"))).eval()


def test_rounds_even_out_the_last_one():
    assert rounds_for(50, 16) == (4, 13)
    assert rounds_for(3, 2) == (2, 2)
    assert rounds_for(8, 4) == (2, 4)
    assert rounds_for(2, 10) == (1, 2)


def test_evaluate_is_deterministic_for_any_worker_count(planner):
    a = evaluate(planner, "reach", episodes=3, seed=1, num_envs=2, num_workers=0, **FAST)
    b = evaluate(planner, "reach", episodes=3, seed=1, num_envs=2, num_workers=2, **FAST)
    assert a["episodes"] == len(a["returns"]) == len(a["successes"]) == 3
    assert a["env_steps"] == 4 * 20  # two rounds of two envs; the surplus episode is dropped
    assert a["returns"] == b["returns"] and a["successes"] == b["successes"]
    assert a["return_mean"] == pytest.approx(np.mean(a["returns"])) and 0 <= a["success_rate"] <= 1
    c = evaluate(planner, "reach", episodes=3, seed=2, num_envs=2, num_workers=0, **FAST)
    assert c["returns"] != a["returns"]


def test_stochastic_evaluation_is_seeded_and_differs_from_deterministic(planner):
    kw = dict(episodes=2, seed=1, num_envs=2, num_workers=0, **FAST)
    a = evaluate(planner, "reach", deterministic=False, **kw)
    b = evaluate(planner, "reach", deterministic=False, **kw)
    d = evaluate(planner, "reach", **kw)
    assert a["returns"] == b["returns"] and a["returns"] != d["returns"]


def test_evaluate_reuses_an_open_vector_env(planner):
    with ChunkVecEnv("reach", 2, seed=1, num_workers=0, max_episode_steps=20) as venv:
        got = evaluate(planner, "reach", episodes=3, seed=1, venv=venv)
        assert venv.num_envs == 2 and not venv._closed
    ref = evaluate(planner, "reach", episodes=3, seed=1, num_envs=2, num_workers=0, **FAST)
    assert got["returns"] == ref["returns"]


def test_eval_command_writes_json_and_table(planner, tmp_path, capsys):
    ckpt = tmp_path / "model.safetensors"
    save_planner(ckpt, planner)
    argv = ["eval", "--ckpt", ckpt, "--tasks", "reach,push", "--episodes", "3", "--seeds", "0,1", "--num-envs", "2",
            "--workers", "0", "--max-episode-steps", "16", "--out", tmp_path / "ev"]
    assert cli.main(list(map(str, argv))) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert list(res["tasks"]) == ["reach-v3", "push-v3"] and res["seeds"] == [0, 1]
    for t in res["tasks"].values():
        assert [r["seed"] for r in t["runs"]] == [0, 1] and all(len(r["returns"]) == 3 for r in t["runs"])
    avg = res["average"]
    assert avg["return_mean"] == pytest.approx(np.mean([t["return_mean"] for t in res["tasks"].values()]))
    table = (tmp_path / "ev" / "eval.md").read_text()
    assert table == markdown_table(res) and table in capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == "| Task | Success rate | Return |" and len(lines) == 5
    assert lines[2].startswith("| reach-v3 | ") and lines[-1].startswith("| **Average** | ")


def test_eval_rejects_bad_checkpoints(tmp_path, capsys):
    base = ["eval", "--tasks", "reach", "--episodes", "1", "--workers", "0"]
    assert cli.main(base + ["--ckpt", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    save_planner(other, DiffusionPlanner(PlannerConfig(obs_dim=10, unet=preset("tiny"))))
    assert cli.main(base + ["--ckpt", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "obs_dim=10" in err
    assert cli.main(base + ["--ckpt", str(other), "--seeds", "a"]) == 2
    assert "--seeds" in capsys.readouterr().err
