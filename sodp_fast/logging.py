"""Run metrics: one JSON object per line in ``<run>/metrics.jsonl``, TensorBoard scalars when ``tensorboard`` is
installed, and a PNG of the curves (matplotlib, Agg backend: no display needed).

JSONL because it is appended line by line and survives a kill mid-run (a torn last line is skipped on read).  On
resume, records past the resumed step are dropped so the file describes one consistent run.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

from sodp_fast.atomic import atomic_write, write_text

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics file (or run folder), skipping a torn or corrupt line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    def parse(line: str):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(line)
    return [r for r in map(parse, path.read_text().splitlines()) if isinstance(r, dict) and "step" in r]


class RunLogger:
    """``RunLogger(run_dir).log(step, loss=…, lr=…)``; ``close()`` also writes the curves PNG.  ``resume_step``:
    keep only records up to it (the checkpoint resumed from); ``enabled=False``: all no-ops (non-zero ranks)."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True,
                 enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self._file = self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS_FILE
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:  # rewritten atomically: a kill here keeps the old file, never half of it
            kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
            write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(path, "a")
        if tensorboard:
            with contextlib.suppress(ImportError):  # tensorboard is optional
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) or hasattr(v, "item") else v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), "time": round(time.time(), 3), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float):
                    self._tb.add_scalar(k, v, step)

    def plot(self) -> Path | None:
        return plot_curves(self.run_dir / METRICS_FILE, self.run_dir / CURVES_FILE) if self.enabled else None

    def close(self) -> None:
        if not self.enabled or self._file is None:
            return
        self._file.close()
        self._file = None
        if self._tb is not None:
            self._tb.close()
        self.plot()


def plot_curves(records, out: str | Path, keys: list[str] | None = None, title: str | None = None,
                xlabel: str = "step") -> Path | None:
    """One panel per numeric metric against step (losses on a log scale); None if there is nothing to plot.
    ``records``: a metrics file or run folder, a list of records, or [(label, records), …] for one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(records, (str, Path)):
        records = read_metrics(records)
    series = records if records and isinstance(records[0], tuple) else [(None, records)]
    every = [r for _, recs in series for r in recs]
    has = lambda r, k: isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)  # noqa: E731
    keys = keys or sorted({k for r in every for k in r if k not in ("step", "time")})
    keys = [k for k in keys if any(has(r, k) for r in every)]
    if not keys:
        return None
    cols = min(3, len(keys))
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(4.8 * cols, 3.4 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, recs in series:
            pts = [(r["step"], r[key]) for r in recs if has(r, key)]
            if pts:
                ax.plot(*zip(*pts), marker="o" if label else None, markersize=3, label=label)
        if "loss" in key and all(r[key] > 0 for r in every if has(r, key)):
            ax.set_yscale("log")
        ax.set(title=key, xlabel=xlabel)
        ax.grid(alpha=0.3)
        if series[0][0] is not None:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return save_figure(fig, out, title)


def save_figure(fig, out: str | Path, title: str | None = None) -> Path:
    """Title, lay out, write a PNG atomically (creating its folder) and free the figure."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return out
