"""``sodp repro --preset cpu-small``: data → pre-train → eval → fine-tune → eval → tables, plots; resumable.

Every field of a preset (``sodp_fast/repro.py``) is a flag, so a preset is a starting point, not a cage:
``sodp repro --preset quickstart --tasks push --eval-episodes 20`` (tuples take comma lists, optional values
'none'). ``--dry-run`` prints the stage plan with the budget arithmetic and which stages are done.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex

from sodp_fast.repro import PRESETS, Preset

_FIXED = ("name", "budget")  # not overridable: they describe the preset itself


def _parse(type_: str, text: str):
    """A flag's text as the preset field's type (the annotations are strings here)."""
    if text.lower() == "none" and "None" in type_:
        return None
    if type_.startswith("tuple[int"):
        return tuple(int(s) for s in text.split(",") if s.strip())
    if type_.startswith("tuple[str"):
        return tuple(s.strip() for s in text.split(",") if s.strip())
    base = type_.split("|")[0].strip()
    return {"int": int, "float": float, "str": str}[base](text)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("repro", help="reproduce the paper's learning results end to end (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-small", choices=list(PRESETS), help="starting point (default cpu-small)")
    p.add_argument("--out", default=None, help="output folder (default runs/repro-PRESET); rerun to resume")
    p.add_argument("--dry-run", action="store_true", help="print the stage plan and budgets; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for f in dataclasses.fields(Preset):
        if f.name not in _FIXED:
            p.add_argument("--" + f.name.replace("_", "-"), dest=f"set_{f.name}", default=None, metavar="VALUE",
                           help=f"override the preset's {f.name} ({f.type})")
    p.set_defaults(func=run)


def preset_from_args(args: argparse.Namespace) -> Preset:
    from sodp_fast.errors import SodpError
    from sodp_fast.repro import get_preset

    overrides = {}
    for f in dataclasses.fields(Preset):
        text = getattr(args, f"set_{f.name}", None)
        if text is None:
            continue
        try:
            overrides[f.name] = _parse(f.type, text)
        except ValueError:
            raise SodpError(f"--{f.name.replace('_', '-')}: cannot read {text!r} as {f.type}") from None
    return get_preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    from sodp_fast import repro

    preset = preset_from_args(args)
    pipe = repro.Pipeline(preset, args.out or f"runs/repro-{args.preset}", progress=not args.no_progress)
    if args.dry_run:
        print(repro.describe(pipe))
        return 0
    repro.run(preset, pipe.out, progress=pipe.progress, command=command_line(args, pipe.out))
    return 0


def command_line(args: argparse.Namespace, out) -> str:
    """The invocation as a ``sodp`` command (however it was called: console script, -m, or tests)."""
    words = ["sodp", "repro", "--preset", args.preset, "--out", str(out)]
    for f in dataclasses.fields(Preset):
        if getattr(args, f"set_{f.name}", None) is not None:
            words += ["--" + f.name.replace("_", "-"), getattr(args, f"set_{f.name}")]
    return shlex.join(words + (["--no-progress"] if args.no_progress else []))
