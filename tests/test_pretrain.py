import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pretrain_data import write_dataset
from sodp_fast import cli
from sodp_fast.checkpoint import load_planner, load_tensors, save_tensors
from sodp_fast.data.format import load_dataset
from sodp_fast.errors import CheckpointError
from sodp_fast.logging import read_metrics
from sodp_fast.policy import DiffusionPlanner
from sodp_fast.train.batches import WindowBatches
from sodp_fast.train.pretrain import DivergedError, PretrainConfig, PretrainError, build_planner, pretrain

TINY = dict(preset="tiny", batch_size=16, lr=1e-3, progress=False, eval_batch=64)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("pretrain-data"))


def cfg(data, out, **kw):
    return PretrainConfig(data=str(data), out=str(out), **{**TINY, **kw})


def test_windows_plan_from_the_current_step():
    obs = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    act = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    b = WindowBatches(obs, act, np.array([8, 20]), n_obs_steps=2, horizon=4, n_action_steps=3)
    o, a = b.gather(torch.arange(len(b)))
    t = o[:, -1, 0].long()  # the current step of every window
    assert t.tolist() == list(range(0, 7)) + list(range(8, 19))  # pad_after = Ta - 1 = 2 past the end
    episode_begin = torch.where(t < 8, 0, 8)
    episode_last = torch.where(t < 8, 7, 19)
    assert torch.equal(o[:, 0, 0].long(), torch.maximum(t - 1, episode_begin))  # history repeats the first step
    want = torch.minimum(t[:, None] + torch.arange(4), episode_last[:, None])  # a_t … a_{t+Tp-1}
    assert torch.equal(a[..., 0].long(), want)


def test_tiny_pretraining_lowers_the_loss_and_writes_the_run(data, tmp_path):
    run = tmp_path / "run"
    trainer = pretrain(cfg(data, run, steps=200, ckpt_every=100, log_every=25))
    recs = read_metrics(run)
    assert recs[0]["step"] == 0 and recs[-1]["step"] == 200
    assert recs[-1]["ema_loss"] < 0.5 * recs[0]["ema_loss"], (recs[0], recs[-1])
    assert all(r["steps_per_s"] > 0 for r in recs[1:])
    for name in ("config.json", "metrics.jsonl", "curves.png", "model.safetensors", "train_state.safetensors"):
        assert (run / name).stat().st_size > 0, name
    planner, meta, _ = load_planner(run / "model.safetensors", expect={"obs_dim": 39, "action_dim": 4})
    assert meta["step"] == 200 and sorted(meta["tasks"]) == ["push-v3", "reach-v3"]
    for a, b in zip(planner.state_dict().values(), trainer.ema.model.state_dict().values()):
        assert torch.equal(a, b)
    stats = load_dataset(data).obs_stats
    assert torch.allclose(planner.normalizer.mean, torch.as_tensor(stats.mean, dtype=torch.float32))


def _cli(data, out, *extra):
    return [sys.executable, "-P", "-m", "sodp_fast.cli", "pretrain", "--data", str(data), "--out", str(out),
            "--preset", "tiny", "--batch-size", "16", "--lr", "1e-3", "--eval-batch", "32", "--steps", "160",
            "--ckpt-every", "40", "--log-every", "20", "--no-progress", *extra]


