"""Errors users see: one line that names the problem, never a traceback from deep inside."""


class SodpError(Exception):
    """Base class for errors the CLI reports as ``error: <message>`` with exit status 2."""


class CheckpointError(SodpError):
    """A checkpoint file that is missing, corrupt, foreign, or from another configuration."""


class DivergedError(SodpError):
    """Training produced a NaN/inf loss or gradient; the last good checkpoint is kept and the step named."""
