"""The Redis store's event feed and open-request listing.

The feed is one stream per prefix, ``PREFIX:feed``: every request script adds each event
it records to it (``XADD ... MAXLEN ~ 100000``) in the same step as the change, with the
request's state after it; :meth:`RedisFeed.feed` reads it with ``XREAD`` (``BLOCK`` while
waiting) and ``note`` adds a feed-only event (``note.lua``). On a Redis Cluster the feed is
one stream per bucket (``PREFIX:{bN}:feed``, in the slot of the requests it carries), its
entries stamped with the server's clock in microseconds: a read takes every bucket's
stream (one pipeline) and merges them by entry id, then bucket (cursor ``U-S-B``), and a
waiting read polls. ``open_requests`` reads the buckets' ``open`` indexes (one pipeline),
never the keys.
"""

from __future__ import annotations

import re
from typing import Any

from apportion.errors import InvalidArgument
from apportion.ledger import Event
from apportion.stores.feed import FeedEvent, FeedPage, check_feed_args, check_note
from apportion.stores.redis.calls import _OK, _Cmd, _Eval, _Pause, _Steps
from apportion.stores.redis.codec import _bytes, _event, _str, _text
from apportion.stores.redis.keys import RedisKeys
from apportion.stores.redis.refusals import _refusal
from apportion.stores.redis.transport import RedisTransport

_STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_CLUSTER_CURSOR = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}(-[0-9]{1,7})?$")
"""A cluster feed's cursor: an entry id and its bucket (``U-S-B``), or ``U-S`` (every bucket)."""
_POLL_SECONDS = 0.05
"""How often a waiting read of a cluster's feed reads its streams again."""


