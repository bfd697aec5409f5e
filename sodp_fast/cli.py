"""``sodp``: the command line. Each command lives in ``sodp_fast/commands/<name>.py`` and exposes
``add_parser(subparsers)``; this file only wires them together and turns ``SodpError`` into one line."""
from __future__ import annotations

import argparse
import importlib
import sys

from sodp_fast.errors import SodpError

COMMANDS = ["info", "data", "pretrain", "eval", "bench", "finetune", "plot", "repro"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sodp", description="SODP: pre-train a diffusion planner on multi-task "
                                     "sub-optimal data, fine-tune it per task with RL, evaluate it.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sodp_fast.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SodpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
