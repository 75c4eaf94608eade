"""Ctrl-C and SIGTERM that are never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the signal
arrives. If that is inside a finaliser or a weakref callback (PyTorch and SQLAlchemy run
many), Python prints "Exception ignored" and the interrupt is gone: the search would go on.
So the CLI's handler raises the interrupt and, until the code that handles it says so with
:func:`acknowledge`, sends the same signal again every two seconds. Only the CLI installs
the handler (:func:`install`); for a library caller, :func:`acknowledge` does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the trial in flight is queued again."""

    signal_name = "SIGTERM"


_state: dict[str, Any] = {"timer": None, "acknowledged": False}
_REPEAT_S = 2.0


def _handler(signum: int, frame: Any) -> None:
    if _state["acknowledged"]:
        return  # already being handled: let the clean-up (queueing the trial again) finish
    timer = _state["timer"]
    if timer is None or not timer.is_alive():
        timer = threading.Timer(_REPEAT_S, os.kill, (os.getpid(), signum))
        timer.daemon = True
        _state["timer"] = timer
        timer.start()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def acknowledge() -> None:
    """The interrupt reached code that handles it: stop repeating it."""
    timer = _state["timer"]
    if timer is not None:  # a signal came through the handler
        timer.cancel()
        _state["acknowledged"] = True


def _quiet_unraisable(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # an interrupt lost in a finaliser: it is sent again, no traceback for it
        previous(unraisable)

    return hook


def install() -> dict[Any, Any]:
    """Handle SIGINT and SIGTERM as above; returns what was there before (for :func:`restore`)."""
    _state.update(timer=None, acknowledged=False)
    previous: dict[Any, Any] = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    previous["unraisablehook"] = sys.unraisablehook
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    return previous


def restore(previous: dict[Any, Any]) -> None:
    acknowledge()
    sys.unraisablehook = previous.pop("unraisablehook", sys.unraisablehook)
    for s, h in previous.items():
        signal.signal(s, h)
    _state.update(timer=None, acknowledged=False)