class RedisFeed(RedisKeys, RedisTransport):
    """The event feed in Redis (a part of :class:`~apportion.stores.redis.RedisStore`)."""

    def _feed_steps(
        self, after: object, prefix: object, limit: object, timeout: object
    ) -> _Steps[FeedPage]:
        start, prefix, limit, seconds = check_feed_args(after, prefix, limit, timeout)
        start = "0-0" if start is None else start
        if self.topology == "cluster":
            return (yield from self._cluster_feed_steps(start, prefix, limit, seconds))
        if not _STREAM_ID.match(start):
            raise InvalidArgument("after", start, "a cursor this feed returned")
        args: tuple[str | int, ...] = ("XREAD", "COUNT", limit)
        if seconds > 0:  # a blocked read must end before the socket's timeout
            wait = min(seconds, self._options["socket_timeout"] * 0.8)
            args += ("BLOCK", max(1, int(wait * 1000)))
        reply = yield _Cmd((*args, "STREAMS", self._feed_key, start))
        events: list[FeedEvent] = []
        cursor = start
        for entry_id, fields in _stream_entries(reply):
            cursor = entry_id
            if _str(fields[b"r"]).startswith(prefix):
                events.append(_feed_event(entry_id, fields))
        return FeedPage(tuple(events), cursor)

    def _cluster_feed_steps(
        self, start: str, prefix: str, limit: int, seconds: float
    ) -> _Steps[FeedPage]:
        """The feed of a cluster: every bucket's stream read (one pipeline), merged.

        Entries are ordered by their id (the server's clock in microseconds, then a
        sequence) and then by bucket; a cursor ``U-S-B`` is the last one read. A read
        that waits polls the streams every ``_POLL_SECONDS`` (a blocking ``XREAD`` cannot
        span slots).
        """
        if not _CLUSTER_CURSOR.match(start):
            raise InvalidArgument("after", start, "a cursor this feed returned")
        parts = [int(part) for part in start.split("-")]
        micros, seq, last = parts[0], parts[1], parts[2] if len(parts) > 2 else self.buckets
        reads: list[_Eval | _Cmd] = [
            _Cmd(("XRANGE", stream, f"({micros}-{seq}" if b <= last else f"{micros}-{seq}",
                  "+", "COUNT", limit))
            for b, stream in enumerate(self._feeds)
        ]  # fmt: skip
        polls = 0
        if seconds > 0:  # a waiting read ends before the socket's timeout, as XREAD's
            wait = min(seconds, self._options["socket_timeout"] * 0.8)
            polls = max(1, int(wait / _POLL_SECONDS))
        while True:
            replies = yield reads
            merged = [
                (_entry_key(entry_id, b), fields)
                for b, reply in enumerate(replies)
                for entry_id, fields in _range_entries(reply)
            ]
            if merged or polls <= 0:
                break
            polls -= 1
            yield _Pause(_POLL_SECONDS)
        merged.sort(key=lambda item: item[0])
        events: list[FeedEvent] = []
        cursor = start
        for key, fields in merged[:limit]:
            cursor = "-".join(map(str, key))
            if _str(fields[b"r"]).startswith(prefix):
                events.append(_feed_event(cursor, fields))
        return FeedPage(tuple(events), cursor)

    def _note_steps(self, request_id: str, event: object) -> _Steps[None]:
        note = check_note(event)
        agent = note.agent or ""
        args = (
            "",
            "",
            _text(note.at),
            agent,
            note.grant_id,
            note.context_tokens,
            note.output_tokens,
            note.kind,
            note.note,
        )
        reply = yield _Eval("note", self._request_keys(request_id), args)
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, [], agent=agent)

    def note(self, request_id: str, event: Event) -> None:
        """Append a feed-only event of a request (one script: the request's state with it)."""
        self._run(self._note_steps(request_id, event))

    async def anote(self, request_id: str, event: Event) -> None:
        """Async :meth:`note`."""
        await self._arun(self._note_steps(request_id, event))

    def _cursor_steps(self) -> _Steps[str]:
        if self.topology == "cluster":  # the newest entry of every bucket's stream
            replies = yield [
                _Cmd(("XREVRANGE", feed, "+", "-", "COUNT", 1)) for feed in self._feeds
            ]
            keys = [_entry_key(_str(r[0][0]), b) for b, r in enumerate(replies) if r]
            return "-".join(map(str, max(keys))) if keys else "0-0"
        reply = yield _Cmd(("XREVRANGE", self._feed_key, "+", "-", "COUNT", 1))
        return _str(reply[0][0]) if reply else "0-0"

    def _open_requests_steps(self, prefix: object) -> _Steps[list[str]]:
        if not isinstance(prefix, str):
            raise InvalidArgument("prefix", prefix, "the start of the request ids to list")
        # the reap index of every bucket, in one round trip (no scan of the keys)
        replies = yield [
            _Cmd(("ZRANGE", f"{self.prefix}:{{b{b}}}:open", 0, -1)) for b in range(self.buckets)
        ]
        ids = {_str(rid) for reply in replies for rid in reply}
        return sorted(rid for rid in ids if rid.startswith(prefix))

    def feed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """The feed's events after ``after`` (``XREAD``, blocking up to ``timeout``).

        A blocked read ends before the socket timeout (an empty page: read again).
        """
        return self._run(self._feed_steps(after, prefix, limit, timeout))

    async def afeed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """Async :meth:`feed`."""
        return await self._arun(self._feed_steps(after, prefix, limit, timeout))

    def feed_cursor(self) -> str:
        """The newest event's cursor (its stream entry id; ``0-0`` for an empty feed)."""
        return self._run(self._cursor_steps())

    async def afeed_cursor(self) -> str:
        """Async :meth:`feed_cursor`."""
        return await self._arun(self._cursor_steps())

    def open_requests(self, prefix: str = "") -> list[str]:
        """The ids of the open requests that start with ``prefix``, sorted (from the indexes)."""
        return self._run(self._open_requests_steps(prefix))

    async def aopen_requests(self, prefix: str = "") -> list[str]:
        """Async :meth:`open_requests`."""
        return await self._arun(self._open_requests_steps(prefix))


def _stream_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of an ``XREAD`` reply of one stream: ``(id, fields)`` (any reply shape)."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    for stream in streams:
        for entry in stream:
            entry_id, raw = entry[0], entry[1]
            if isinstance(raw, dict):
                fields = {_bytes(k): _bytes(v) for k, v in raw.items()}
            else:
                fields = {_bytes(k): _bytes(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
            entries.append((_str(entry_id), fields))
    return entries


def _feed_event(cursor: str, fields: dict[bytes, bytes]) -> FeedEvent:
    """The event of one stream entry, at ``cursor``."""
    return FeedEvent(
        cursor,
        _str(fields[b"r"]),
        _event(fields[b"e"]),
        _str(fields[b"s"]),
        int(fields[b"g"]),
        int(fields[b"u"]),
        int(fields[b"f"]),
        int(fields[b"c"]),
    )


def _entry_key(entry_id: str, bucket: int) -> tuple[int, int, int]:
    """Where a cluster's stream entry falls in the merged feed: its id, then its bucket."""
    micros, _, seq = entry_id.partition("-")
    return int(micros), int(seq), bucket


def _range_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of an ``XRANGE`` reply: ``(id, fields)`` (any reply shape)."""
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    for entry in reply or ():
        entry_id, raw = entry[0], entry[1]
        if isinstance(raw, dict):
            fields = {_bytes(k): _bytes(v) for k, v in raw.items()}
        else:
            fields = {_bytes(k): _bytes(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
        entries.append((_str(entry_id), fields))
    return entries