def _env():  # children run with -P, like the suite: they import the installed package, not ./sodp_fast
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigkill_and_resume_ends_bit_identical(data, tmp_path):
    ref = subprocess.Popen(_cli(data, tmp_path / "ref"), env=_env(), stderr=subprocess.PIPE)
    victim = subprocess.Popen(_cli(data, tmp_path / "killed"), env=_env(), stderr=subprocess.PIPE)
    state = tmp_path / "killed" / "train_state.safetensors"
    deadline = time.time() + 60
    while not state.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere between two checkpoints
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = load_tensors(state)[1]["step"]
    assert 0 < killed_at < 160
    resumed = subprocess.run(_cli(data, tmp_path / "killed", "--resume"), env=_env(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait() == 0, ref.stderr.read()
    for name in ("train_state.safetensors", "model.safetensors"):
        a, meta_a = load_tensors(tmp_path / "ref" / name)
        b, meta_b = load_tensors(tmp_path / "killed" / name)
        assert meta_a["step"] == meta_b["step"] == 160 and a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k, killed_at)
    steps = [r["step"] for r in read_metrics(tmp_path / "killed")]
    assert steps == sorted(set(steps)) and steps[-1] == 160


def _ddp_rank(rank, world, port, config, out):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = pretrain(config)
    save_tensors(Path(out) / f"rank{rank}.safetensors", trainer.planner.state_dict(), {"step": trainer.step})


def test_ddp_on_cpu_keeps_replicas_identical(data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = cfg(data, tmp_path / "run", steps=12, ckpt_every=6, log_every=6, batch_size=32)
    mp.spawn(_ddp_rank, args=(2, port, config, str(tmp_path)), nprocs=2, join=True)
    r0, m0 = load_tensors(tmp_path / "rank0.safetensors")
    r1, m1 = load_tensors(tmp_path / "rank1.safetensors")
    assert m0["step"] == m1["step"] == 12
    init = build_planner(config, 39, 4).state_dict()
    assert r0.keys() == init.keys() and any(not torch.equal(r0[k], init[k]) for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    state, meta = load_tensors(tmp_path / "run" / "train_state.safetensors")
    assert meta["world_size"] == 2 and "rng.data.1" in state
    assert not torch.equal(state["rng.noise.0"], state["rng.noise.1"])  # ranks draw different batches


def _error(capsys, *argv):
    assert cli.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_datasets_are_one_line_errors(tmp_path, capsys):
    base = ["pretrain", "--out", tmp_path / "run", "--preset", "tiny", "--steps", "2", "--no-progress"]
    assert "does not exist" in _error(capsys, *base, "--data", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "not a dataset" in _error(capsys, *base, "--data", tmp_path / "empty")
    small = write_dataset(tmp_path / "dims", obs_dim=10)
    assert "dims 10/4" in _error(capsys, *base, "--data", small)
    assert "not in dataset" in _error(capsys, *base, "--data", write_dataset(tmp_path / "d2"), "--tasks", "sweep")


def test_resume_rejects_another_config(data, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(cfg(data, run, steps=4, ckpt_every=2, log_every=2))
    base = ["pretrain", "--data", data, "--out", run, "--batch-size", "16", "--lr", "1e-3", "--eval-batch", "64",
            "--no-progress", "--steps", "6"]
    assert "already holds a run" in _error(capsys, *base, "--preset", "tiny")
    assert "preset='tiny' there, 'small' now" in _error(capsys, *base, "--preset", "small", "--resume")
    assert "nothing to resume" in _error(capsys, *base[:4], tmp_path / "new", *base[5:], "--resume")
    with pytest.raises(CheckpointError, match="another config"):
        pretrain(cfg(data, run, steps=6, seed=1), resume=True)
    pretrain(cfg(data, run, steps=6, ckpt_every=3, log_every=3), resume=True)  # schedule-only changes are fine


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    loss = DiffusionPlanner.loss

    def poisoned(self, *a, **k):  # the 13th training step's loss (EMA evaluations run in eval mode)
        calls["n"] += self.training
        out = loss(self, *a, **k)
        return out * float("nan") if self.training and calls["n"] == 13 else out

    monkeypatch.setattr(DiffusionPlanner, "loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"at step 13; .*\(step 10\)"):
        pretrain(cfg(data, run, steps=40, ckpt_every=10, log_every=5))
    state, meta = load_tensors(run / "train_state.safetensors")
    assert meta["step"] == 10 and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_config_is_validated(data, tmp_path):
    with pytest.raises(PretrainError, match="preset"):
        cfg(data, tmp_path, preset="huge")
    with pytest.raises(PretrainError, match="steps"):
        cfg(data, tmp_path, steps=0)
