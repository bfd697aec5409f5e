"""``sodp``: the command line. Each command lives in ``sodp_fast/commands/<name>.py`` and exposes
``add_parser(subparsers)``; this file wires them together and turns every expected failure into one
``error: …`` line and exit status 2: ``SodpError``, bad flags, OS errors (naming the path) and allocations
that do not fit."""
from __future__ import annotations

import argparse
import importlib
import sys

from sodp_fast.errors import SodpError

COMMANDS = ["info", "data", "pretrain", "eval", "bench", "finetune", "plot", "repro"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error:`` (subcommand parsers inherit it)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sodp", description="SODP: pre-train a diffusion planner on multi-task sub-optimal data, "
                    "fine-tune it per task with RL, evaluate it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sodp_fast.commands.{name}").add_parser(sub)
    return parser


def error_line(e: BaseException) -> str | None:
    """The one line an expected failure is reported as; None for a bug (which keeps its traceback)."""
    if isinstance(e, SodpError):
        text = str(e)
    elif isinstance(e, OSError):
        text = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
    elif isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(
            s in str(e) for s in ("can't allocate memory", "out of memory", "Cannot allocate memory"))):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        text = f"out of memory ({first[:200]}); use smaller sizes"
    else:
        return None
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (already reported in one line)
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - reported in one line below, or re-raised
        line = error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
