"""A real ``redis-server`` (the Debian package) on a free loopback port, for the tests.

The server writes an append-only file (AOF) in its own temporary directory, so a test can
stop or kill it and start it again on the same port and data, as after a crash or restart.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from apportion.testing.ports import free_port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process with AOF on, in a temporary directory.

    Args:
        fsync: the AOF's ``appendfsync`` (``always`` survives a SIGKILL without losing
            an acknowledged write).
        options: more configuration by name (a value of several words, such as
            ``rename-command``'s, is split at spaces).
    """

    def __init__(self, fsync: str = "always", options: dict[str, str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.fsync = fsync
        self.options = dict(options or {})  # more configuration, e.g. rename-command
        self.dir = Path(tempfile.mkdtemp(prefix="apportion-redis-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        atexit.register(self.cleanup)  # even if the test session ends abnormally

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on a new free port the first time, the same port after)."""
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            options = {
                "port": str(self.port),
                "bind": "127.0.0.1",
                "dir": str(self.dir),
                "save": "",
                "appendonly": "yes",
                "appendfsync": self.fsync,
                "daemonize": "no",
                "logfile": str(self.dir / "redis.log"),
                **self.options,
            }
            argv = [self.binary]
            for name, value in options.items():
                argv += [f"--{name}", *value.split(" ")]
            self.process = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # it died: the port was taken, try another
                if _ping(self.port):
                    return
                time.sleep(0.02)
            self.stop()
            self.port = 0
        raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM: it flushes the AOF first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill) the server and start it again on the same port and data."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
