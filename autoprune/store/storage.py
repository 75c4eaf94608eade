"""Opening a study's SQL storage: heartbeats so that a stopped worker's trial is retried,
connections checked before use and calls retried through a database outage, and a read-only
open that never writes to a database holding no study."""

from __future__ import annotations

import functools
import os
import random
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from autoprune.errors import UserError

#: seconds between a running trial's heartbeats; a trial whose worker missed GRACE_BEATS of
#: them is failed and retried by the next worker that starts a trial
DEFAULT_HEARTBEAT = 30
GRACE_BEATS = 3
#: how long a worker waits for an unreachable database before it gives up (a server restart
#: takes seconds to a minute)
DEFAULT_OUTAGE_S = 120.0
#: opening a fresh database is tried this often when another process wins the race to create it
CREATE_ATTEMPTS = 5
#: a stale or interrupted trial is retried at most this many times
MAX_RETRY = 2


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a copy of the failed ``trial`` (same parameters) for the next worker, at most
    ``MAX_RETRY`` times in a chain. Unlike Optuna's ``RetryFailedTrialCallback`` it carries
    over no measurement (constraints, reason): the copy is measured afresh."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRY:
        return
    system = {k: v for k, v in trial.system_attrs.items() if k == "fixed_params"}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k == "warm_start"},
        system_attrs={**system, "failed_trial": trial.number, "retry_history": history},
    ))


class StorageUnavailable(Exception):
    """The database stayed unreachable for longer than the worker waits (CLI: one line, exit 1)."""


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///"):].split("?")[0]).expanduser()
    return None


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _disconnect(exc: BaseException, sqlite: bool) -> bool:
    """Whether ``exc`` (or what it was raised from) means the database could not be reached,
    as opposed to a bad query: only those are worth waiting out."""
    for e in causes(exc):
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            # SQLite: a writer holding the lock is worth waiting for; a missing or read-only file is not
            return "database is locked" in str(e) if sqlite else True
    return False


_depth = threading.local()


