"""A real Redis Sentinel setup for the tests: one primary, one replica, three sentinels.

The primary and the replica write an AOF with the ``appendfsync`` asked for (``everysec`` or
``always``); the sentinels (``redis-server sentinel.conf --sentinel``) watch the service
``apportion`` with quorum 2, ``down-after-milliseconds`` 500 and a short failover timeout, so
:meth:`RedisSentinel.kill_primary` followed by :meth:`RedisSentinel.wait_failover` sees the
replica promoted within about two seconds. The sentinels start once the replica's link is
up, each told its id, the replica and the other sentinels in its config, and
:meth:`RedisSentinel.start` returns once every sentinel has read the primary's and the
replica's ``INFO`` and reaches the two others (about 0.2 s in all).

Measured here (2 cores, load average 11): start about 0.3 s, a failover about 1.8 s, or
about 2.7 s when the primary is killed within a second of the start.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_process import (
    RedisProcess,
    binary,
    info_fields,
    start_all,
    try_command,
    wait_replicated,
    wait_until,
)

SERVICE = "apportion"


class RedisSentinel:
    """One primary, ``replicas`` replicas and ``sentinels`` sentinels on loopback ports.

    Args:
        fsync: the AOF's ``appendfsync`` on the data nodes (``always``, ``everysec``, ``no``).
        replicas: how many replicas.
        sentinels: how many sentinels (quorum: a majority of them).
        down_after_ms: ``down-after-milliseconds``: how soon a silent primary is down.
        failover_timeout_ms: ``failover-timeout``.
    """

    def __init__(
        self,
        fsync: str = "everysec",
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
    ) -> None:
        binary("redis-server")
        self.fsync = fsync
        self.service = SERVICE
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = sentinels // 2 + 1
        self.dir = Path(tempfile.mkdtemp(prefix="apportion-redis-sentinel-"))
        self.data_options = {
            "save": "",
            "appendonly": "yes",
            "appendfsync": fsync,
            "repl-diskless-sync-delay": "0",  # the replica syncs at once, not after 5 s
        }
        self.primary_node = RedisProcess(self.dir / "data-0", self.data_options)
        self.data_nodes = [self.primary_node] + [
            RedisProcess(self.dir / f"data-{index + 1}", self.data_options)
            for index in range(replicas)
        ]
        self.sentinel_nodes = [
            RedisProcess(self.dir / f"sentinel-{index}", [], sentinel=True)
            for index in range(sentinels)
        ]
        self.startup_seconds = 0.0
        atexit.register(self.cleanup)  # even if the session ends abnormally

    # -- addresses ---------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel."""
        return [("127.0.0.1", node.port) for node in self.sentinel_nodes]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,.../apportion``."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service}"

    def primary(self) -> RedisProcess:
        """The data node the sentinels name as primary now (a majority of those that answer)."""
        votes: dict[int, int] = {}
        for sentinel in self.sentinel_nodes:
            reply = try_command(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            if isinstance(reply, list) and len(reply) == 2 and isinstance(reply[1], str):
                port = int(reply[1])
                votes[port] = votes.get(port, 0) + 1
        if not votes:
            raise LookupError("no sentinel names a primary")
        port = max(votes, key=lambda p: votes[p])
        return next(node for node in self.data_nodes if node.port == port)

    def replicas(self) -> list[RedisProcess]:
        """The live data nodes that are replicas now."""
        return [
            node
            for node in self.data_nodes
            if node.alive()
            and info_fields(try_command(node.port, "INFO", "replication")).get("role") == "slave"
        ]

    def wait_replicated(self, timeout: float = 10.0) -> float:
        """Wait until a live replica has applied every write the primary holds; the seconds."""
        replicas = self.replicas()
        if not replicas:
            raise LookupError("no live replica")
        return wait_replicated(self.primary().port, [r.port for r in replicas], timeout)

    # -- start and stop ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> float:
        """Start the data nodes, then the sentinels; wait until all agree; return the seconds."""
        begun = time.monotonic()
        start_all([self.primary_node])
        for node in self.data_nodes[1:]:
            node.options = [
                *self.data_options.items(),
                ("replicaof", f"127.0.0.1 {self.primary_node.port}"),
            ]
        start_all(self.data_nodes[1:])
        wait_until(self._replicas_linked, timeout, "replicas linked to the primary")
        monitor = [
            (
                "sentinel monitor",
                f"{self.service} 127.0.0.1 {self.primary_node.port} {self.quorum}",
            ),
            ("sentinel down-after-milliseconds", f"{self.service} {self.down_after_ms}"),
            ("sentinel failover-timeout", f"{self.service} {self.failover_timeout_ms}"),
            ("sentinel parallel-syncs", f"{self.service} 1"),
        ]
        # Each sentinel is told up front its id, the replicas and the other sentinels (the
        # lines a sentinel writes itself when it rewrites its config), so none waits for the
        # primary's INFO or for the others' hello messages (every 2 s) to learn them.
        ids = {node.reserve_ports(): secrets.token_hex(20) for node in self.sentinel_nodes}
        replicas = [
            ("sentinel known-replica", f"{self.service} 127.0.0.1 {node.port}")
            for node in self.data_nodes[1:]
        ]
        for sentinel in self.sentinel_nodes:
            others = [
                ("sentinel known-sentinel", f"{self.service} 127.0.0.1 {port} {run_id}")
                for port, run_id in ids.items()
                if port != sentinel.port
            ]
            sentinel.options = [
                ("sentinel myid", ids[sentinel.port]),
                *monitor,
                *replicas,
                *others,
            ]
        start_all(self.sentinel_nodes)
        wait_until(self._sentinels_agree, timeout, "sentinels know the replicas and each other")
        self.startup_seconds = time.monotonic() - begun
        return self.startup_seconds

    def cleanup(self) -> None:
        """Kill every process and delete the directories."""
        for node in self.sentinel_nodes + self.data_nodes:
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _replicas_linked(self) -> bool:
        replication = info_fields(try_command(self.primary_node.port, "INFO", "replication"))
        return replication.get("connected_slaves") == str(len(self.data_nodes) - 1) and all(
            info_fields(try_command(node.port, "INFO", "replication")).get("master_link_status")
            == "up"
            for node in self.data_nodes
            if node is not self.primary_node
        )

    def _sentinels_agree(self, primary: int | None = None) -> bool:
        primary = primary or self.primary_node.port
        for sentinel in self.sentinel_nodes:
            reply = try_command(sentinel.port, "SENTINEL", "MASTER", self.service)
            if not isinstance(reply, list):
                return False
            fields = dict(zip(reply[::2], reply[1::2], strict=False))
            if (
                fields.get("port") != str(primary)
                or int(str(fields.get("num-slaves", "0"))) < len(self.data_nodes) - 1
                or int(str(fields.get("num-other-sentinels", "0"))) < len(self.sentinel_nodes) - 1
                or "s_down" in str(fields.get("flags", ""))
            ):
                return False
            # Each has read the replica's own INFO (a replica it has not cannot be promoted).
            replicas = try_command(sentinel.port, "SENTINEL", "REPLICAS", self.service)
            if not isinstance(replicas, list) or len(replicas) < len(self.data_nodes) - 1:
                return False
            for replica in replicas:
                if not isinstance(replica, list):
                    return False
                fields = dict(zip(replica[::2], replica[1::2], strict=False))
                if fields.get("master-link-status") != "ok" or fields.get("flags") != "slave":
                    return False
        return True

    # -- failures ----------------------------------------------------------------------------

    def kill_primary(self) -> RedisProcess:
        """SIGKILL the current primary; return it."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_failover(self, killed: RedisProcess, timeout: float = 30.0) -> float:
        """Wait until every sentinel names a new primary that says it is one.

        Returns:
            The seconds from the call until then (call it right after :meth:`kill_primary`
            to measure the failover).
        """

        def promoted() -> bool:
            ports = set()
            for sentinel in self.sentinel_nodes:
                reply = try_command(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                if not isinstance(reply, list) or len(reply) != 2:
                    return False
                ports.add(str(reply[1]))
            if len(ports) != 1 or ports == {str(killed.port)}:
                return False
            new = int(ports.pop())
            role = info_fields(try_command(new, "INFO", "replication")).get("role")
            return role == "master"

        return wait_until(
            promoted, timeout, f"failover from the primary on port {killed.port}", 0.02
        )

    def heal(self, timeout: float = 30.0) -> float:
        """Start every killed data node again as a replica of the current primary.

        Returns once each one's link is up and every sentinel sees it as a healthy replica
        (so another failover can promote it); the seconds it took.
        """
        begun = time.monotonic()
        primary = self.primary()
        dead = [node for node in self.data_nodes if not node.alive()]
        for node in dead:
            node.options = [*self.data_options.items(), ("replicaof", f"127.0.0.1 {primary.port}")]
        start_all(dead)

        def linked() -> bool:
            return all(
                info_fields(try_command(node.port, "INFO", "replication")).get("master_link_status")
                == "up"
                for node in dead
            )

        wait_until(linked, timeout, f"restarted nodes linked to the primary on {primary.port}")
        wait_until(
            lambda: self._sentinels_agree(primary.port),
            timeout,
            "sentinels see the restarted nodes as replicas",
        )
        return time.monotonic() - begun


def sentinel_fixture(fsync: str = "everysec") -> Iterator[RedisSentinel]:
    """The body of a fixture: a started Sentinel setup, cleaned up after."""
    setup = RedisSentinel(fsync)
    try:
        setup.start()
        yield setup
    finally:
        setup.cleanup()


@pytest.fixture(scope="module")
def redis_sentinel(request: pytest.FixtureRequest) -> Iterator[RedisSentinel]:
    """A primary, a replica and three sentinels for the module.

    ``appendfsync`` is ``everysec`` unless the module parametrizes the fixture indirectly
    with another (``always``). A test may kill the primary: the module's later tests see the
    promoted replica as primary (and no replica, unless it calls ``heal()``).
    """
    yield from sentinel_fixture(getattr(request, "param", "everysec"))
