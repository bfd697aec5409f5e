"""Learning curves of several runs on one figure (ablations like the paper's Figures 4, 5 and 7): a run folder's
``metrics.jsonl`` gives one line per panel, a ``sodp repro`` folder one per fine-tuning run; x is env steps."""
from __future__ import annotations

from pathlib import Path

from sodp_fast.errors import SodpError
from sodp_fast.logging import METRICS_FILE, plot_curves, read_metrics

CURVE_KEYS = ("eval_success_rate", "eval_return_mean")


def expand_runs(runs: list[str | Path]) -> list[Path]:
    """Run folders; a ``sodp repro`` folder stands for its fine-tuning runs (``OUT/finetune/<label>``)."""
    out = []
    for run in map(Path, runs):
        if not run.is_dir():
            raise SodpError(f"{run}: no such run folder")
        nested = sorted(p for p in (run / "finetune").glob("*") if (p / METRICS_FILE).exists())
        out += nested if nested and not (run / METRICS_FILE).exists() else [run]
    return out


def plot_runs(runs: list[str | Path], out: str | Path, keys: tuple[str, ...] = CURVE_KEYS,
              labels: list[str] | None = None, title: str | None = None) -> Path:
    runs = expand_runs(runs)
    labels = labels or [f"{r.parent.parent.name}/{r.name}" if r.parent.name == "finetune" else r.name for r in runs]
    if len(labels) != len(runs):
        raise SodpError(f"{len(labels)} labels for {len(runs)} runs ({', '.join(map(str, runs))})")
    series = [(label, read_metrics(run)) for run, label in zip(runs, labels)]
    if empty := [run for run, (_, recs) in zip(runs, series) if not recs]:
        raise SodpError(f"{empty[0]}: no metrics.jsonl records")
    if (path := plot_curves(series, out, list(keys), title, xlabel="env steps")) is None:
        raise SodpError(f"none of the runs has any of {', '.join(keys)}")
    return path
