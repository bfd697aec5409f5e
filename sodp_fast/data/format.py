"""The on-disk format of a multi-task transition dataset.

Layout (format version 1)::

    <root>/manifest.json            format, version, dims, per-task records, generator settings, obs stats
    <root>/<task>/observations.npy  [T, obs_dim] float32   observation before each action
    <root>/<task>/actions.npy       [T, A] float32         action executed (already clipped to [-1, 1])
    <root>/<task>/rewards.npy       [T] float32            reward of that step
    <root>/<task>/episode_ends.npy  [E] int64              exclusive end index of each episode (last == T)
    <root>/<task>/success.npy       [E] bool               info["success"] was ever true in the episode
    <root>/<task>/task.json         the task's record; written last, so its presence marks a complete task

Plain ``.npy`` files, memory-mapped (tens of millions of transitions) and never unpickled, each written atomically.
Observation statistics are computed at write time and stored per task; the dataset's pool them exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sodp_fast.atomic import atomic_write, write_json
from sodp_fast.envs.tasks import resolve_tasks
from sodp_fast.errors import SodpError

FORMAT_NAME = "sodp-transitions"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASK_RECORD = "task.json"
ARRAYS: dict[str, tuple[type, int]] = {  # name -> (dtype, ndim)
    "observations": (np.float32, 2), "actions": (np.float32, 2), "rewards": (np.float32, 1),
    "episode_ends": (np.int64, 1), "success": (np.bool_, 1)}


class DataFormatError(SodpError):
    """A dataset file or array that is missing, truncated, inconsistent or not finite."""


@dataclass
class ObsStats:
    """Per-dimension observation statistics, for normalising planner inputs."""

    count: int
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, obs: np.ndarray) -> "ObsStats":
        x = np.asarray(obs, np.float64)
        return cls(len(x), x.mean(0), x.std(0), x.min(0), x.max(0))

    @classmethod
    def pool(cls, parts: list["ObsStats"]) -> "ObsStats":
        """Exact statistics of the union of the parts' observations."""
        n = sum(p.count for p in parts)
        mean = sum(p.count * p.mean for p in parts) / n
        var = sum(p.count * (p.std ** 2 + (p.mean - mean) ** 2) for p in parts) / n
        return cls(n, mean, np.sqrt(var), np.min([p.min for p in parts], 0), np.max([p.max for p in parts], 0))

    def to_json(self) -> dict:
        return {"count": self.count, **{k: getattr(self, k).tolist() for k in ("mean", "std", "min", "max")}}

    @classmethod
    def from_json(cls, d: dict) -> "ObsStats":
        return cls(int(d["count"]), *(np.asarray(d[k], np.float64) for k in ("mean", "std", "min", "max")))


