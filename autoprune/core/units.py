"""Budgets and counts as users write and read them: ``0.5`` (a fraction of dense) or ``150M``
FLOPs, ``5ms`` or ``0.6`` latency, and ``1.23M`` for printing."""

from __future__ import annotations

import math
import re

from autoprune.errors import UserError

#: what latency can be measured in: eager PyTorch on the search's device, or onnxruntime on the CPU
LATENCY_RUNTIMES = ("torch", "onnxruntime")


_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_budget(text: str | float, name: str = "budget") -> tuple[str, float]:
    """``"0.5"`` -> ("fraction", 0.5); ``"150M"`` / ``"1.5e8"`` -> ("absolute", 1.5e8).

    A plain number up to 1 is a fraction of the dense model; above 1 (or with a K/M/G
    suffix) it is an absolute count."""
    s = str(text).strip()
    m = re.fullmatch(r"([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)", s)
    if not m:
        raise UserError(f"{name} {text!r} is not a number: use a fraction of dense like 0.5 or a count like 150M")
    value, suffix = float(m.group(1)), m.group(2).upper()
    if value <= 0:
        raise UserError(f"{name} {text!r} must be > 0: a fraction of dense like 0.5 or a count like 150M")
    value *= _SUFFIX[suffix]
    if not math.isfinite(value) or value >= 1e18:
        raise UserError(f"{name} {text!r} is too large: use a fraction of dense like 0.5 or a count like 150M")
    if suffix:
        return "absolute", value
    if value <= 1:
        return "fraction", value
    if value != int(value):
        raise UserError(f"{name} {text!r} is neither a fraction of dense (at most 1, e.g. 0.5) nor a whole count "
                        "(e.g. 150M or 150000000)")
    return "absolute", value


def parse_latency(text: str, name: str = "budget_latency") -> tuple[str, float]:
    """``"0.6"`` -> ("fraction", 0.6) of the dense model's latency; ``"5ms"``, ``"800us"``,
    ``"0.2s"`` -> ("ms", milliseconds)."""
    s = str(text).strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ms|us|s)?", s)
    if not m:
        raise UserError(f"{name} {text!r} is not a latency: use a fraction of dense like 0.6 or a time like 5ms, "
                        "800us or 0.2s")
    value, unit = float(m.group(1)), m.group(2)
    if not 0 < value < 1e12:
        raise UserError(f"{name} {text!r} must be > 0: a fraction of dense like 0.6 or a time like 5ms")
    if unit is None:
        if value > 1:
            raise UserError(f"{name} {text!r} needs a unit above 1: a fraction of dense (at most 1, e.g. 0.6) or a "
                            "time like 5ms, 800us or 0.2s")
        return "fraction", value
    return "ms", value * {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]


def resolve_budget(text: str, dense: int, name: str = "budget") -> int:
    kind, value = parse_budget(text, name)
    return int(value * dense) if kind == "fraction" else int(value)


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"
