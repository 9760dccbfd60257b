"""A TCP proxy that drops connections, for testing what a client does when replies are lost.

:class:`FaultProxy` listens on a free loopback port and relays every connection to an
upstream server (a real ``redis-server`` in the tests). For a fraction of the replies it
closes the connection instead of relaying them (``drop_after``): the server has carried the
command out, the client never learns it, which is the case operation ids exist for. It can
also drop a fraction of the commands before they reach the server (``drop_before``).
Decisions come from a seeded random generator, so a run is repeatable in kind (thread
timing still varies). Threads only, no event loop: start it, point the client at
:attr:`FaultProxy.url`, ``stop()`` it (or use it in ``with``).
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
from types import TracebackType

__all__ = ["FaultProxy"]

_CHUNK = 65_536


class FaultProxy:
    """A loopback TCP proxy that loses a fraction of the replies (and commands).

    Args:
        upstream_port: the server's port on 127.0.0.1.
        drop_after: the fraction of the server's replies (each chunk read from it) after
            which the connection is closed instead of relaying it.
        drop_before: the fraction of the client's commands (each chunk read from it) after
            which the connection is closed instead of sending it on.
        seed: the seed of the decisions.
        scheme: the scheme of :attr:`url`.

    Attributes:
        dropped_after: connections closed in place of a reply.
        dropped_before: connections closed in place of a command.
        relayed: replies relayed.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        drop_after: float = 0.0,
        drop_before: float = 0.0,
        seed: int = 0,
        scheme: str = "redis",
    ) -> None:
        for name, value in (("drop_after", drop_after), ("drop_before", drop_before)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} is a fraction in [0, 1), not {value!r}")
        self.upstream = ("127.0.0.1", upstream_port)
        self.drop_after = drop_after
        self.drop_before = drop_before
        self.scheme = scheme
        self.dropped_after = 0
        self.dropped_before = 0
        self.relayed = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (the proxy's address, with ``scheme``)."""
        return f"{self.scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        """Listen on a free loopback port and relay connections from a thread of its own."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        """Stop listening, close every connection and wait for the threads."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for sock in self._open:
                sock.close()
            self._open.clear()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5.0)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            self._spawn(self._relay, client, upstream)

    def _drop(self, fraction: float) -> bool:
        if fraction <= 0.0:
            return False
        with self._lock:
            return self._random.random() < fraction

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    if sock is client:
                        if self._drop(self.drop_before):
                            with self._lock:
                                self.dropped_before += 1
                            return
                        upstream.sendall(data)
                    else:
                        if self._drop(self.drop_after):
                            with self._lock:
                                self.dropped_after += 1
                            return
                        client.sendall(data)
                        with self._lock:
                            self.relayed += 1
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(client)
                self._open.discard(upstream)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
