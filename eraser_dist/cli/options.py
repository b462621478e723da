"""CLI flags built from the options dataclasses (:mod:`eraser_dist.arguments`).

Each field becomes ``--field-name`` with its type, its ``Literal`` choices and its help text
from the field's metadata, so a flag is described once, where the option is. Flags the user
does not give are left out of the namespace (``argparse.SUPPRESS``): the dataclass's own
default applies, and a command can tell which options were set.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from typing import Any, TypeVar, get_origin

from ..arguments import Options, choices, field_types, flag, scalar_type

T = TypeVar("T", bound=Options)


def _comma_list(kind: type):
    def parse(text: str) -> tuple:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(kind(item) for item in items)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of "
                                             f"{kind.__name__}: {text!r}") from err
    return parse


def _default_text(f) -> str:
    if f.default is MISSING or f.default is None:
        return ""
    value = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    return f" (default: {value})"


def add_options(parser: argparse.ArgumentParser | Any, cls: type[Options],
                title: str | None = None, exclude: tuple[str, ...] = (),
                required: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` (in a group titled ``title``, if given)."""
    target = parser.add_argument_group(title) if title else parser
    hints = field_types(cls)
    for f in fields(cls):
        if f.name in exclude:
            continue
        hint = hints[f.name]
        text = f.metadata.get("help", "") + _default_text(f)
        kwargs: dict[str, Any] = {"dest": f.name, "help": text.replace("%", "%%"),
                                  "default": argparse.SUPPRESS}
        allowed = choices(hint)
        kind = scalar_type(hint)
        if allowed:
            kwargs["choices"] = allowed
        elif get_origin(hint) is tuple:
            kwargs["type"] = _comma_list(kind)
            kwargs["metavar"] = "A,B,…"
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        if f.name in required:
            kwargs["required"] = True
            kwargs.pop("default")
        target.add_argument(flag(f.name), **kwargs)


def given(ns: argparse.Namespace, cls: type[Options]) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set."""
    return {f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)}


def options_from(ns: argparse.Namespace, cls: type[T], **fixed: Any) -> T:
    """``cls`` built from the flags given (its defaults for the rest) and ``fixed``."""
    return cls(**{**given(ns, cls), **fixed})