def _retrying(fn: Any) -> Any:
    @functools.wraps(fn)
    def call(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        if getattr(_depth, "n", 0):  # a call made by another storage call: the outer one retries
            return fn(self, *args, **kwargs)
        _depth.n = 1
        try:
            return self._with_retry(fn, args, kwargs)
        finally:
            _depth.n = 0

    return call


class ResilientStorage(RDBStorage):
    """Optuna's RDB storage whose calls wait out a database outage (a server restart): each
    call that fails to reach the database is retried with backoff for up to ``outage_s``
    seconds, so a finished trial is stored once the server is back. Pooled connections are
    checked before use (``pool_pre_ping``), so one left stale by a restart is replaced."""

    outage_s: float = DEFAULT_OUTAGE_S
    _gave_up: bool = False  # after one call waited out outage_s in vain, the next ones do not wait again

    def _with_retry(self, fn: Any, args: tuple, kwargs: dict) -> Any:
        sqlite = self.url.startswith("sqlite")
        delay, start, attempt, told = 0.5, time.monotonic() - (self.outage_s if self._gave_up else 0), 0, False
        while True:
            try:
                result = fn(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempt and fn.__name__ == "set_trial_state_values":
                    # the attempt before the outage was committed, only its answer was lost
                    return True
                raise
            except Exception as exc:  # noqa: BLE001 - classified just below
                if not _disconnect(exc, sqlite):
                    raise
                waited = time.monotonic() - start
                if waited >= self.outage_s:
                    self._gave_up = True
                    cause = str(getattr(exc, "orig", None) or exc.__cause__ or exc).strip().splitlines()
                    raise StorageUnavailable(
                        f"the database {_redacted(self.url)} was unreachable for {max(waited, self.outage_s):.0f} s "
                        f"({cause[0][:160] if cause else type(exc).__name__}); every finished trial before "
                        "this one is stored, and the study can be resumed"
                    ) from exc
                if not told and fn.__name__ != "record_heartbeat":
                    print(f"database {_redacted(self.url)} unreachable; retrying for up to {self.outage_s:.0f} s",
                          file=sys.stderr)
                    told = True
                time.sleep(min(delay, max(0.1, self.outage_s - waited)))
                delay, attempt = min(2 * delay, 8.0), attempt + 1
                continue
            if told:
                print(f"database {_redacted(self.url)} reachable again after {time.monotonic() - start:.0f} s",
                      file=sys.stderr)
            self._gave_up = False
            return result



def _quiet_heartbeat(self: ResilientStorage, trial_id: int) -> None:
    # runs in Optuna's heartbeat thread: an outage there is the main thread's to report
    try:
        _retrying(RDBStorage.record_heartbeat)(self, trial_id)
    except StorageUnavailable:
        pass


for _name, _fn in list(vars(RDBStorage).items()):
    # the private ones are those Optuna's cache layer calls (optuna/storages/_cached_storage.py)
    if callable(_fn) and (not _name.startswith("_") or _name in (
            "_get_stale_trial_ids", "_create_new_trial", "_get_trials", "_set_trial_param", "_get_best_trial_id")) \
            and _name not in (
            "get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "remove_session", "upgrade",
            "get_current_version", "get_head_version", "get_all_versions", "record_heartbeat"):
        setattr(ResilientStorage, _name, _retrying(_fn))
ResilientStorage.record_heartbeat = _quiet_heartbeat  # type: ignore[method-assign]


def _redacted(url: str) -> str:
    """The URL without its password."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return url


#: URL scheme -> (the driver module SQLAlchemy loads by default, how to install it)
DRIVERS = {"postgresql": ("psycopg2", 'pip install "autoprune[postgres]"'),
           "mysql": ("MySQLdb", "pip install mysqlclient (or use mysql+pymysql:// with pip install pymysql)")}


def _missing_driver(url: str, exc: BaseException) -> str | None:
    """The line to print when ``exc`` says the database driver of ``url`` is not installed."""
    chain = causes(exc)
    if not any(isinstance(e, ImportError) or "Failed to import DB access module" in str(e) for e in chain):
        return None
    scheme = url.split(":", 1)[0]
    dialect, _, driver = scheme.partition("+")
    module, install = DRIVERS.get(dialect, (driver or dialect, f"install the Python driver for {scheme}"))
    if driver and dialect in DRIVERS and driver != DRIVERS[dialect][0]:
        module, install = driver, f"pip install {driver}"
    return (f"storage {_redacted(url)!r} needs the database driver {module!r}, which is not installed: {install}")


def _cannot_open(url: str, exc: BaseException) -> UserError:
    missing = _missing_driver(url, exc)
    if missing:
        return UserError(missing)
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
    return UserError(
        f"cannot open storage {_redacted(url)!r}: {lines[0][:300]} "
        "(expected an SQLAlchemy URL such as sqlite:///studies/x.db or postgresql+psycopg2://user@host/db)"
    )


def _engine_kwargs(url: str) -> dict[str, Any]:
    return {} if url.startswith("sqlite") else {"pool_pre_ping": True}


def _writable(path: Path, *, folder: bool) -> bool:
    return os.access(path, (os.W_OK | os.X_OK) if folder else (os.R_OK | os.W_OK))


def check_writable(url: str) -> None:
    """Before any work: a SQLite study's folder and file must be writable (else one line,
    naming them); other databases are checked by connecting."""
    path = sqlite_path(url)
    if path is None:
        return
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"storage {url}: {existing} is a file, not a folder; choose another --storage")
    if not _writable(existing, folder=True):
        raise UserError(f"storage {url}: the folder {existing} is not writable; choose another --storage")
    if path.exists():
        if path.is_dir():
            raise UserError(f"storage {url}: {path} is a folder, not a database file")
        if not _writable(path, folder=False):
            raise UserError(f"storage {url}: the database file {path} is read-only; choose another --storage")


def open_storage(url: str, *, heartbeat: int = DEFAULT_HEARTBEAT, outage_s: float = DEFAULT_OUTAGE_S,
                 create: bool = True) -> ResilientStorage:
    """The storage at ``url`` (any SQLAlchemy URL), for searching: tables are created if
    missing, heartbeats fail a stopped worker's trial after ``GRACE_BEATS`` x ``heartbeat``
    seconds and a retry of it is queued. With ``create=False`` (read-only commands) a
    database without Optuna's tables is refused before anything is written to it. A bad URL
    is a one-line :class:`UserError`. Processes that open a fresh database together all get it:
    one that loses the race to create the tables opens it again (``_lost_creation_race``)."""
    path = sqlite_path(url)
    if create:
        check_writable(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    else:
        _check_holds_studies(url)
    for attempt in range(CREATE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = ResilientStorage(
                    url, engine_kwargs=_engine_kwargs(url), skip_table_creation=not create,
                    heartbeat_interval=heartbeat, grace_period=GRACE_BEATS * heartbeat,
                    heartbeat_stale_trial_callback=retry_trial,
                )
            break
        except (UserError, StorageUnavailable):
            raise
        except Exception as exc:  # sqlalchemy ArgumentError / OperationalError / DatabaseError, ModuleNotFoundError
            if create and attempt + 1 < CREATE_ATTEMPTS and _lost_creation_race(exc):
                time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # the winner finishes; then all exists
                continue
            raise _cannot_open(url, exc) from None
    storage.outage_s = outage_s
    return storage


def _lost_creation_race(exc: BaseException) -> bool:
    """Whether opening a fresh database failed because another process (a second worker started
    at the same instant) created Optuna's tables, version row or Alembic stamp between this one's
    check and its write. Optuna checks then creates, so the loser's CREATE TABLE or INSERT fails;
    opening again finds everything in place."""
    if isinstance(exc, sqlalchemy.exc.IntegrityError):  # version_info / alembic_version row, pg_type name
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and "already exists" in str(exc)


def _check_holds_studies(url: str) -> None:
    """Refuse, without writing, a storage that holds no Optuna tables (an unrelated or empty file)."""
    path = sqlite_path(url)
    if path is not None:
        if not path.exists():
            raise UserError(f"no study database at {url} (run 'autoprune search' first, or pass --storage)")
        if path.is_dir():
            raise UserError(f"storage {url}: {path} is a folder, not a database file")
        url = f"sqlite:///file:{path}?mode=ro&uri=true"  # SQLite itself refuses any write
    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - not a database, cannot connect, no driver
        raise _cannot_open(url if path is None else f"sqlite:///{path}", exc) from None
    if not {"studies", "trials", "version_info"} <= tables:
        raise UserError(f"storage {url if path is None else f'sqlite:///{path}'} holds no study "
                        "(run 'autoprune search' first, or pass the --storage it wrote to)")
