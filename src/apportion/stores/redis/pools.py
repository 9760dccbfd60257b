"""The Redis store's shared pools: define, read, draw settlement and reconciliation.

A pool's keys share the tag ``{p:NAME}``; drawing (at open) and giving back (at close) are
scripts of their own (``pool_draw.lua``, ``pool_return.lua``), and ``reap`` reconciles the
draws a failure left unsettled (see "Pools cost one more round trip" in
:mod:`apportion.stores.redis`).
"""

from __future__ import annotations

import json
import math

from apportion.errors import UnknownPool
from apportion.ledger import check_time
from apportion.pools import Pool, PoolStatus, check_pool_name, current_window, pool_status
from apportion.stores.redis.calls import _Cmd, _Eval, _Steps
from apportion.stores.redis.codec import _closed_debt, _str, _text
from apportion.stores.redis.keys import RedisKeys
from apportion.stores.redis.transport import RedisTransport


class RedisPools(RedisKeys, RedisTransport):
    """Shared pools in Redis (a part of :class:`~apportion.stores.redis.RedisStore`)."""

    clock_skew_seconds: float
    _retention_ms: str

    def _give_back(self, pool: str, draw: str, free: int, overflow: str, now: float) -> _Eval:
        """The call that settles a draw: ``free`` tokens back to ``pool`` (exactly once)."""
        return _Eval("pool_return", self._pool_keys(pool), (draw, free, overflow, _text(now)))

    def _reconcile_steps(self, now: float) -> _Steps[None]:
        """Settle the pool draws that their requests cannot settle themselves.

        * A closed request whose give-back never ran (a crash or a cut between the close and
          the give-back): what it left unused goes back, once (as at close).
        * A draw whose request never opened (the connection cut after the draw, the process
          killed between the two steps, the server restarted), once ``now`` passes its open
          deadline by ``clock_skew_seconds``: ``pool_void.lua`` marks it void in the
          request's own slot, atomically with respect to the open (which refuses a void
          draw), then it is given back in full. Its tokens were never used, and never will be.
        * A draw whose request is open stays out until the request closes.
        """
        names = sorted(_str(n) for n in (yield _Cmd(("SMEMBERS", self._registry))))
        if not names:
            return
        tables = yield [_Cmd(("HGETALL", self._pool_keys(name)[1])) for name in names]
        entries: list[tuple[str, str, int, float]] = []  # pool, draw, tokens, open deadline
        for name, table in zip(names, tables, strict=True):
            for draw, value in table.items():
                _, count, *due = _str(value).split("|")  # window charged|tokens|deadline
                deadline = float(due[0]) if due else -math.inf  # older records have none
                entries.append((name, _str(draw), int(count), deadline))
        if not entries:
            return
        states = yield [
            _Cmd(("GET", self._keys(draw.rsplit("#", 1)[0])[0])) for _, draw, _, _ in entries
        ]
        calls: list[_Eval | _Cmd] = []
        lapsed: list[tuple[str, str, int]] = []
        for (name, draw, tokens, deadline), raw in zip(entries, states, strict=True):
            opened_with, debt = ("", None) if raw is None else _closed_debt(raw)
            if opened_with == draw:
                if debt is not None:
                    calls.append(self._give_back(*debt, now))
            elif now >= deadline + self.clock_skew_seconds:
                lapsed.append((name, draw, tokens))
        if lapsed:
            replies = yield [
                _Eval(
                    "pool_void",
                    (self._keys(draw.rsplit("#", 1)[0])[0], self._marker_key(draw)),
                    (draw, self._retention_ms),
                )
                for _, draw, _ in lapsed
            ]
            for (name, draw, tokens), reply in zip(lapsed, replies, strict=True):
                if _str(reply[0]) == "void":
                    calls.append(self._give_back(name, draw, tokens, "0", now))
                elif (debt := _closed_debt(reply[1])[1]) is not None:
                    calls.append(self._give_back(*debt, now))
        if calls:
            yield calls

    # ------------------------------------------------------------------ pools

    def _define_steps(self, pool: Pool) -> _Steps[None]:
        if not isinstance(pool, Pool):
            raise TypeError(f"define_pool takes an apportion.pools.Pool, not {pool!r}")
        key = self._pool_keys(pool.name)[0]
        yield [
            _Cmd(
                (
                    "HSET",
                    key,
                    "name",
                    pool.name,
                    "capacity",
                    pool.capacity,
                    "window_seconds",
                    _text(pool.window_seconds),
                    "reserve",
                    json.dumps(dict(pool.reserve)),
                )
            ),
            _Cmd(("SADD", self._registry, pool.name)),
        ]

    def _pool_steps(self, name: str, now: float) -> _Steps[PoolStatus]:
        now = check_time("now", now)
        pool_key, draws_key = self._pool_keys(check_pool_name(name))
        fields, draws = yield [_Cmd(("HGETALL", pool_key)), _Cmd(("HVALS", draws_key))]
        if not fields:
            raise UnknownPool(name)
        f = {_str(k): _str(v) for k, v in fields.items()}
        pool = Pool(name, int(f["capacity"]), float(f["window_seconds"]), json.loads(f["reserve"]))
        window = int(f["window"]) if "window" in f else None
        current = current_window(pool, window, now)
        open_draws = sum(1 for d in draws if int(_str(d).split("|", 1)[0]) == current)
        return pool_status(
            pool,
            window,
            int(f.get("drawn", 0)),
            open_draws,
            int(f.get("overflow", 0)),
            now,
            int(f.get("returned", 0)),
        )

    def define_pool(self, pool: Pool) -> None:
        """Create a shared pool, or change its configuration (keeping what is drawn)."""
        self._run(self._define_steps(pool))

    def get_pool(self, name: str, now: float) -> PoolStatus:
        """A shared pool's status at ``now``."""
        return self._run(self._pool_steps(name, now))

    async def adefine_pool(self, pool: Pool) -> None:
        """Async :meth:`define_pool`."""
        await self._arun(self._define_steps(pool))

    def _names_steps(self, prefix: str) -> _Steps[list[str]]:
        names = yield _Cmd(("SMEMBERS", self._registry))
        return sorted(n for n in (_str(m) for m in names) if n.startswith(prefix))

    def pool_names(self, prefix: str = "") -> list[str]:
        """The names of the defined pools that start with ``prefix``, sorted."""
        return self._run(self._names_steps(prefix))

    async def apool_names(self, prefix: str = "") -> list[str]:
        """Async :meth:`pool_names`."""
        return await self._arun(self._names_steps(prefix))

    async def aget_pool(self, name: str, now: float) -> PoolStatus:
        """Async :meth:`get_pool`."""
        return await self._arun(self._pool_steps(name, now))
