"""GraphedSampler: the eager fallback is planner.sample exactly (CPU); replays equal eager sampling on the same
noise, draw fresh noise, see in-place weight updates, pad and chunk batches, and fall back on capture failure
(GPU only)."""
from __future__ import annotations

import logging

import pytest
import torch

from sodp_fast.graphs import GraphedSampler, default_batch_sizes
from sodp_fast.nn.unet import preset
from sodp_fast.ops import dispatch
from sodp_fast.policy import DiffusionPlanner, PlannerConfig

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_planner(device="cpu") -> DiffusionPlanner:
    torch.manual_seed(0)
    planner = DiffusionPlanner(PlannerConfig(unet=preset("tiny"))).to(device)
    with torch.no_grad():  # non-trivial normaliser and weights, so every input matters
        planner.normalizer.set_stats(torch.randn(39), torch.rand(39) + 0.5)
    return planner


def obs(b, device="cpu"):
    return torch.randn(b, 2, 39, device=device)


def test_default_batch_sizes():
    assert default_batch_sizes(1) == [1]
    assert default_batch_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert default_batch_sizes(32) == [1, 2, 4, 8, 16, 32]
    with pytest.raises(ValueError):
        default_batch_sizes(0)


@pytest.mark.parametrize("deterministic", [False, True])
def test_cpu_fallback_equals_planner_sample_exactly(deterministic):
    planner = make_planner()
    gs = GraphedSampler(planner, 8, deterministic=deterministic)
    assert not gs.use_graphs
    o = obs(5)
    got = gs(o, generator=torch.Generator().manual_seed(3))
    ref = planner.sample(o, deterministic=deterministic, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got.latents, ref.latents)
    torch.testing.assert_close(got.log_probs, ref.log_probs, rtol=0, atol=0, equal_nan=True)  # η=0: no density
    assert got.latents.shape == (5, 11, 12, 4) and got.log_probs.shape == (5, 10)


# ---- GPU ------------------------------------------------------------------------------------------------------
def _backends():
    out = []
    for b in ("torch", "triton", "cuda"):
        try:
            dispatch.resolve("ddim_step", b, torch.device("cuda"))
            out.append(b)
        except (RuntimeError, KeyError):
            pass
    return out or ["torch"]


@gpu
@pytest.mark.parametrize("backend", _backends() if torch.cuda.is_available() else ["torch"])
def test_replay_equals_eager_on_the_same_noise(backend):
    planner = make_planner("cuda")
    gs = GraphedSampler(planner, [8], backend=backend)
    o = obs(8, "cuda")
    got = gs(o)
    x_init, noise = (t.clone() for t in gs.last_noise())
    ref = gs.eager(o, x_init=x_init, noise=noise)
    torch.testing.assert_close(got.latents, ref.latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.log_probs, ref.log_probs, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.latents[:, 0], x_init)


@gpu
def test_replays_draw_fresh_noise_and_follow_the_seed():
    gs = GraphedSampler(make_planner("cuda"), [4])
    o = obs(4, "cuda")
    torch.cuda.manual_seed(1)
    a = gs(o)
    b = gs(o)
    assert not torch.equal(a.latents[:, 0], b.latents[:, 0])
    torch.cuda.manual_seed(1)
    c = gs(o)
    assert torch.equal(a.latents, c.latents)


@gpu
def test_replay_sees_in_place_weight_updates():
    planner = make_planner("cuda")
    gs = GraphedSampler(planner, [4])
    o = obs(4, "cuda")
    gs(o)
    with torch.no_grad():
        planner.model.final_conv.bias.add_(0.5)
    got = gs(o)
    x_init, noise = (t.clone() for t in gs.last_noise())
    ref = gs.eager(o, x_init=x_init, noise=noise)
    torch.testing.assert_close(got.latents, ref.latents, rtol=1e-5, atol=1e-5)


@gpu
def test_padding_and_chunking():
    planner = make_planner("cuda")
    gs = GraphedSampler(planner, [4, 8])
    o = obs(5, "cuda")
    got = gs(o)  # padded to 8
    x_init, noise = (t[:5].clone() for t in gs.last_noise())
    ref = gs.eager(o, x_init=x_init, noise=noise)  # rows are independent: batch 5 eager = first 5 of 8
    torch.testing.assert_close(got.latents, ref.latents, rtol=1e-4, atol=1e-4)
    big = gs(obs(19, "cuda"))  # 8 + 8 + 3 (padded to 4)
    assert big.latents.shape == (19, 11, 12, 4) and big.log_probs.shape == (19, 10)
    with pytest.raises(ValueError, match="default CUDA generator"):
        gs(o, generator=torch.Generator("cuda"))


@gpu
def test_bf16_autocast_replay_equals_eager():
    gs = GraphedSampler(make_planner("cuda"), [8], autocast_dtype=torch.bfloat16)
    o = obs(8, "cuda")
    got = gs(o)
    assert got.latents.dtype == torch.float32 and got.log_probs.dtype == torch.float32
    x_init, noise = (t.clone() for t in gs.last_noise())
    ref = gs.eager(o, x_init=x_init, noise=noise)
    torch.testing.assert_close(got.latents, ref.latents, rtol=1e-4, atol=1e-4)


@gpu
def test_capture_failure_falls_back_to_eager(monkeypatch, caplog):
    def broken_graph(*a, **k):
        raise RuntimeError("capture refused (test)")

    monkeypatch.setattr(torch.cuda, "graph", broken_graph)
    gs = GraphedSampler(make_planner("cuda"), [4])
    o = obs(3, "cuda")
    with caplog.at_level(logging.WARNING, logger="sodp_fast.graphs"):
        torch.cuda.manual_seed(2)
        got = gs(o)
        gs(o)
    assert not gs.use_graphs
    assert sum("capture of the sampler failed" in r.message for r in caplog.records) == 1
    torch.cuda.manual_seed(2)
    ref = gs.planner.sample(o)
    assert got.latents.shape == ref.latents.shape
