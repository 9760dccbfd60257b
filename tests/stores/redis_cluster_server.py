"""A real Redis Cluster for the tests: three primaries and three replicas on loopback ports.

Each node is a ``redis-server --cluster-enabled yes`` in a directory of its own, with its own
``cluster-config-file`` and an explicit ``cluster-port`` (a free port: ``port + 10000`` may
not exist for an ephemeral port). The nodes start in parallel; ``redis-cli --cluster create``
assigns the slots and the replicas, and :meth:`RedisCluster.start` returns once every node
says ``cluster_state:ok``, knows every other node, and every replica's link to its primary
is up. Everything is killed and deleted at :meth:`RedisCluster.cleanup` (and at exit).

``cluster-node-timeout`` is short (1 s by default), so a killed primary's replica takes over
within a few seconds: :meth:`RedisCluster.kill_primary` and :meth:`RedisCluster.wait_failover`
are what a failover test needs, and :meth:`RedisCluster.heal` brings the killed nodes back
(as replicas) so the next test sees three primaries with one replica each again.

Measured here (2 cores, load average 11): start about 2.2 s (1 s of it is ``redis-cli``
waiting for the nodes to join), a failover about 2.4 s, a heal about 0.15 s.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis_process import (
    RedisCommandError,
    RedisProcess,
    binary,
    info_fields,
    start_all,
    try_command,
    wait_replicated,
    wait_until,
)

SLOTS = 16384


def key_slot(key: str | bytes) -> int:
    """The hash slot of a key (CRC16 of its hash tag, mod 16384), as the cluster computes it."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % SLOTS


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES`` as a live node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        """Whether it is a primary (``master`` flag)."""
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        """Whether the cluster has marked it failed (``fail`` flag)."""
        return "fail" in self.flags


