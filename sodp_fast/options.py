"""Config dataclasses as command lines: one flag per field, typed from its annotation, help from the field.

A config declares each field with ``opt`` (``steps: int = opt(500_000, "optimiser steps")``), in the spirit of
CleanRL's ``Args``; ``add_flags`` turns the class into ``--steps`` etc. with that help and the default shown,
``from_args`` builds the config back, and ``to_argv`` writes a config's values as flags again (for child
processes and for the ``command.txt`` of a run). Values are validated by the config itself, so a bad flag is a
one-line error before any work starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field

_NOT_A_FLAG = "not_a_flag"


def opt(default=MISSING, help: str = "", *, factory=MISSING, choices=None, flag: bool = True):
    """A dataclass field with its command-line help (``flag=False``: not on the command line)."""
    meta = {"help": help, "choices": choices, _NOT_A_FLAG: not flag}
    return field(default=default, default_factory=factory, metadata=meta)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        f = float(text)  # 1e6 is a fine way to write a million steps
        if not f.is_integer():
            raise
        return int(f)


def parser_for(annotation):
    """text → value for a field annotation: int, float, str, X | None ('none'), tuple[X, ...] / list[X] (comma list)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = parser_for(next(a for a in args if a is not type(None)))

        def optional(text: str):
            return None if text.strip().lower() == "none" else inner(text)

        optional.__name__ = f"{inner.__name__} or none"
        return optional
    if origin in (tuple, list):
        item = parser_for(args[0])

        def comma_list(text: str):
            return origin(item(s.strip()) for s in text.split(",") if s.strip())

        comma_list.__name__ = f"comma list of {item.__name__}"
        return comma_list
    if annotation is int:
        _int.__name__ = "int"
        return _int
    if annotation in (float, str):
        return annotation
    raise TypeError(f"no command-line parser for {annotation!r}")


def flag_fields(cls, skip=()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in skip and not f.metadata.get(_NOT_A_FLAG, True)]


def _default(f: dataclasses.Field):
    return f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING
                                                       else MISSING)


def _text(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def add_flags(parser: argparse.ArgumentParser, cls, skip=(), overrides: bool = False) -> None:
    """``--field-name`` for every ``opt`` field of ``cls``. ``overrides=True``: flags change a given instance
    (a preset), so an absent flag leaves the attribute out of the namespace and the help says so."""
    hints = typing.get_type_hints(cls)
    for f in flag_fields(cls, skip):
        name, typ, help_ = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata["help"]
        default = _default(f)
        if typ is bool and not overrides:
            if default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=f"turn off {help_}")
            else:
                parser.add_argument(name, dest=f.name, action="store_true", help=help_)
            continue
        kw = dict(dest=f.name, type=parser_for(typ), choices=f.metadata["choices"], help=help_)
        if overrides:
            kw.update(default=argparse.SUPPRESS, metavar="VALUE")
        elif default is MISSING:
            kw.update(required=True)
        else:
            kw.update(default=default, help=f"{help_} (default: {_text(default)})")
        parser.add_argument(name, **kw)


def from_args(args: argparse.Namespace, cls, **fixed):
    """An instance of ``cls`` from the flags ``add_flags`` made (absent ones keep the field default)."""
    values = {f.name: getattr(args, f.name) for f in flag_fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fixed})


def to_argv(cls, values: dict, skip=(), explicit: bool = False) -> list[str]:
    """Flags that reproduce ``values`` (fields equal to their default are left out unless ``explicit``)."""
    hints, argv = typing.get_type_hints(cls), []
    for f in flag_fields(cls, skip):
        if f.name not in values or (values[f.name] == _default(f) and not explicit):
            continue
        v, name = values[f.name], f.name.replace("_", "-")
        if hints[f.name] is bool:
            argv.append(f"--{name}" if v else f"--no-{name}")
        else:
            argv += [f"--{name}", _text(v)]
    return argv
