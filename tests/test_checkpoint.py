import json

import pytest
import torch
from safetensors.torch import save_file

from sodp_fast.checkpoint import atomic_write, load_planner, save_planner
from sodp_fast.errors import CheckpointError
from sodp_fast.nn.unet import preset
from sodp_fast.policy import DiffusionPlanner, PlannerConfig


def make_planner(obs_dim=5, seed=0):
    torch.manual_seed(seed)
    p = DiffusionPlanner(PlannerConfig(obs_dim=obs_dim, action_dim=3, unet=preset("tiny")))
    p.normalizer.set_stats(torch.randn(obs_dim), torch.rand(obs_dim) + 0.5)
    return p


def test_round_trip_restores_weights_stats_and_samples(tmp_path):
    p = make_planner()
    path = tmp_path / "model.safetensors"
    save_planner(path, p, meta={"step": 7})
    q, meta, _ = load_planner(path, expect={"obs_dim": 5, "action_dim": 3})
    assert meta["step"] == 7 and q.config == p.config
    for (k, a), (_, b) in zip(p.state_dict().items(), q.state_dict().items()):
        assert torch.equal(a, b), k
    obs = torch.randn(2, 2, 5)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(p.sample(obs, generator=g1).latents, q.sample(obs, generator=g2).latents)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_expect_rejects_other_dims(tmp_path):
    save_planner(tmp_path / "m.safetensors", make_planner())
    with pytest.raises(CheckpointError, match="obs_dim=5, but 39 is needed"):
        load_planner(tmp_path / "m.safetensors", expect={"obs_dim": 39})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_give_one_line_errors(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    save_planner(path, make_planner())
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"\x80\x04not a checkpoint" * 50,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        load_planner(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_foreign_and_tampered_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a sodp_fast checkpoint"):
        load_planner(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_planner(tmp_path / "missing.safetensors")
    # same header, weights of another shape / a missing tensor
    path = tmp_path / "m.safetensors"
    p = make_planner()
    save_planner(path, p)
    from sodp_fast.checkpoint import load_tensors, save_tensors

    tensors, meta = load_tensors(path)
    key = next(k for k in tensors if k.endswith("final_conv.weight"))
    bad = dict(tensors, **{key: torch.zeros(1, 2, 3)})
    save_tensors(path, bad, meta)
    with pytest.raises(CheckpointError, match="final_conv.weight.*shape"):
        load_planner(path)
    del bad[key]
    save_tensors(path, bad, meta)
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_planner(path)
    meta_bad = dict(meta, planner_config=dict(meta["planner_config"], horizon=12, n_action_steps=20))
    save_tensors(path, tensors, meta_bad)
    with pytest.raises(CheckpointError, match="invalid planner config"):
        load_planner(path)


def test_nan_weights_rejected(tmp_path):
    p = make_planner()
    with torch.no_grad():
        next(p.model.parameters()).fill_(float("nan"))
    save_planner(tmp_path / "m.safetensors", p)
    with pytest.raises(CheckpointError, match="NaN"):
        load_planner(tmp_path / "m.safetensors")


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"ok": 1}))

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("{half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["state.json"]
