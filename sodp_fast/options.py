"""Config dataclasses as command lines (in the spirit of CleanRL's ``Args``): one ``--flag`` per ``opt`` field,
typed from its annotation; ``Options`` checks each field's ``choices`` and lower bound ``low`` on creation, so a
bad value is a one-line error before any work starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, field

from sodp_fast.errors import ConfigError, at_least

_NOT_A_FLAG = "not_a_flag"


def opt(default=MISSING, help: str = "", *, choices=None, low=None, flag: bool = True):
    """A dataclass field with its command-line help (``flag=False``: not on the command line)."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, _NOT_A_FLAG: not flag})


class Options:
    """Base of the config dataclasses: ``choices`` and ``low`` of every field checked, ``to_dict`` for JSON."""

    RESUMABLE: tuple[str, ...] = ()  # options a resumed run may change: they do not change what is computed

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, choices, low = getattr(self, f.name), f.metadata.get("choices"), f.metadata.get("low")
            if choices is not None and value not in choices:
                raise ConfigError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, not {value!r}")
            if low is not None and value is not None:
                at_least(value, low, f.name)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _named(parse, name: str):
    parse.__name__ = name  # argparse names the type in "invalid <name> value"
    return parse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        f = float(text)  # 1e6 is a fine way to write a million steps
        if not f.is_integer():
            raise
        return int(f)


_named(_int, "int")


def parser_for(annotation):
    """text → value for a field annotation: int, float, str, X | None ('none'), tuple[X, ...] / list[X] (comma list)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = parser_for(next(a for a in args if a is not type(None)))
        return _named(lambda text: None if text.strip().lower() == "none" else inner(text), f"{inner.__name__} or none")
    if origin in (tuple, list):
        item = parser_for(args[0])
        return _named(lambda text: origin(item(s.strip()) for s in text.split(",") if s.strip()),
                      f"comma list of {item.__name__}")
    if annotation in (int, float, str):
        return _int if annotation is int else annotation
    raise TypeError(f"no command-line parser for {annotation!r}")


def flag_fields(cls, skip=()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in skip and not f.metadata.get(_NOT_A_FLAG, True)]


def _text(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def add_flags(parser: argparse.ArgumentParser, cls, overrides: bool = False) -> None:
    """``--field-name`` for every ``opt`` field of ``cls``. ``overrides=True``: flags change a given instance
    (a preset), so an absent flag leaves the attribute out of the namespace and the help says so."""
    hints = typing.get_type_hints(cls)
    for f in flag_fields(cls):
        name, typ, help_ = "--" + f.name.replace("_", "-"), hints[f.name], f.metadata["help"]
        if typ is bool and not overrides:
            if f.default:
                parser.add_argument("--no-" + name[2:], dest=f.name, action="store_false", help=f"turn off {help_}")
            else:
                parser.add_argument(name, dest=f.name, action="store_true", help=help_)
            continue
        kw = dict(dest=f.name, type=parser_for(typ), choices=f.metadata["choices"], help=help_)
        if overrides:
            kw.update(default=argparse.SUPPRESS, metavar="VALUE")
        elif f.default is MISSING:
            kw.update(required=True)
        else:
            kw.update(default=f.default, help=f"{help_} (default: {_text(f.default)})")
        parser.add_argument(name, **kw)


def from_args(args: argparse.Namespace, cls, **fixed):
    """An instance of ``cls`` from the flags ``add_flags`` made (absent ones keep the field default)."""
    values = {f.name: getattr(args, f.name) for f in flag_fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **fixed})


def to_argv(cls, values: dict, skip=(), explicit: bool = False) -> list[str]:
    """Flags that reproduce ``values`` (fields equal to their default are left out unless ``explicit``)."""
    hints, argv = typing.get_type_hints(cls), []
    for f in flag_fields(cls, skip):
        if f.name not in values or (values[f.name] == f.default and not explicit):
            continue
        v, name = values[f.name], f.name.replace("_", "-")
        if hints[f.name] is bool:
            argv.append(f"--{name}" if v else f"--no-{name}")
        else:
            argv += [f"--{name}", _text(v)]
    return argv
