"""Atomic file writes: no checkpoint, dataset file or result is ever left half-written."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

LOCK_FILE = ".lock"  # a run folder's lock (``sodp_fast.train.run``); marks a folder with its own owner
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, fsync, and rename onto ``path``: a crash leaves the old file or the new one.

    The temporary is a hidden sibling (``.<name>.<random>.tmp``), so the rename stays on one file system; one a
    killed process left is removed by :func:`remove_stale_temps` when its folder is next opened as a run.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # what open() would give; mkstemp makes it private
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, tmp):  # name the file meant, not its temporary
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def write_text(path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path, obj, indent: int = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def remove_stale_temps(root) -> list[Path]:
    """Delete the temporaries that killed writes left under ``root``; sub-folders with their own lock are
    other runs' and are left to them. Returns what was removed."""
    removed = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not os.path.exists(os.path.join(folder, d, LOCK_FILE))]
        for path in (Path(folder, name) for name in files if name.startswith(".") and name.endswith(".tmp")):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
