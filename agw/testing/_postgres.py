"""
A real PostgreSQL server for a test or a benchmark (L{PostgresServer}): a
fresh cluster in a temporary directory, listening on 127.0.0.1 on a free
port, stopped and started again on demand (a database restart, as budgets
must survive), removed at the end. Debian's C{postgresql} package provides
the programs.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any


class PostgresUnavailable(Exception):
    """PostgreSQL's server programs are not installed (C{apt-get install postgresql})."""


def postgres_program(name: str) -> str | None:
    """A PostgreSQL server program: on C{PATH}, or in Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    """
    One PostgreSQL cluster, started by the constructor; C{url} is for agw's
    C{config.database.url}. As root it runs as the C{postgres} user
    (PostgreSQL refuses root). Call L{remove} when done.
    """

    def __init__(self) -> None:
        initdb, pg_ctl = postgres_program("initdb"), postgres_program("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
        self.directory = tempfile.mkdtemp(prefix="agw-pg-")
        as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.directory, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        subprocess.run([*as_user, initdb, "-D", data, "-U", "agw", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        self._ctl = [*as_user, pg_ctl, "-D", data]
        self.url = f"postgresql://agw@127.0.0.1:{self.port}/postgres"
        self.start()

    def start(self) -> None:
        """Start the server (again, after L{stop}: same data, same port)."""
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.directory}"
        subprocess.run([*self._ctl, "-o", options, "-w", "-l", os.path.join(self.directory, "log"), "start"],
                       check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (C{fast}: clients are disconnected, as in a restart; C{immediate}: a crash)."""
        subprocess.run([*self._ctl, "-m", mode, "-w", "stop"], check=True, capture_output=True)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Rows of C{sql}, on a connection of its own (blocking: call it in a thread from a reactor)."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            cursor = connection.execute(sql, args or None)
            return cursor.fetchall() if cursor.description else []

    def remove(self) -> None:
        """Stop the server and delete its files."""
        subprocess.run([*self._ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)
