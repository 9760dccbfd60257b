"""A throwaway PostgreSQL server for tests: a temporary cluster on a free loopback port.

:class:`PostgresServer` runs ``initdb`` (trust authentication) in a temporary directory
and starts the server with ``pg_ctl`` on ``127.0.0.1`` and a free port, its unix socket
in the same directory, durability off (tests do not need it). PostgreSQL refuses to run as
root: as root, the directory is given to the unprivileged ``postgres`` user that Debian's
packages create, and the commands run as that user through ``runuser``. Everything is
removed on :meth:`~PostgresServer.stop`::

    with PostgresServer() as pg:
        url = pg.new_database()        # postgresql://postgres@127.0.0.1:PORT/t1

:func:`find_postgres` says where the binaries are (Debian's ``/usr/lib/postgresql/*/bin``
or the ``PATH``), or ``None``; :meth:`PostgresServer.shared` is one server per process,
stopped at exit, for test suites that use it from several directories.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from apportion.testing.ports import free_port

__all__ = ["PostgresServer", "find_postgres"]

_USER = "postgres"


def find_postgres() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


class PostgresServer:
    """A temporary PostgreSQL cluster (see the module docstring).

    Args:
        bindir: where ``initdb`` and ``pg_ctl`` are (default: :func:`find_postgres`).

    Raises:
        RuntimeError: PostgreSQL is not installed, or the server did not start (the
            message carries the end of its log).
    """

    _shared: ClassVar[PostgresServer | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_postgres()
        self.port = 0
        self.root: Path | None = None
        self._databases = 0
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> PostgresServer:
        """One started server per process, stopped at interpreter exit."""
        with cls._shared_lock:
            if cls._shared is None:
                server = cls().start()
                atexit.register(server.stop)
                cls._shared = server
            return cls._shared

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database (trust authentication, no password)."""
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", _USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    def start(self) -> PostgresServer:
        """Create the cluster and start the server."""
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        root = Path(tempfile.mkdtemp(prefix="apportion-pg-"))
        self.root = root
        if os.geteuid() == 0:
            shutil.chown(root, _USER, _USER)
        data, log = root / "data", root / "server.log"
        done = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(data),
            "--auth=trust",
            "-U",
            _USER,
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        if done.returncode:
            self.stop()
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-2000:]}")
        for _attempt in range(3):
            self.port = free_port()
            options = (
                f"-p {self.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
            )
            done = self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(log),
                "-w",
                "-t",
                "30",
                "start",
            )
            if done.returncode == 0:
                return self
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else done.stderr
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {tail.strip()}")

    def new_database(self) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        with self._lock:
            self._databases += 1
            name = f"t{self._databases}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=_USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server and remove its directory (safe to call twice)."""
        root, self.root = self.root, None
        if root is None:
            return
        if self.bindir is not None and (root / "data" / "postmaster.pid").exists():
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            )
        with contextlib.suppress(OSError):
            shutil.rmtree(root)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
