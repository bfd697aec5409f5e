"""The run layer shared by pre-training, fine-tuning, ``sodp repro``, data generation and evaluation: locked run
folders, pinned options (``check_config``), resume state validated before anything is loaded (a bad entry is a
``CheckpointError`` naming the file), ``Timers`` and ``Progress``.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from sodp_fast.atomic import LOCK_FILE, remove_stale_temps, write_json, write_text
from sodp_fast.errors import CheckpointError, ConfigError, ResumeMismatchError

try:
    import nvtx

    _nvtx_range = nvtx.annotate
except ImportError:  # optional: only Nsight profiling uses it
    def _nvtx_range(_name):
        return contextlib.nullcontext()


class RunFolder:
    """An output folder owned by this process while open (``with RunFolder(out) as folder: …``): an ``flock`` on
    ``.lock`` (the kernel drops it even on SIGKILL), atomic writes, stale temporaries removed on open.
    ``owner=False`` (non-zero DDP ranks) neither locks nor writes."""

    def __init__(self, path, owner: bool = True):
        self.path, self.owner, self._fd = Path(path), owner, None

    def open(self) -> "RunFolder":
        if not self.owner or self._fd is not None:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path}: exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot create the folder ({e.strerror})") from None
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot write in the folder ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another process (pid {holder}); wait for it to finish "
                              "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        remove_stale_temps(self.path)
        return self

    def close(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolder":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def write_json(self, name: str, obj) -> None:
        if self.owner:
            write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        if self.owner:
            write_text(self.path / name, text)

    def append_text(self, name: str, text: str) -> None:
        """Append by rewriting atomically (small provenance files: a torn append would corrupt them)."""
        path = self.path / name
        self.write_text(name, (path.read_text() if path.exists() else "") + text)


def check_config(old: dict, new: dict, resumable, where) -> None:
    """Refuse to resume ``where`` if an option outside ``resumable`` differs from the run's pinned ``old``."""
    diff = [k for k in new if k not in resumable and old.get(k) != new[k]]
    if diff:
        k = diff[0]
        more = f" and {len(diff) - 1} more" if len(diff) > 1 else ""
        raise ResumeMismatchError(f"{where}: this run has another config ({k}={old.get(k)!r} there, "
                                  f"{new[k]!r} now{more}); rerun with the same options to resume, or choose "
                                  "another --out")


def record(meta: dict, key: str, where):
    """``meta[key]``, or a CheckpointError naming the missing record."""
    if not isinstance(meta, dict) or key not in meta:
        raise CheckpointError(f"{where}: checkpoint has no '{key}' record")
    return meta[key]


def tensor(tensors: dict, key: str, where, shape: tuple | None = None, dtype: torch.dtype | None = None):
    """``tensors[key]`` after checking it exists and has ``shape`` (None entries match any size) and ``dtype``."""
    if key not in tensors:
        raise CheckpointError(f"{where}: checkpoint has no tensor {key!r}")
    t = tensors[key]
    if shape is not None and (t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape))):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise CheckpointError(f"{where}: tensor {key!r} has shape {list(t.shape)}, expected {want}")
    if dtype is not None and t.dtype != dtype:
        raise CheckpointError(f"{where}: tensor {key!r} has dtype {t.dtype}, expected {dtype}")
    return t


# -- optimiser and RNG state --------------------------------------------------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors ``optim.state.<i>.<key>``, JSON meta with param_groups and non-tensor values)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, where) -> None:
    """Inverse of :func:`optimizer_state`, validated first: the parameter groups, every entry's parameter
    index, and every non-scalar tensor's shape must match ``optimizer``'s parameters."""
    groups, scalars = record(meta, "param_groups", where), record(meta, "scalars", where)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    own = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [len(g["params"]) for g in own]:
        raise CheckpointError(f"{where}: optimiser state is for a different set of parameters")
    state: dict[int, dict] = {}
    head = "optim.state."
    entries = [(name[len(head):], value) for name, value in tensors.items() if name.startswith(head)]
    for name, value in entries + list(scalars.items()):
        idx, _, key = name.partition(".")
        if not idx.isdigit() or int(idx) >= len(params) or not key:
            raise CheckpointError(f"{where}: optimiser state entry {name!r} names no parameter of this model")
        p = params[int(idx)]
        if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
            raise CheckpointError(f"{where}: optimiser state {key!r} of parameter {idx} has shape "
                                  f"{list(value.shape)}, the parameter {list(p.shape)}")
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{where}: optimiser state {key!r} of parameter {idx} contains NaN or inf")
        state.setdefault(int(idx), {})[key] = value
    if len({frozenset(e) for e in state.values()}) > 1:
        raise CheckpointError(f"{where}: optimiser state entries differ between parameters (incomplete state)")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{where}: optimiser state does not fit this model ({e})") from None


