"""The Redis store's transport: connections, and the calls of an operation carried out.

:class:`RedisTransport` holds the connections to one Redis server and carries out the
steps of an operation (:mod:`apportion.stores.redis.calls`): with blocking I/O on a
connection each thread keeps of its own (no pool checkout per call; ``hiredis``, in the
extra, parses replies in C), or with awaited I/O on an async client per event loop. A
script the server lost is loaded again and run once more; a connection failure raises
:class:`~apportion.errors.StoreUnavailable` with the URL (never its password) and the
reason (:class:`~apportion.errors.StoreOutcomeUnknown` when the call was sent: it may have
been applied), and nothing is retried behind the caller's back.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from apportion.errors import (
    ApportionError,
    InvalidArgument,
    MissingExtra,
    StoreOutcomeUnknown,
    StoreUnavailable,
)
from apportion.redaction import scrub
from apportion.stores.redis.calls import T, _Call, _Cmd, _Eval, _Pause, _Steps
from apportion.stores.redis.codec import _str, import_msgpack
from apportion.stores.redis.scripts import _FUNCTIONS, _LIBRARY, _SHAS, _SOURCES, SCRIPTS
from apportion.stores.redis.url import sentinel_parts, topology_of

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async


def _reason(exc: BaseException) -> str:
    """The first line of an error's message (or its type's name)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _import_redis() -> Any:
    """The ``redis`` module (redis-py), or :class:`~apportion.errors.MissingExtra`."""
    try:
        import redis
        import redis.asyncio
        import redis.asyncio.cluster
        import redis.asyncio.sentinel
        import redis.cluster
        import redis.sentinel
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise MissingExtra("redis", "redis") from exc
    import_msgpack()  # the stored ledgers' format
    return redis


def _packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """The command packer of hiredis (in C; redis-py encodes each argument in Python), or None."""
    try:
        import hiredis
    except ImportError:  # pragma: no cover - the extra installs it
        return None
    return hiredis.pack_command