@dataclass
class TaskData:
    """One task's transitions (numpy arrays or read-only memory maps)."""

    task: str
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    episode_ends: np.ndarray
    success: np.ndarray

    @property
    def num_transitions(self) -> int:
        return len(self.observations)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ends)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, [E] float64."""
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return np.add.reduceat(np.asarray(self.rewards, np.float64), starts) if len(starts) else np.zeros(0)


@dataclass
class MultiTaskDataset:
    """The tasks of a dataset, with observation statistics pooled over exactly these tasks."""

    root: Path
    tasks: dict[str, TaskData]
    obs_dim: int
    action_dim: int
    obs_stats: ObsStats
    manifest: dict = field(repr=False)


def save_array(path: Path, array: np.ndarray) -> None:
    """Write one ``.npy`` atomically."""
    def write(tmp: str) -> None:
        # np.save gets an object with only ``write`` (to a bare path it would append ".npy"), so it writes via
        # Python, whose errors carry errno (a full disk says so; ``ndarray.tofile`` reports only a short count).
        with open(tmp, "wb") as f:
            np.save(SimpleNamespace(write=f.write), np.ascontiguousarray(array), allow_pickle=False)
    atomic_write(path, write)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; anything else (missing, unreadable, not JSON, not an object) is one line."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read it ({e.strerror})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: not a JSON object (got {type(obj).__name__})")
    return obj


def check_finite(path_or_name, array: np.ndarray, chunk: int = 1 << 20) -> None:
    """Raise if ``array`` holds NaN or inf; reads memory maps in chunks to bound memory."""
    if array.dtype.kind != "f":
        return
    for s in range(0, len(array), chunk):
        bad = ~np.isfinite(array[s:s + chunk])
        if bad.any():
            raise DataFormatError(f"{path_or_name}: NaN or inf at row {s + int(np.argwhere(bad)[0][0])}")


def validate_task(data: TaskData, where: str, obs_dim: int | None = None, action_dim: int | None = None,
                  finite: bool = True) -> None:
    """Check dtypes, shapes, episode boundaries and (optionally) finiteness; raise naming ``where``."""
    for name, (dtype, ndim) in ARRAYS.items():
        a = getattr(data, name)
        if a.ndim != ndim:
            raise DataFormatError(f"{where}/{name}: expected {ndim}-D array, got shape {list(a.shape)}")
        if a.dtype != dtype:
            raise DataFormatError(f"{where}/{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    t = data.num_transitions
    for name in ("actions", "rewards"):
        if len(getattr(data, name)) != t:
            raise DataFormatError(f"{where}/{name}: {len(getattr(data, name))} rows, observations has {t}")
    for name, want in (("observations", obs_dim), ("actions", action_dim)):
        if want is not None and (got := getattr(data, name).shape[1]) != want:
            raise DataFormatError(f"{where}/{name}: dimension {got}, expected {want}")
    ends = np.asarray(data.episode_ends)
    if t == 0 or len(ends) == 0 or ends[-1] != t or ends[0] <= 0 or np.any(np.diff(ends) <= 0):
        raise DataFormatError(f"{where}/episode_ends: must be increasing, positive and end at T={t}")
    if len(data.success) != len(ends):
        raise DataFormatError(f"{where}/success: {len(data.success)} entries for {len(ends)} episodes")
    if finite:
        for name in ("observations", "actions", "rewards"):
            check_finite(f"{where}/{name}", getattr(data, name))


def write_task(root: Path, data: TaskData, settings: dict | None = None) -> dict:
    """Validate and write one task folder; ``task.json`` goes last and marks the task complete."""
    folder = Path(root) / data.task
    validate_task(data, str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TASK_RECORD).unlink(missing_ok=True)  # incomplete until the record is rewritten
    for name in ARRAYS:
        save_array(folder / f"{name}.npy", getattr(data, name))
    record = {
        "task": data.task, "transitions": data.num_transitions, "episodes": data.num_episodes,
        "obs_dim": int(data.observations.shape[1]), "action_dim": int(data.actions.shape[1]),
        "success_rate": float(np.mean(data.success)), "mean_return": float(data.episode_returns().mean()),
        "obs_stats": ObsStats.of(data.observations).to_json(), "settings": settings or {},
    }
    write_json(folder / TASK_RECORD, record)
    return record


def task_record(root: Path, task: str) -> dict | None:
    """The record of a complete task, or None if the task is missing or was interrupted."""
    folder = Path(root) / task
    if not (folder / TASK_RECORD).exists():
        return None
    record = read_json(folder / TASK_RECORD)
    return record if all((folder / f"{name}.npy").exists() for name in ARRAYS) else None


def write_manifest(root: Path, settings: dict | None = None) -> dict:
    """(Re)write ``manifest.json`` from the complete task folders under ``root``."""
    root = Path(root)
    records = {p.name: r for p in sorted(root.iterdir()) if p.is_dir() and (r := task_record(root, p.name)) is not None}
    if not records:
        raise DataFormatError(f"{root}: no complete task folders")
    dims = {(r["obs_dim"], r["action_dim"]) for r in records.values()}
    if len(dims) > 1:
        detail = ", ".join(f"{t}: {r['obs_dim']}/{r['action_dim']}" for t, r in records.items())
        raise DataFormatError(f"{root}: tasks have mixed observation/action dims ({detail})")
    (obs_dim, action_dim), = dims
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "obs_dim": obs_dim, "action_dim": action_dim,
        "tasks": {t: {k: v for k, v in r.items() if k != "settings"} for t, r in records.items()},
        "settings": settings or {},
        "obs_stats": ObsStats.pool([ObsStats.from_json(r["obs_stats"]) for r in records.values()]).to_json(),
    }
    write_json(root / MANIFEST, manifest)
    return manifest


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file is missing") from None
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(f"{path}: unreadable or truncated ({e})") from None


def load_dataset(root, tasks: list[str] | str | None = None, finite: bool = True) -> MultiTaskDataset:
    """Memory-map the dataset at ``root`` (all tasks, or the named ones) and check it against its manifest.

    ``finite=True`` scans float arrays for NaN/inf in 1M-row chunks (a few seconds per 10M transitions).
    """
    root = Path(root)
    if not root.exists():
        raise DataFormatError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DataFormatError(f"{root}: is a file, not a dataset folder")
    if not (root / MANIFEST).exists():
        raise DataFormatError(f"{root / MANIFEST}: file is missing, so {root} is not a dataset (make one with "
                              "`sodp data generate`)")
    manifest = read_json(root / MANIFEST)
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise DataFormatError(f"{root / MANIFEST}: not a {FORMAT_NAME} v{FORMAT_VERSION} manifest")
    try:
        available = manifest["tasks"]
        names = list(available) if tasks is None else resolve_tasks(tasks)
        if missing := [t for t in names if t not in available]:
            raise DataFormatError(f"{root}: tasks not in dataset: {', '.join(missing)}")
        out = {}
        for t in names:  # memory-mapped, then checked on its own and against the manifest
            data = out[t] = TaskData(t, **{name: _load_array(root / t / f"{name}.npy") for name in ARRAYS})
            validate_task(data, str(root / t), finite=finite)
            rec = available[t]
            if data.num_transitions != rec["transitions"] or data.num_episodes != rec["episodes"]:
                raise DataFormatError(f"{root / t}: {data.num_transitions} transitions / {data.num_episodes} "
                                      f"episodes on disk, manifest says {rec['transitions']} / {rec['episodes']}")
            validate_task(data, str(root / t), manifest["obs_dim"], manifest["action_dim"], finite=False)
        stats = ObsStats.pool([ObsStats.from_json(available[t]["obs_stats"]) for t in names])
        return MultiTaskDataset(root, out, manifest["obs_dim"], manifest["action_dim"], stats, manifest)
    except SodpError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a manifest with the right header but broken records
        raise DataFormatError(f"{root / MANIFEST}: malformed manifest ({type(e).__name__}: {e})") from None
