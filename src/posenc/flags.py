"""What every posenc command shares at its edge with the user: :class:`Parser` (an error is one line
naming the flag, with the closest names of a mistyped choice; help shows each flag's real default
and never ``None`` or ``False``), :func:`name_flags` (a config's field names in an error message
become the flags that set them) and :func:`positive_int` (an argparse type).

The library's errors name config fields (``TrainConfig.max_iters must be >= 1, got 0``), which is
what a Python caller typed; a command line user typed ``--max-iters 0``, so each command passes the
field -> flag mapping of its own flags to :func:`name_flags`.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping
from typing import Any, NoReturn

__all__ = ["Parser", "name_flags", "positive_int"]


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help when it has a real default (not None, not False)
    that its help does not already state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction))
            or "default" in help_text.lower()
        ):
            return help_text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{help_text} (default: {shown.replace('%', '%%')})".lstrip()  # argparse %-formats help


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block first) and whose unknown
    choices come with the closest known names and the full list."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        names = [str(c) for c in choices]
        close = difflib.get_close_matches(str(value), names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise argparse.ArgumentError(action, f"unknown {value!r}{hint} (known: {', '.join(names)})")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_FIELD = re.compile(r"\b(\w+Config)\.(\w+)(=('[^']*'|[^\s,:;)]+))?")


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each ``Owner.field`` (or ``Owner.field=value``) that ``flags`` maps
    (``{"TrainConfig.max_iters": "--max-iters"}``) written as the flag (``--max-iters value``); a
    command line user passes ints that argparse has already checked, so "must be an int >= 1"
    reads "must be >= 1" for a flag."""

    def flag(m: re.Match) -> str:
        name = flags.get(f"{m[1]}.{m[2]}")
        if name is None:
            return m[0]
        return name if m[4] is None else f"{name} {m[4].strip(chr(39))}"

    out = _FIELD.sub(flag, message)
    if out != message:
        out = re.sub(r"(--[\w-]+ must be) an int ", r"\1 ", out)
    return out


def field_flags(owner: str, dest_to_field: Mapping[str, str]) -> dict[str, str]:
    """``{"Owner.field": "--flag"}`` from ``{dest: field}`` (argparse dests use ``_`` for ``-``)."""
    return {f"{owner}.{field}": "--" + dest.replace("_", "-") for dest, field in dest_to_field.items()}
