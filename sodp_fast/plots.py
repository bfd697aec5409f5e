"""Learning curves of several runs on one figure (ablations like the paper's Figures 4, 5 and 7).

Each run folder's ``metrics.jsonl`` (``sodp_fast.logging``) gives one line per panel; the x axis is the
record's ``step``, which fine-tuning logs in env steps.
"""
from __future__ import annotations

from pathlib import Path

from sodp_fast.errors import SodpError
from sodp_fast.logging import read_metrics, save_figure

CURVE_KEYS = ("eval_success_rate", "eval_return_mean")


def plot_runs(runs: list[str | Path], out: str | Path, keys: tuple[str, ...] = CURVE_KEYS,
              labels: list[str] | None = None, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise SodpError(f"{len(labels)} labels for {len(runs)} runs")
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    plotted = 0
    for run, label in zip(runs, labels):
        recs = read_metrics(run)
        if not recs:
            raise SodpError(f"{run}: no metrics.jsonl records")
        for ax, key in zip(axes[0], keys):
            pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
                plotted += 1
    if not plotted:
        raise SodpError(f"none of the runs has any of {', '.join(keys)}")
    for ax, key in zip(axes[0], keys):
        ax.set_title(key)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out, title)
