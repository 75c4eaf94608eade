"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and the benchmarks (Debian's
``postgresql`` package, which scripts/setup.sh installs). As root, initdb and the server run as
the ``postgres`` user. Imports nothing heavy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

#: Debian's PostgreSQL server binaries (scripts/setup.sh installs the package), newest version first
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/usr/lib/postgresql/none"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (initdb refuses root: it runs as postgres)."""

    def __init__(self) -> None:
        # pytest's tmp folders are private to root; the server runs as postgres
        self.base = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
        self.data, sock = self.base / "data", self.base / "sock"
        sock.mkdir()
        self.as_pg = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        if os.geteuid() == 0:
            os.chmod(self.base, 0o755)
            shutil.chown(self.base, "postgres")
            shutil.chown(sock, "postgres")
        subprocess.run([*self.as_pg, str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)
        self.port = free_port()
        self.options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock}"
        self.start()
        self.url = self.database("ap")

    def database(self, name: str) -> str:
        """A new, empty database on this server: its SQLAlchemy URL."""
        subprocess.run([*self.as_pg, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        name], check=True, capture_output=True)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        subprocess.run([*self.as_pg, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.base / "log"),
                        "-o", self.options, "start"], check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self.as_pg, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop"],
                       capture_output=True)

    def restart(self, down_s: float) -> None:
        """Stop the server (closing every connection), stay down ``down_s`` seconds, start it again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def open_at_once(url: str, barrier: Any, results: Any) -> None:
    """One of several processes that open the storage at ``url`` at the same instant (after
    ``barrier``), as workers started together do; puts "ok" or the error line on ``results``."""
    from autoprune.store.storage import open_storage

    barrier.wait()
    try:
        open_storage(url, heartbeat=60)
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - the line is what the test reads
        results.put(f"{type(exc).__name__}: {exc}")
