"""Sampler benchmark: the analytic FLOP count, the target verdicts, and the CLI smoke run on CPU."""
from __future__ import annotations

import json

import pytest
import torch

from sodp_fast import cli
from sodp_fast.bench import check_targets, speedups, unet_flops
from sodp_fast.nn.unet import ConditionalUnet1D, preset


def test_unet_flops_default_matches_the_known_count():
    # Diffusion Policy's U-Net, A = 4, cond 78: 5.31 M + 18.16 M·Tp multiply-adds → ≈ 0.45 GFLOP at Tp = 12
    f12, f16 = unet_flops(preset("default"), 12, 4, 78), unet_flops(preset("default"), 16, 4, 78)
    assert f12 == 446_480_384
    assert (f16 - f12) / 4 / 2 == pytest.approx(18.16e6, rel=1e-3)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_unet_flops_equals_a_count_over_the_real_module(name):
    """Independent count: 2 × multiply-adds of every Conv1d / ConvTranspose1d / Linear actually run."""
    model = ConditionalUnet1D(4, 78, preset(name))
    macs = []

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Linear):
            macs.append(mod.in_features * mod.out_features * inp[0].shape[0])
        elif isinstance(mod, torch.nn.ConvTranspose1d):
            macs.append(mod.in_channels * mod.out_channels * mod.kernel_size[0] * inp[0].shape[-1])
        elif isinstance(mod, torch.nn.Conv1d):
            macs.append(mod.in_channels * mod.out_channels * mod.kernel_size[0] * out.shape[-1])

    for m in model.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 12, 4), torch.tensor([7]), torch.randn(1, 78))
    assert 2 * sum(macs) == unet_flops(preset(name), 12, 4, 78)


def _row(variant, batch, sps, frac=None):
    return {"preset": "default", "variant": variant, "batch": batch, "samples_per_s": sps, "frac_of_peak": frac}


def test_targets_pass_miss_and_not_measured():
    rows = [_row("eager", 32, 100.0), _row("compile-reduce-overhead", 32, 300.0),
            _row("compile-max-autotune", 32, 150.0), _row("ours-cuda", 32, 600.0), _row("ours-triton", 32, 500.0),
            _row("ours-cuda", 4096, 1e5, 0.55)]
    ratios = speedups(rows)
    by = {t["what"].split(": ", 1)[1]: t for t in check_targets(rows, ratios, on_gpu=True)}
    assert by["ours vs eager"]["status"] == "PASS" and by["ours vs eager"]["value"] == pytest.approx(6.0)
    # against the strongest compile mode measured (reduce-overhead here): 600 / 300 = 2 < 3
    assert by["ours vs torch.compile (best mode)"]["status"] == "MISS"
    assert by["ours of the bf16 matmul peak"]["status"] == "PASS"
    assert all(t["status"] == "N/A" for t in check_targets(rows[:1], speedups(rows[:1]), on_gpu=True))
    assert all(t["status"] == "N/A" for t in check_targets(rows, ratios, on_gpu=False))


def test_cli_smoke_on_cpu(tmp_path, capsys):
    rc = cli.main(["bench", "sampler", "--device", "cpu", "--presets", "tiny", "--batch-sizes", "1,3",
                   "--variants", "eager,ours,ours-cuda,diffusers", "--min-time", "0.02", "--min-reps", "2",
                   "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "sampler.json").read_text())
    done = {(r["variant"], r["batch"]) for r in res["rows"] if "samples_per_s" in r}
    assert done >= {("eager", 1), ("eager", 3), ("ours", 1), ("ours", 3)}
    skipped = {r["variant"] for r in res["rows"] if "skipped" in r}
    if not torch.cuda.is_available():
        assert "ours-cuda" in skipped
    assert {r["baseline"] for r in res["speedups"]} >= {"eager"}
    assert all(t["status"] == "N/A" for t in res["targets"])
    assert (tmp_path / "sampler.png").stat().st_size > 0 and (tmp_path / "sampler.log").stat().st_size > 0
    assert "ours / eager" in capsys.readouterr().out
