"""The Redis store's reaper: ended leases and overdue requests in every bucket.

``reap`` reads each bucket's due requests and their trees first, then runs ``reap.lua`` on
those keys (every key it may touch declared, as Redis Cluster requires); a request due
since, or whose tree changed, is left for the next round. It then gives the closed
requests' unused tokens back to their pools and reconciles the pools' draws.
"""

from __future__ import annotations

from apportion.ledger import check_time
from apportion.stores.base import Reaped
from apportion.stores.redis.calls import _Cmd, _Eval, _Steps
from apportion.stores.redis.codec import _pool_debt, _str, _text
from apportion.stores.redis.requests import _TREE_ATTEMPTS, RedisRequests

_REAP_BATCH = 256
"""The most due requests of one bucket a round of ``reap`` reads."""


class RedisReaper(RedisRequests):
    """``reap`` in Redis (a part of :class:`~apportion.stores.redis.RedisStore`)."""

    def _reap_steps(self, now: float) -> _Steps[Reaped]:
        now = check_time("now", now)
        now_s = _text(now)
        settled = 0
        expired: list[str] = []
        owed: list[_Eval | _Cmd] = []
        todo = [f"{self.prefix}:{{b{b}}}:open" for b in range(self.buckets)]
        wanting = 0  # rounds in a row that met requests not declared
        while todo:
            # The due requests of each bucket and their trees, read first: the script gets
            # every key it may touch declared (what Redis Cluster requires).
            dues = yield [_Cmd(("ZRANGEBYSCORE", ikey, "-inf", now_s, "LIMIT", 0, _REAP_BATCH))
                          for ikey in todo]  # fmt: skip
            todo = [ikey for ikey, due in zip(todo, dues, strict=True) if due]
            if not todo:
                break
            declared: dict[str, tuple[str, str, str]] = {}
            yield from self._read_tree([_str(rid) for due in dues for rid in due], declared)
            # One script over every bucket on a standalone server (one round trip); on a
            # cluster one per bucket (its slot), sent as one pipeline.
            if self.topology == "cluster":
                groups = [[i] for i in range(len(todo))]
            else:
                groups = [list(range(len(todo)))]
            calls: list[_Eval | _Cmd] = []
            for group in groups:
                mine = {todo[i] for i in group}
                ids = [rid for rid in declared if self._keys(rid)[2] in mine]
                keys = [*(todo[i] for i in group), *(k for i in ids for k in declared[i])]
                args: tuple[str | int, ...] = (
                    "",
                    "",
                    now_s,
                    self._retention_ms,
                    _REAP_BATCH,
                    len(group),
                )
                feed = self._bucket_feed(todo[group[0]])
                calls.append(_Eval("reap", (*keys, feed), (*args, *ids)))
            replies = (yield calls) if len(calls) > 1 else [(yield calls[0])]
            again: set[int] = set()
            wanted: list[str] = []
            for group, reply in zip(groups, replies, strict=True):
                settled += int(reply[0])
                full = int(reply[1])
                again |= {group[int(k) - 1] for k in reply[2 : 2 + full]}
                at = 2 + full
                closed = int(reply[at])
                expired += (_str(rid) for rid in reply[at + 1 : at + 1 + closed])
                at += 1 + closed
                late = [_str(rid) for rid in reply[at + 1 : at + 1 + int(reply[at])]]
                wanted += late
                for blob in reply[at + 1 + len(late) :]:
                    owed.append(self._give_back(*_pool_debt(blob), now))
            if wanted:  # due since the read, or their trees changed: read them again
                wanting += 1
                if wanting >= _TREE_ATTEMPTS:
                    raise self._tree_changing(wanted[0], "reap")
                buckets = {self._keys(rid)[2] for rid in wanted}
                again |= {i for i, ikey in enumerate(todo) if ikey in buckets}
            else:
                wanting = 0
            todo = [todo[i] for i in sorted(again)]
        if owed:
            yield owed
        yield from self._reconcile_steps(now)
        return Reaped(settled, tuple(expired))
