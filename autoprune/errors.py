"""The one exception type that means "the user gave bad input" (CLI exit code 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: shown as one line, exit code 2, no traceback."""


def unknown_choice(kind: str, given: object, choices: Iterable[str]) -> UserError:
    """Build the error for a name that is not among ``choices``, with a close-match hint."""
    choices = sorted(choices)
    lowered = {c.lower(): c for c in choices}
    hint = [lowered[h] for h in difflib.get_close_matches(str(given).lower(), list(lowered), n=1)]
    suggestion = f" Did you mean {hint[0]!r}?" if hint else ""
    return UserError(
        f"unknown {kind} {given!r}; valid choices: {', '.join(choices)}.{suggestion}"
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters (for one-line errors)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""
