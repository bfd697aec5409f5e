"""Import the public MTDiff / HarmoDT Meta-World data into our format.

That data (what the paper pre-trains on) is one ``.npz`` per episode with keys ``observations`` [T, 39],
``actions`` [T, 4], ``rewards`` [T] and ``terminals`` (or ``dones``), as ``<root>/<task>/<i>.npz`` or
``<root>/<task>/<sub>/dataset/*.npz``, with ``-v2`` task names.  It has no success flags: a ``success`` or
``successes`` array is used if present, else episodes count as unsuccessful and settings say ``success_known: false``.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from sodp_fast.data.format import DataFormatError, TaskData, check_finite, task_record, write_manifest, write_task
from sodp_fast.envs.metaworld import ACTION_DIM, OBS_DIM
from sodp_fast.envs.tasks import canonical_task, resolve_tasks


def find_episode_files(root) -> dict[str, list[Path]]:
    """Map each -v3 task name to its episode files, in natural order, for both known layouts."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: not a directory")
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted([*folder.glob("*.npz"), *folder.glob("*/dataset/*.npz")],  # natural order: 2.npz before 10.npz
                       key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(p))])
        if files:
            task = canonical_task(folder.name)
            if task in found:
                raise DataFormatError(f"{folder}: a second folder for task {task}")
            found[task] = files
    if not found:
        raise DataFormatError(f"{root}: no <task>/*.npz or <task>/*/dataset/*.npz episode files")
    return found


def _check_headers(path: Path) -> None:
    """Every array's header against the bytes its member really holds, before anything is allocated: a header
    that declares 1e11 rows must not make ``np.load`` ask for terabytes. Non-numeric arrays are refused."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise DataFormatError(f"{path}: {info.filename} uses .npy format {version}, not 1.0 or 2.0")
                shape, _, dtype = read(f)
                data_bytes = info.file_size - f.tell()
            name = info.filename[:-4]
            if dtype.kind not in "biuf":
                raise DataFormatError(f"{path}: unreadable array {name!r} (dtype {dtype}, not a number type)")
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > data_bytes:
                raise DataFormatError(f"{path}: array {name!r} declares shape {list(shape)} ({declared:,} bytes) "
                                      f"but holds {data_bytes:,} bytes")


def _read_episode(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool | None]:
    try:
        _check_headers(path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataFormatError(f"{path}: unreadable or truncated .npz ({e})") from None
    if missing := [k for k in ("observations", "actions", "rewards") if k not in arrays]:
        raise DataFormatError(f"{path}: missing key(s) {', '.join(missing)} (has {', '.join(sorted(arrays))})")
    obs, act, rew = arrays["observations"], arrays["actions"], np.reshape(arrays["rewards"], -1)
    for name, a, dim in (("observations", obs, OBS_DIM), ("actions", act, ACTION_DIM)):
        if a.ndim != 2 or a.shape[1] != dim:
            raise DataFormatError(f"{path}: {name} have shape {list(a.shape)}, expected [T, {dim}]")
    if len(obs) == len(act) + 1:  # some copies keep the final observation
        obs = obs[:-1]
    if not (len(obs) == len(act) == len(rew)) or len(act) == 0:
        raise DataFormatError(f"{path}: {len(obs)} observations, {len(act)} actions, {len(rew)} rewards")
    for name, a in (("observations", obs), ("actions", act), ("rewards", rew)):
        check_finite(f"{path}:{name}", np.asarray(a, np.float64))
    flag = arrays.get("success", arrays.get("successes"))
    return obs, act, rew, None if flag is None else bool(np.any(flag))


def read_mtdiff_task(task: str, files: list[Path]) -> tuple[TaskData, bool]:
    """Concatenate one task's episode files; returns the data and whether success flags were present."""
    episodes = [_read_episode(f) for f in files]
    ends = np.cumsum([len(e[1]) for e in episodes]).astype(np.int64)
    success = np.array([bool(e[3]) for e in episodes])
    data = TaskData(task, *(np.concatenate([e[k] for e in episodes]).astype(np.float32) for k in range(3)), ends,
                    success)
    return data, all(e[3] is not None for e in episodes)


def import_mtdiff(src, out, tasks: list[str] | None = None, progress: bool = True) -> dict:
    """Convert an MTDiff/HarmoDT tree at ``src`` into a dataset at ``out``; returns the manifest."""
    from sodp_fast.train.run import Progress, RunFolder

    found = find_episode_files(src)
    wanted = list(found) if tasks is None else resolve_tasks(tasks)
    if missing := [t for t in wanted if t not in found]:
        raise DataFormatError(f"{src}: no episode files for {', '.join(missing)}")
    found = {t: found[t] for t in wanted}
    with RunFolder(out) as folder:
        if existing := [t for t in found if task_record(folder.path, t) is not None]:
            raise DataFormatError(f"{folder.path / existing[0]}: the dataset already holds this task; import "
                                  "into another --out (importing never replaces data)")
        bar = Progress(len(found), "import", "task", enabled=progress, interval=0)
        for task, files in found.items():
            data, success_known = read_mtdiff_task(task, files)
            write_task(folder.path, data, {"source": "mtdiff", "src": str(Path(src) / task),
                                           "success_known": success_known})
            bar.update(1)
        bar.close()
        return write_manifest(folder.path, {"source": "mtdiff", "src": str(src), "tasks": list(found)})
