"""What the Redis topology fixtures share: one ``redis-server`` process and a tiny RESP client.

The admin client speaks RESP over a plain socket, so the fixtures read ``CLUSTER INFO``,
``INFO replication`` and ``SENTINEL ...`` replies as the server sends them, whatever
redis-py's version parses them into. Nothing here skips: a missing binary raises.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from apportion.testing.ports import free_port

Reply: TypeAlias = "str | int | list[Reply] | None"


class RedisCommandError(RuntimeError):
    """The server answered a command with an error reply."""


def binary(name: str = "redis-server") -> str:
    """The path of a Redis binary; raises (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        package = "redis-tools" if name == "redis-cli" else "redis-server"
        raise FileNotFoundError(f"{name} is not installed (apt-get install {package})")
    return path


def _read_line(buffer: bytearray, sock: socket.socket) -> bytes:
    while b"\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    return line


def _read_exactly(count: int, buffer: bytearray, sock: socket.socket) -> bytes:
    while len(buffer) < count + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buffer += chunk
    data = bytes(buffer[:count])
    buffer[:] = buffer[count + 2 :]
    return data


def _read_reply(buffer: bytearray, sock: socket.socket) -> Reply:
    line = _read_line(buffer, sock)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisCommandError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        return None if length < 0 else _read_exactly(length, buffer, sock).decode()
    if kind == b"*":
        length = int(rest)
        return None if length < 0 else [_read_reply(buffer, sock) for _ in range(length)]
    raise ConnectionError(f"unexpected RESP reply {line[:40]!r}")


def command(port: int, *args: str | int, timeout: float = 1.0) -> Reply:
    """Send one command to ``127.0.0.1:port`` on a new connection and return its reply."""
    payload = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        payload.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(payload))
        return _read_reply(bytearray(), sock)


def try_command(port: int, *args: str | int, timeout: float = 0.5) -> Reply | Exception:
    """:func:`command`, returning the exception instead of raising it (for polling)."""
    try:
        return command(port, *args, timeout=timeout)
    except (OSError, RedisCommandError) as error:
        return error


def info_fields(text: object) -> dict[str, str]:
    """``name:value`` lines of an ``INFO`` or ``CLUSTER INFO`` reply as a dict (else empty)."""
    fields: dict[str, str] = {}
    if isinstance(text, str):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and not name.startswith("#"):
                fields[name.strip()] = value.strip()
    return fields


def wait_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> float:
    """Poll ``check`` until it is true; return the seconds it took, raise after ``timeout``."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.1f} s")
        time.sleep(poll)


def wait_replicated(primary: int, replicas: Sequence[int], timeout: float = 10.0) -> float:
    """Wait until every replica has applied every write the primary on port ``primary`` holds.

    By replication offsets: the replicas' ``slave_repl_offset`` reach the primary's
    ``master_repl_offset`` read now. (``WAIT`` cannot tell this: it waits for the writes of
    its own connection only, and a new connection has made none.)

    Returns:
        The seconds it took.
    """
    fields = info_fields(command(primary, "INFO", "replication"))
    offset = int(fields["master_repl_offset"])

    def caught_up() -> bool:
        for port in replicas:
            got = info_fields(try_command(port, "INFO", "replication")).get("slave_repl_offset")
            if got is None or int(got) < offset:
                return False
        return True

    return wait_until(caught_up, timeout, f"replicas of port {primary} at offset {offset}")


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None  # loaded before fork


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Ask Linux to SIGKILL the child when the thread that started it ends.

    ``atexit`` does not run when the test process is itself killed (a CI timeout's SIGTERM
    or SIGKILL): without this, its Redis servers would outlive it. Start servers from the
    main thread (or one that outlives them).
    """
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RedisProcess:
    """One ``redis-server`` (or sentinel) process on a loopback port, in its own directory.

    Args:
        directory: where it keeps its files (config, log, ``nodes.conf``, AOF).
        options: ``redis-server --name value`` options besides port, bind, dir and logfile.
        sentinel: run as a sentinel (``redis-server sentinel.conf --sentinel``); the
            options then go into the config file, which the sentinel rewrites.
        extra_ports: how many more free ports to reserve with the main one (the cluster
            bus port); ``{port1}`` in an option's value is replaced by the first of them.
    """

    def __init__(
        self,
        directory: Path,
        options: dict[str, str] | list[tuple[str, str]],
        *,
        sentinel: bool = False,
        extra_ports: int = 0,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.options = list(options.items()) if isinstance(options, dict) else list(options)
        self.sentinel = sentinel
        self.extra_ports = extra_ports
        self.port = 0
        self.ports: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._config_port = 0  # the port the sentinel config file was written for

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.dir / "redis.log"

    def reserve_ports(self) -> int:
        """Choose its free ports now (if not chosen yet), before it starts; return the port."""
        if not self.port:
            self.ports = [free_port() for _ in range(1 + self.extra_ports)]
            self.port = self.ports[0]
        return self.port

    def spawn(self) -> None:
        """Start the process without waiting (new free ports unless it ran before)."""
        self.reserve_ports()
        base = [
            ("port", str(self.port)),
            ("bind", "127.0.0.1"),
            ("dir", str(self.dir)),
            ("logfile", str(self.log)),
            ("daemonize", "no"),
        ]
        options = base + [
            (name, value.replace("{port1}", str(self.ports[1])) if self.extra_ports else value)
            for name, value in self.options
        ]
        if self.sentinel:
            config = self.dir / "sentinel.conf"
            if self._config_port != self.port:  # a restart keeps what the sentinel rewrote
                config.write_text("".join(f"{name} {value}\n" for name, value in options))
                self._config_port = self.port
            argv = [binary(), str(config), "--sentinel"]
        else:
            argv = [binary()]
            for name, value in options:
                argv += [f"--{name}", *value.split(" ")]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        """Whether it answers ``PING``."""
        return self.alive() and try_command(self.port, "PING", timeout=0.2) == "PONG"

    def command(self, *args: str | int, timeout: float = 1.0) -> Reply:
        """One command to this process."""
        return command(self.port, *args, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 5 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def start_all(processes: list[RedisProcess], timeout: float = 10.0) -> None:
    """Start processes in parallel and wait until each answers ``PING``.

    A process that dies at once (its port was taken meanwhile) is started again on new
    ports, up to three times.
    """
    for process in processes:
        process.spawn()
    retries = dict.fromkeys(range(len(processes)), 3)
    deadline = time.monotonic() + timeout
    pending = set(range(len(processes)))
    while pending:
        for index in sorted(pending):
            process = processes[index]
            if process.ready():
                pending.discard(index)
            elif not process.alive():
                if retries[index] == 0:
                    raise RuntimeError(f"redis-server did not start; see {process.log}")
                retries[index] -= 1
                process.port = 0
                process.spawn()
        if time.monotonic() > deadline:
            logs = ", ".join(str(processes[i].log) for i in sorted(pending))
            raise TimeoutError(f"redis-server did not answer PING in {timeout} s; see {logs}")
        if pending:
            time.sleep(0.01)