class RedisTransport:
    """Connections to one Redis server, and the shells that carry out an operation's calls.

    The store calls :meth:`_connect` once, from its constructor.
    """

    url: str
    """The server's URL, its password redacted."""
    round_trips: int
    """Round trips to Redis so far (one per script call or pipeline)."""

    def _connect(self, url: str, socket_timeout: float, connect_timeout: float) -> None:
        """Set up the clients of ``url`` (no I/O: connections open on first use).

        Raises:
            InvalidArgument: redis-py cannot read ``url``.
        """
        redis = _import_redis()
        self._pack = _packer()
        self.topology, plain = topology_of(url)
        self._raw_url = plain
        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        }
        self._cluster: Any = None  # the cluster client, made on first use (it connects)
        self._cluster_lock = threading.Lock()
        self._mode_checked = False  # whether the server's kind was checked against the URL
        self._client: redis_sync.Redis
        try:
            if self.topology == "sentinel":  # the primary the sentinels name (no I/O yet)
                sentinels, service, primary = sentinel_parts(url)
                self._sentinel = (sentinels, service, primary)
                self._client = redis.sentinel.Sentinel(
                    sentinels, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
                ).master_for(service, **self._options, **primary)
            else:
                # a standalone client reads the URL (no I/O): for a cluster, only to check it
                self._client = redis.Redis.from_url(plain, **self._options)
            pool: Any = self._client.connection_pool
            pool.connection_class(**pool.connection_kwargs)  # reads its options; no I/O
        except (ValueError, TypeError) as exc:
            reason = f"redis-py cannot read it: {scrub(_reason(exc), url)}"
            raise InvalidArgument("url", self.url, reason) from None
        if self.topology == "cluster" and int(pool.connection_kwargs.get("db") or 0) != 0:
            raise InvalidArgument("url", self.url, "a Redis Cluster has database 0 only")
        self._aclient: redis_async.Redis | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._acloser: AsyncGenerator[None, None] | None = None
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.ClusterError,  # a cluster electing, or its slots moving
        )
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._response_error: type[BaseException] = redis.exceptions.ResponseError
        self._functions = True  # the library and FCALL; False: scripts (no Redis Functions)
        self._held = threading.local()  # each thread's own connection: (pid, connection)
        self.round_trips = 0

    def close_connections(self) -> None:
        """Close this thread's and the pool's connections (the store reconnects on use)."""
        held = getattr(self._held, "connection", None)
        if held is not None:
            held[1].disconnect()
            self._held.connection = None
        self._client.close()
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.close()

    def _cluster_client(self) -> Any:
        """The Redis Cluster client (made on first use: it reads the cluster's slots).

        Raises:
            InvalidArgument: the URL names a cluster and the server is a standalone one.
            StoreUnavailable: no node of the URL can be reached.
        """
        if self._cluster is not None:
            return self._cluster
        with self._cluster_lock:
            if self._cluster is None:
                redis = _import_redis()
                try:
                    self._cluster = redis.cluster.RedisCluster.from_url(
                        self._raw_url, **self._options
                    )
                except redis.exceptions.RedisClusterException as exc:
                    raise self._cluster_refused(exc) from None
                except self._errors as exc:
                    raise StoreUnavailable(self.url, scrub(_reason(exc), self._raw_url)) from None
        return self._cluster

    def _cluster_refused(self, exc: BaseException) -> ApportionError:
        """The error of a cluster client that could not start (a standalone server?)."""
        reason = scrub(_reason(exc), self._raw_url)
        if "not enabled" in reason:
            return InvalidArgument(
                "url",
                self.url,
                "the URL names a Redis Cluster (redis+cluster://) but the server is a "
                "standalone Redis (cluster support disabled): use redis://",
            )
        return StoreUnavailable(self.url, reason)

    def _check_standalone(self, info: Any) -> None:
        """Refuse a plain URL whose server is a cluster node (``INFO cluster`` says)."""
        text = _str(info) if isinstance(info, (bytes, str)) else str(info)
        if "cluster_enabled:1" in text or "'cluster_enabled': 1" in text:
            raise InvalidArgument(
                "url",
                self.url,
                "the server is a Redis Cluster node (cluster_enabled:1) but the URL names a "
                "standalone server: use redis+cluster://",
            )
        self._mode_checked = True

    def durability(self) -> str:
        """What a crash of the Redis server can take back of what it acknowledged.

        Reads the server's ``appendonly`` and ``appendfsync`` (``CONFIG GET append*``, one
        round trip); see "Durability" in :mod:`apportion.stores.redis` for what each loses.

        On a Redis Cluster every primary is asked, and the weakest answer is the cluster's
        (one primary without an AOF makes it ``"off"``).

        Returns:
            ``"always"``, ``"everysec"`` or ``"no"``: the AOF is on with that
            ``appendfsync``; ``"off"``: no AOF (a restart keeps at most the last RDB
            snapshot); ``"unknown"``: the server refused ``CONFIG``, as managed services
            often do (ask its operator).

        Raises:
            StoreUnavailable: the server cannot be reached.
        """
        args = ("CONFIG", "GET", "append*")
        try:
            if self.topology != "cluster":
                replies = [self._call(_Cmd(args))]
            else:
                client = self._cluster_client()
                on = client.execute_command(*args, target_nodes=client.PRIMARIES)
                replies = list(on.values())
        except self._response_error:
            return "unknown"
        except self._errors as exc:  # the cluster's (``_call`` raises StoreUnavailable)
            raise self._unavailable(exc) from None
        return min((_durability_of(r) for r in replies), key=_WEAKEST_FIRST.index)

    def _connection(self) -> Any:
        """This thread's own connection (no pool checkout per call: the hot path)."""
        held = getattr(self._held, "connection", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        pool: Any = self._client.connection_pool
        connection = pool.connection_class(**{**pool.connection_kwargs, "decode_responses": False})
        self._held.connection = (os.getpid(), connection)
        return connection

    def _command(self, *args: Any) -> Any:
        """Send one command on this thread's connection and read its reply."""
        if self.topology == "cluster":
            return self._cluster_client().execute_command(*args)
        if not self._mode_checked:
            self._ensure_standalone()
        connection = self._connection()
        if connection._sock is not None:
            try:
                stale = connection.can_read()  # data before we asked: closed or out of step
            except Exception:  # a broken socket: start afresh
                stale = True
            if stale:
                connection.disconnect()
        if connection._sock is None and self.topology == "sentinel":
            connection.connect()  # asks the sentinels for the primary (sending would not)
        packed = self._packed(args)
        try:
            if packed is None:
                connection.send_command(*args)
            else:
                connection.send_packed_command([packed])
            return connection.read_response()
        except self._response_error:
            raise  # a reply: the connection is in step
        except BaseException:
            connection.disconnect()
            raise

    def _call(self, call: _Call) -> Any:
        if isinstance(call, _Pause):
            time.sleep(call.seconds)
            return None
        self.round_trips += 1
        try:
            if isinstance(call, list):
                return self._pipeline(call)
            if isinstance(call, _Cmd):
                return self._command(*call.args)
            try:
                return self._command(*self._invocation(call))
            except self._response_error as exc:
                if not self._lacks(exc):
                    raise
                self.round_trips += 2
                self._load_all()
                return self._command(*self._invocation(call))
        except self._errors as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The error of a failed call: its outcome is unknown unless it failed to connect."""
        reason = scrub(_reason(exc), self._raw_url)
        if "connecting to" in str(exc):  # nothing was sent
            return StoreUnavailable(self.url, reason)
        return StoreOutcomeUnknown(self.url, reason)

    def _pipeline(self, calls: list[_Eval | _Cmd]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._sync_pipeline()
            for i in todo:
                pipe.execute_command(*self._queued(calls[i]))
            replies = pipe.execute(raise_on_error=False)
            retry = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, self._response_error) and attempt == 0 and self._lacks(reply):
                    retry.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not retry:
                break
            self.round_trips += 2
            self._load_all()
            todo = retry
        return results

    def _sync_pipeline(self) -> Any:
        """A pipeline (no transaction): a cluster's sends each node its commands."""
        if self.topology == "cluster":
            return self._cluster_client().pipeline()
        if not self._mode_checked:
            self._ensure_standalone()
        return self._client.pipeline(transaction=False)

    def _ensure_standalone(self) -> None:
        """Read ``INFO cluster`` once: a plain URL on a cluster node is refused."""
        self._mode_checked = True  # the check's own command passes
        try:
            self._check_standalone(self._command("INFO", "cluster"))
        except BaseException:
            self._mode_checked = False
            raise

    def _packed(self, command: tuple[Any, ...]) -> bytes | None:
        """``command`` in Redis's protocol, packed by hiredis; None: let redis-py pack it.

        None without hiredis, or for a value hiredis does not take (redis-py then encodes
        it, or refuses it with its own error).
        """
        if self._pack is None:
            return None
        try:
            return self._pack(command)
        except TypeError:
            return None

    def _invocation(self, call: _Eval) -> tuple[Any, ...]:
        """The command that runs ``call``: ``FCALL`` of its function, or ``EVALSHA``."""
        code = _FUNCTIONS[call.script] if self._functions else _SHAS[call.script]
        return (
            "FCALL" if self._functions else "EVALSHA",
            code,
            len(call.keys),
            *call.keys,
            *call.args,
        )

    def _queued(self, call: _Eval | _Cmd) -> tuple[Any, ...]:
        """The command of one call of a pipeline."""
        return call.args if isinstance(call, _Cmd) else self._invocation(call)

    def _lacks(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the server lacks the code: load it and call again.

        A server never given it, flushed, or a replica just promoted lacks it. A server
        without Redis Functions (before Redis 7) refuses ``FCALL`` as an unknown command,
        and an ACL may refuse it: from then on the store runs scripts (loaded the same
        way).
        """
        text = str(exc)
        said = text.lower()
        if self._functions and "fcall" in said and ("unknown command" in said or "no perm" in said):
            self._functions = False
            return True
        return isinstance(exc, self._noscript) or text.startswith("Function not found")

    def _loaders(self) -> list[tuple[Any, ...]]:
        """The commands that load every operation: the library, or each script.

        ``FUNCTION LOAD`` and ``SCRIPT LOAD`` go to every primary of a cluster.
        """
        if self._functions:
            return [("FUNCTION", "LOAD", "REPLACE", _LIBRARY[0])]
        return [("SCRIPT", "LOAD", _SOURCES[name]) for name in SCRIPTS]

    def _load_all(self) -> None:
        """Load every operation's code; scripts from now on when the library is refused.

        ``FUNCTION LOAD`` refused (an ACL without it, a proxy that passes scripts only):
        the store runs scripts.
        """
        try:
            self._send_loaders()
        except self._response_error:
            if not self._functions:
                raise
            self._functions = False
            self._send_loaders()

    def _send_loaders(self) -> None:
        if self.topology == "cluster":  # one by one: each goes to every primary
            for loader in self._loaders():
                self._command(*loader)
            return
        pipe: Any = self._client.pipeline(transaction=False)
        for loader in self._loaders():
            pipe.execute_command(*loader)
        pipe.execute()

    def _run(self, steps: _Steps[T]) -> T:
        """Carry out an operation's calls with blocking I/O."""
        try:
            call = next(steps)
            while True:
                call = steps.send(self._call(call))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _async_client(self) -> redis_async.Redis:
        """The async client of the running event loop (a client is bound to its loop)."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            redis = _import_redis()
            options = {
                **self._options,
                "retry": redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
            }
            client: Any
            if self.topology == "sentinel":
                sentinels, service, primary = self._sentinel
                client = redis.asyncio.sentinel.Sentinel(
                    sentinels,
                    socket_timeout=self._options["socket_timeout"],
                    socket_connect_timeout=self._options["socket_connect_timeout"],
                ).master_for(service, **options, **primary)
            elif self.topology == "cluster":
                client = redis.asyncio.cluster.RedisCluster.from_url(self._raw_url, **options)
                try:
                    await client.initialize()  # reads the slots (refused by a standalone)
                except redis.exceptions.RedisClusterException as exc:
                    await client.aclose()
                    raise self._cluster_refused(exc) from None
                except self._errors as exc:
                    await client.aclose()
                    raise StoreUnavailable(self.url, scrub(_reason(exc), self._raw_url)) from None
            else:
                client = redis.asyncio.Redis.from_url(self._raw_url, **options)
                if not self._mode_checked:
                    try:
                        self._check_standalone(await client.execute_command("INFO", "cluster"))
                    except self._errors as exc:
                        await client.aclose()
                        raise self._unavailable(exc) from None
                    except BaseException:
                        await client.aclose()
                        raise
            # closed when the loop shuts its async generators down (asyncio.run does)
            self._acloser = _close_at_shutdown(client)
            await self._acloser.__anext__()
            self._aclient, self._aloop = client, loop
        assert self._aclient is not None
        return self._aclient

    async def _acall(self, call: _Call) -> Any:
        if isinstance(call, _Pause):
            await asyncio.sleep(call.seconds)
            return None
        client: Any = await self._async_client()
        self.round_trips += 1
        try:
            if isinstance(call, list):
                return await self._apipeline(client, call)
            if isinstance(call, _Cmd):
                return await client.execute_command(*call.args)
            try:
                return await self._aevaluate(client, call)
            except self._response_error as exc:
                if not self._lacks(exc):
                    raise
                self.round_trips += 2
                await self._aload_all(client)
                return await self._aevaluate(client, call)
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def _aevaluate(self, client: Any, call: _Eval) -> Any:
        """Run one operation's code on a pooled connection, its command packed by hiredis.

        The hot path of the async shell: redis-py's ``execute_command`` would encode every
        argument in Python and wrap the call in its retry and timing layers (the store
        retries by itself, with operation ids). A cluster's client routes by itself.
        """
        command = self._invocation(call)
        packed = None if self.topology == "cluster" else self._packed(command)
        if packed is None:
            return await client.execute_command(*command)
        pool = client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command([packed])
            return await connection.read_response()
        except self._response_error:
            raise  # a reply: the connection is in step
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _apipeline(self, client: Any, calls: list[_Eval | _Cmd]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline() if self.topology == "cluster" else client.pipeline(False)
            for i in todo:
                pipe.execute_command(*self._queued(calls[i]))
            replies = await pipe.execute(raise_on_error=False)
            retry = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, self._response_error) and attempt == 0 and self._lacks(reply):
                    retry.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not retry:
                break
            self.round_trips += 2
            await self._aload_all(client)
            todo = retry
        return results

    async def _aload_all(self, client: Any) -> None:
        """:meth:`_load_all` with awaited I/O."""
        try:
            await self._asend_loaders(client)
        except self._response_error:
            if not self._functions:
                raise
            self._functions = False
            await self._asend_loaders(client)

    async def _asend_loaders(self, client: Any) -> None:
        if self.topology == "cluster":  # one by one: each goes to every primary
            for command in self._loaders():
                await client.execute_command(*command)
            return
        loader = client.pipeline(transaction=False)
        for command in self._loaders():
            loader.execute_command(*command)
        await loader.execute()

    async def _arun(self, steps: _Steps[T]) -> T:
        """Carry out an operation's calls with awaited I/O."""
        try:
            call = next(steps)
            while True:
                call = steps.send(await self._acall(call))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


async def _close_at_shutdown(client: Any) -> AsyncGenerator[None, None]:
    """Close ``client`` when its event loop shuts its async generators down."""
    try:
        yield
    finally:
        await client.aclose()


_WEAKEST_FIRST = ("unknown", "off", "no", "everysec", "always")
"""The answers of :meth:`RedisTransport.durability`, what a crash may take back the most first."""


def _durability_of(reply: Any) -> str:
    """One server's ``CONFIG GET append*`` reply as a :meth:`durability` answer."""
    if isinstance(reply, dict):  # RESP3, or a cluster node's
        pairs = list(reply.items())
    else:
        pairs = list(zip(reply[::2], reply[1::2], strict=True))
    config = {_str(key): _str(value).lower() for key, value in pairs}
    if config.get("appendonly") == "no":
        return "off"
    fsync = config.get("appendfsync")
    return fsync if config.get("appendonly") == "yes" and fsync in _WEAKEST_FIRST else "unknown"