def load_generator_state(generator: torch.Generator, tensors: dict, key: str, where) -> None:
    want = generator.get_state().numel()
    state = tensor(tensors, key, where, shape=(want,), dtype=torch.uint8)
    try:
        generator.set_state(state.to("cpu").contiguous())
    except RuntimeError as e:
        raise CheckpointError(f"{where}: RNG state {key!r} does not fit this device's generator ({e})") from None


# -- a training run -------------------------------------------------------------------------------------------
class TrainingRun(RunFolder):
    """The locked folder ``config.out`` with one state checkpoint (``state_file``) that ``--resume`` continues
    from. ``open()`` refuses a fresh start over an existing checkpoint and a resume without one."""

    def __init__(self, config, kind: str, state_file: str, resume: bool, owner: bool = True):
        super().__init__(config.out, owner)
        self.config, self.kind, self.state_path, self.resume = config, kind, self.path / state_file, resume

    def open(self) -> "TrainingRun":
        super().open()
        if self.state_path.exists() != self.resume:
            self.close()
            if self.resume:
                raise CheckpointError(f"{self.state_path}: nothing to resume (no checkpoint was written yet)")
            raise ConfigError(f"{self.path} already holds a run; pass --resume to continue it or choose "
                              "another --out")
        return self

    def resume_state(self) -> tuple[dict, dict] | None:
        """(tensors, meta) of the checkpoint to resume from, its kind and pinned options checked; None when fresh."""
        from sodp_fast.checkpoint import load_tensors

        if not self.resume:
            return None
        tensors, meta = load_tensors(self.state_path)
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"{self.state_path}: not a {self.kind.split('.')[-1].replace('_', ' ')} "
                                  f"checkpoint (no '{self.kind}' record)")
        check_config(record(meta, "config", self.state_path), self.config.to_dict(), self.config.RESUMABLE,
                     self.state_path)
        return tensors, meta

    def save_state(self, planner, tensors: dict, **meta) -> None:
        from sodp_fast.checkpoint import save_planner

        save_planner(self.state_path, planner, {"kind": self.kind, "config": self.config.to_dict(), **meta}, tensors)

    def logger(self, resume_step: int | None):
        from sodp_fast.logging import RunLogger

        return contextlib.closing(RunLogger(self.path, resume_step=resume_step, enabled=self.owner))


# -- timers and progress ----------------------------------------------------------------------------------------
class Timers:
    """``with timers("sample"): …`` adds the elapsed seconds to ``timers.seconds["sample"]`` (and opens an NVTX
    range of that name when the ``nvtx`` package is installed, so Nsight timelines show the phases)."""

    def __init__(self, sync_cuda: bool = False):
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync_cuda = sync_cuda

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        with _nvtx_range(phase):
            yield
            if self.sync_cuda:
                torch.cuda.synchronize()
        self.seconds[phase] += time.perf_counter() - t0

    def shares(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1.0
        return {f"time_{k}": v / total for k, v in self.seconds.items()}


class Progress:
    """A tqdm bar when ``stream`` (stderr) is a terminal; otherwise one plain line per ``interval`` seconds and
    one at the end: ``desc: 12,000/50,000 env steps (24 %), 410 env steps/s, success 0.30``."""

    INTERVAL = 15.0  # seconds between plain lines (the default ``interval``)

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True,
                 interval: float | None = None, stream=None):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.interval = self.INTERVAL if interval is None else interval
        self.stream = stream or sys.stderr
        self.n = self._n0 = self._printed = initial
        self.info: dict[str, str] = {}
        self._t0 = self._last = time.perf_counter()
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, file=self.stream)

    def update(self, n: int = 1, **info) -> None:
        self.n += n
        self.info.update({k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in info.items()})
        if self.bar is not None:
            self.bar.update(n)
            if info:
                self.bar.set_postfix(self.info, refresh=False)
        elif self.enabled and time.perf_counter() - self._last >= self.interval:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.info.items())
        print(f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}s{pct}, {rate:,.1f} {self.unit}s/s{extra}",
              file=self.stream, flush=True)
        self._last, self._printed = now, self.n

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n != self._printed:
            self._line()
