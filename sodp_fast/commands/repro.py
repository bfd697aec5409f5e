"""``sodp repro --preset cpu-mt10``: data → pre-train → eval → fine-tune → eval → tables, plots; resumable.

Every field of a preset (``sodp_fast/repro.py``) is a flag, so a preset is a starting point, not a cage:
``sodp repro --preset quickstart --tasks push --eval-episodes 20`` (tuples take comma lists, optional values
'none'). ``--dry-run`` prints the stage plan with the budget arithmetic and which stages are done.
"""
from __future__ import annotations

import argparse
import shlex

from sodp_fast.options import add_flags, flag_fields, to_argv
from sodp_fast.repro import PRESETS, Preset, get_preset


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("repro", help="reproduce the paper's learning results end to end (resumable)",
                              description=__doc__.replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-mt10", choices=list(PRESETS), help="starting point (default cpu-mt10)")
    p.add_argument("--out", default=None, help="output folder (default runs/repro-PRESET); rerun to resume")
    p.add_argument("--dry-run", action="store_true", help="print the stage plan and budgets; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    g = p.add_argument_group("preset overrides (default: the preset's value)")
    add_flags(g, Preset, overrides=True)
    p.set_defaults(func=run)


def preset_from_args(args: argparse.Namespace) -> Preset:
    overrides = {f.name: getattr(args, f.name) for f in flag_fields(Preset) if hasattr(args, f.name)}
    return get_preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    from sodp_fast import repro

    preset = preset_from_args(args)
    pipe = repro.Pipeline(preset, args.out or f"runs/repro-{args.preset}", progress=not args.no_progress)
    if args.dry_run:
        print(repro.describe(pipe))
        return 0
    repro.run(preset, pipe.out, progress=pipe.progress, command=command_line(args, pipe.out, preset))
    return 0


def command_line(args: argparse.Namespace, out, preset: Preset) -> str:
    """The invocation as a ``sodp`` command (however it was called: console script, -m, or tests)."""
    overrides = {k: v for k, v in preset.to_dict().items() if hasattr(args, k)}
    words = ["sodp", "repro", "--preset", args.preset, "--out", str(out), *to_argv(Preset, overrides, explicit=True)]
    return shlex.join(words + (["--no-progress"] if args.no_progress else []))
