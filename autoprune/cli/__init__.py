"""The ``autoprune`` command. Each command is a module of this package with a ``run(args)``;
``parser.py`` holds the flags. User errors exit 2 with one line; an interrupt exits 130 / 143
with what it left behind; a database outage exits 1 with one line."""

from __future__ import annotations

import importlib
import sys
import traceback
import warnings

from autoprune.cli.parser import build_parser
from autoprune.errors import UserError

#: command -> the module of this package that runs it
COMMANDS = {"search": "search", "worker": "worker", "sensitivity": "sensitivity", "front": "front",
            "apply": "apply", "confirm": "confirm"}

#: what an interrupt leaves behind, per command
INTERRUPTED = {
    "search": "interrupted; the trial in flight is queued again for the next worker, completed trials are stored, "
              "and the study can be resumed",
    "worker": "interrupted; the trial in flight is queued again for the next worker, completed trials are stored",
    "apply": "interrupted; nothing was exported",
    "confirm": "interrupted; the confirmed runs so far are stored in the study, and confirm resumes from them",
    "sensitivity": "interrupted; the groups analysed so far are lost, nothing was written",
    "front": "interrupted",
}


def _storage_outage(exc: BaseException) -> BaseException | None:
    """The StorageUnavailable that ``exc`` was raised from, if any (Optuna may raise another
    error while handling it)."""
    from autoprune.store.storage import StorageUnavailable, causes

    return next((e for e in causes(exc) if isinstance(e, StorageUnavailable)), None)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    parser = build_parser()
    args = parser.parse_args(argv)
    import optuna

    from autoprune.policy_search import interrupts

    # failed trials get one line each from autoprune (with the reason stored); Optuna's warning would add a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    previous = interrupts.install()
    try:
        command = importlib.import_module(f"autoprune.cli.{COMMANDS[args.command]}")
        return command.run(args)
    except UserError as exc:
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        interrupts.acknowledge()
        print(INTERRUPTED[args.command], file=sys.stderr)
        return 143 if isinstance(exc, interrupts.Terminated) else 130
    except BrokenPipeError:
        # the reader went away (front | head -1): say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        outage = _storage_outage(exc)
        if outage is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        print(f"autoprune {args.command}: error: {outage}", file=sys.stderr)
        return 1
    finally:
        interrupts.restore(previous)


if __name__ == "__main__":
    sys.exit(main())
