"""A private PostgreSQL server for tests and benchmarks: Debian's binaries, a temp dir, a free port.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root the server runs as the ``postgres``
user that Debian's package creates (its data directory is chowned to it). The server listens on
127.0.0.1 only, trusts local connections (it lives for one test session), and keeps PostgreSQL's
durable defaults (fsync on), so benchmarks measure what production does.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from demo.orthanc import free_port

__all__ = ["PostgresServer", "postgres_bindir"]


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or ``None``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    ctl = shutil.which("pg_ctl")
    return Path(ctl).parent if ctl else None


def _free_port() -> int:
    return free_port()  # one way to pick a port: outside the kernel's ephemeral range


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` in a temp dir; ``stop()`` removes everything, and
    ``stop(mode="immediate", remove=False)`` then ``start()`` is a server crash and restart."""

    def __init__(self, database: str = "pacsai", max_connections: int = 400) -> None:
        self.database = database
        self._max_connections = max_connections
        self.port = 0
        self.root: Path | None = None
        self._bindir = postgres_bindir()
        self._as_user: list[str] = []

    @property
    def dsn(self) -> str:
        """libpq DSN of the test database (no password: local trust)."""
        return f"host=127.0.0.1 port={self.port} user=pacsai dbname={self.database}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        """Create the cluster and the database, and start the server; after
        ``stop(remove=False)``, start the same cluster again on the same port (after an
        immediate stop, the server recovers from its WAL first).

        Raises:
            RuntimeError: PostgreSQL is not installed.
        """
        if self._bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        if self.root is not None:  # stopped with its files kept: the same cluster again
            self._pg_ctl_start()
            return self
        self.root = Path(tempfile.mkdtemp(prefix="pacsai-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        data = self._data
        self._run(
            str(self._bindir / "initdb"), "-D", str(data), "-U", "pacsai", "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        self.port = _free_port()
        self._pg_ctl_start()
        self._create_database()
        return self

    @property
    def _data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections={self._max_connections}"
        )
        self._run(
            str(self._bindir / "pg_ctl"),
            "-D",
            str(self._data),
            "-o",
            options,
            "-l",
            str(self._data.parent / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user=pacsai dbname=postgres", autocommit=True
                ) as conn:
                    conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, mode: str = "fast", *, remove: bool = True) -> None:
        """Stop the server and delete its files, or keep them for ``start()`` (``remove=False``).

        Args:
            mode: ``pg_ctl stop -m``: ``smart``, ``fast``, or ``immediate`` (every server
                process quits at once, as in a crash: no checkpoint, clients cut off).
            remove: Delete the cluster too (a server that is not running is not an error then).

        Raises:
            subprocess.CalledProcessError: ``pg_ctl`` failed and the files are kept.
        """
        if self.root is None:
            return
        try:
            self._run(str(self._bindir / "pg_ctl"), "-D", str(self._data), "-m", mode, "-w", "stop")
        except subprocess.CalledProcessError:
            if not remove:
                raise
        finally:
            if remove:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
