"""Errors users see: one line that names the problem, never a traceback from deep inside."""
from __future__ import annotations

import os


class SodpError(Exception):
    """Base class for errors the CLI reports as ``error: <message>`` with exit status 2."""


class ConfigError(SodpError):
    """Unusable options, or an output folder that holds another run."""


class CheckpointError(SodpError):
    """A checkpoint file that is missing, corrupt, foreign, or from another configuration."""


class ResumeMismatchError(ConfigError, CheckpointError):
    """Resuming a run with options that would change what its finished part computed."""


class DivergedError(SodpError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept and the step named."""


def check_fits(nbytes: float, what: str) -> None:
    """Refuse, before allocating, what cannot fit in this machine's physical memory."""
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if nbytes > have:
        raise ConfigError(f"{what} would need {nbytes / 2**30:,.1f} GiB, more than this machine's "
                          f"{have / 2**30:,.1f} GiB of memory")


def at_least(value, low, name: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low:
        raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value!r}")