def _parse_nodes(text: str) -> list[NodeView]:
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0]
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        views.append(
            NodeView(
                node_id=fields[0],
                port=int(address.rsplit(":", 1)[1]),
                flags=frozenset(fields[2].split(",")),
                primary_id=None if fields[3] == "-" else fields[3],
                slots=tuple(slots),
            )
        )
    return views


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each.

    Args:
        primaries: how many primaries (at least 3, as ``redis-cli --cluster create`` wants).
        replicas: replicas per primary.
        appendonly: whether the nodes write an AOF (off unless asked).
        fsync: the AOF's ``appendfsync`` when ``appendonly``.
        node_timeout_ms: ``cluster-node-timeout``: how soon a silent primary counts as failed.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        appendonly: bool = False,
        fsync: str = "everysec",
        node_timeout_ms: int = 1000,
    ) -> None:
        binary("redis-server")
        self.cli = binary("redis-cli")
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.dir = Path(tempfile.mkdtemp(prefix="apportion-redis-cluster-"))
        options = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-port": "{port1}",
            "cluster-node-timeout": str(node_timeout_ms),
            "save": "",
            "appendonly": "yes" if appendonly else "no",
            "appendfsync": fsync,
            "repl-diskless-sync-delay": "0",  # replicas sync at once, not after 5 s
        }
        self.nodes = [
            RedisProcess(self.dir / f"node-{index}", options, extra_ports=1)
            for index in range(primaries * (1 + replicas))
        ]
        self.startup_seconds = 0.0
        atexit.register(self.cleanup)  # even if the session ends abnormally

    # -- addresses ---------------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, as started (dead ones too)."""
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT`` of the first live node (a seed for clients)."""
        return f"redis+cluster://127.0.0.1:{self.live_nodes()[0].port}"

    @property
    def urls(self) -> list[str]:
        """``redis+cluster://`` seed URLs of every live node."""
        return [f"redis+cluster://127.0.0.1:{node.port}" for node in self.live_nodes()]

    def live_nodes(self) -> list[RedisProcess]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.alive()]

    def node_at(self, port: int) -> RedisProcess:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    # -- start and stop ----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> float:
        """Start every node, create the cluster, wait until it is whole; return the seconds."""
        begun = time.monotonic()
        start_all(self.nodes)
        argv = [self.cli, "--cluster", "create"]
        argv += [f"127.0.0.1:{node.port}" for node in self.nodes]
        argv += ["--cluster-replicas", str(self.replicas_count), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        self.wait_healthy(timeout=timeout)
        self.startup_seconds = time.monotonic() - begun
        return self.startup_seconds

    def cleanup(self) -> None:
        """Kill every node and delete their directories."""
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- topology ----------------------------------------------------------------------------

    def view(self, via: RedisProcess | None = None) -> list[NodeView]:
        """``CLUSTER NODES`` as one live node (the first, unless given) sees it."""
        node = via or self.live_nodes()[0]
        reply = node.command("CLUSTER", "NODES")
        assert isinstance(reply, str)
        return _parse_nodes(reply)

    def primaries(self) -> list[RedisProcess]:
        """The live nodes that are primaries now."""
        return [node for node in self.live_nodes() if self._role(node) == "master"]

    def replicas(self) -> list[RedisProcess]:
        """The live nodes that are replicas now."""
        return [node for node in self.live_nodes() if self._role(node) == "slave"]

    def owner(self, slot_or_key: int | str | bytes) -> RedisProcess:
        """The primary that serves a slot (or a key's slot) now, as the live nodes agree."""
        slot = slot_or_key if isinstance(slot_or_key, int) else key_slot(slot_or_key)
        for view in self.view():
            serves = any(low <= slot <= high for low, high in view.slots)
            if view.is_primary and not view.failed and serves:
                return self.node_at(view.port)
        raise LookupError(f"no live primary serves slot {slot}")

    def slots_of(self, node: RedisProcess) -> tuple[tuple[int, int], ...]:
        """The slot ranges a node serves now, as the live nodes see it."""
        for view in self.view():
            if view.port == node.port:
                return view.slots
        raise KeyError(node.port)

    def replicas_of(self, primary: RedisProcess) -> list[RedisProcess]:
        """The live replicas of a primary."""
        views = self.view()
        ids = {view.port: view.node_id for view in views}
        return [
            self.node_at(view.port)
            for view in views
            if view.primary_id == ids[primary.port]
            and not view.failed
            and self.node_at(view.port).alive()
        ]

    def _role(self, node: RedisProcess) -> str:
        return info_fields(node.command("INFO", "replication")).get("role", "")

    def healthy(self) -> bool:
        """Whether the live nodes agree on a whole cluster.

        Every live node says ``cluster_state:ok`` with every slot served, knows every node,
        marks no live node failed, and sees each live node in the role that node reports
        itself (``INFO replication``): the primaries with slots, each replica following the
        primary it replicates, whose link is up. When every node lives, every primary has
        its ``replicas`` replicas.
        """
        live = self.live_nodes()
        roles: dict[int, int | None] = {}  # port -> its primary's port (None: a primary)
        for node in live:
            replication = info_fields(try_command(node.port, "INFO", "replication"))
            if replication.get("role") == "master":
                roles[node.port] = None
            elif replication.get("master_link_status") == "up":
                roles[node.port] = int(replication["master_port"])
            else:
                return False
        primaries = [port for port, primary in roles.items() if primary is None]
        if len(primaries) != self.primaries_count:
            return False
        if len(live) == len(self.nodes):
            followers = list(roles.values())
            if any(followers.count(port) != self.replicas_count for port in primaries):
                return False
        for node in live:
            info = info_fields(try_command(node.port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            reply = try_command(node.port, "CLUSTER", "NODES")
            if not isinstance(reply, str):
                return False
            views = {view.port: view for view in _parse_nodes(reply)}
            if len(views) != len(self.nodes):
                return False  # it does not know every node yet
            ports = {view.node_id: port for port, view in views.items()}
            for port, primary in roles.items():
                view = views.get(port)
                if view is None or view.failed:
                    return False  # a restarted node not yet cleared
                if primary is None and not (view.is_primary and view.slots):
                    return False
                if primary is not None and (
                    view.is_primary or ports.get(view.primary_id or "") != primary
                ):
                    return False
        return True

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Wait until :meth:`healthy`; return the seconds it took."""
        return wait_until(self.healthy, timeout, f"Redis Cluster in {self.dir} healthy", 0.05)

    # -- failures ----------------------------------------------------------------------------

    def kill_primary(self, slot_or_key: int | str | bytes = 0) -> RedisProcess:
        """SIGKILL the primary serving a slot (or key); return it (its replica will take over)."""
        primary = self.owner(slot_or_key)
        if not self.replicas_of(primary):
            raise RuntimeError(f"the primary on port {primary.port} has no replica to fail over to")
        primary.kill()
        return primary

    def wait_failover(self, killed: RedisProcess, timeout: float = 30.0) -> float:
        """Wait until a live replica has taken over every slot ``killed`` served.

        Returns:
            The seconds from the call until the cluster is ``ok`` again on every live node.
        """
        return wait_until(
            lambda: not killed.alive() and self._failed_over(killed),
            timeout,
            f"failover from the primary on port {killed.port}",
            0.05,
        )

    def _failed_over(self, killed: RedisProcess) -> bool:
        for node in self.live_nodes():
            info = info_fields(try_command(node.port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok":
                return False
            reply = try_command(node.port, "CLUSTER", "NODES")
            if not isinstance(reply, str):
                return False
            for view in _parse_nodes(reply):
                if view.port == killed.port and view.slots:
                    return False  # this node still routes slots to the dead one
        return True

    def heal(self, timeout: float = 30.0) -> float:
        """Restart every killed node (it rejoins as a replica) and wait until healthy."""
        begun = time.monotonic()
        dead = [node for node in self.nodes if not node.alive()]
        if dead:
            start_all(dead)
        self.wait_healthy(timeout)
        return time.monotonic() - begun

    def flushall(self) -> None:
        """Delete every key on every primary."""
        for node in self.primaries():
            try:
                node.command("FLUSHALL")
            except RedisCommandError as error:  # pragma: no cover - a replica mid-promotion
                raise RuntimeError(f"FLUSHALL on port {node.port}: {error}") from error

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until every primary's replicas have applied every write it holds."""
        for node in self.primaries():
            wait_replicated(node.port, [r.port for r in self.replicas_of(node)], timeout)


_SHARED = pytest.StashKey[RedisCluster]()


def shared_cluster(config: pytest.Config) -> RedisCluster:
    """The session's one cluster: started on first use, cleaned up when pytest ends.

    Kept in the pytest config rather than in a fixture's cache, so test modules that each
    import the ``redis_cluster`` fixture (each import registers a fixture of its own) still
    share one cluster instead of starting one per module.
    """
    cluster = config.stash.get(_SHARED, None)
    if cluster is None:
        cluster = RedisCluster()
        try:
            cluster.start()
        except BaseException:
            cluster.cleanup()
            raise
        config.stash[_SHARED] = cluster
        config.add_cleanup(cluster.cleanup)
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(request: pytest.FixtureRequest) -> RedisCluster:
    """One 3-primary, 3-replica Redis Cluster for the session.

    A test that kills a node calls ``redis_cluster.heal()`` after (or uses
    ``healed_redis_cluster``); a test that needs empty nodes calls ``flushall()``.
    """
    return shared_cluster(request.config)


@pytest.fixture
def healed_redis_cluster(redis_cluster: RedisCluster) -> Iterator[RedisCluster]:
    """The session's cluster, whole before the test and again (killed nodes back) after."""
    redis_cluster.wait_healthy()
    try:
        yield redis_cluster
    finally:
        redis_cluster.heal()
