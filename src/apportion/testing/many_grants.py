"""A Redis-stored request holding thousands of open grants, for tests and benchmarks.

Beginning grants one by one costs each ``begin`` a pass over the request's stored ledger,
so reaching 10,000 open grants that way takes minutes. :func:`seed_open_grants` writes the
state that many ``begin`` calls would leave (the grants, the reservations, the counters,
one ``begin`` event each) straight into the stored ledger in one step, so a test or a
benchmark can then time or check what the store does with them (``close``, ``reap``).
"""

from __future__ import annotations

import json

from apportion.stores.redis import RedisStore
from apportion.stores.redis.codec import _text, _values, import_msgpack


def seed_open_grants(
    store: RedisStore,
    request_id: str,
    agent: str,
    count: int,
    now: float,
    lease_ends: float,
    *,
    context_tokens: int = 1,
    output_tokens: int = 1,
) -> None:
    """Add ``count`` open grants of ``agent`` to the open request ``request_id``.

    The ledger then holds what ``count`` calls of ``store.begin(request_id, agent,
    context_tokens, output_tokens, now, lease_ends - now)`` would have left, without
    prices; the request must have room for them (this checks nothing else).

    Raises:
        ValueError: the request has too little free room for the grants.
    """
    key, events_key, index_key = store._keys(request_id)
    client = store._client
    raw = client.get(key)
    if raw is None:
        raise ValueError(f"request {request_id!r} is not in the store")
    st = _values(raw if isinstance(raw, bytes) else raw.encode())
    n: int = st[12]
    names = st[13 : 13 + n]
    ai: int = names.index(agent) + 1
    total = context_tokens + output_tokens
    if st[7] < total * count:
        raise ValueError(f"request {request_id!r} has room for fewer than {count} grants")

    def at(block: int) -> int:  # the 0-based position of this agent's value in a block
        return 12 + block * n + ai

    first = st[9]
    lease = _text(lease_ends)
    events = []
    for gid in range(first, first + count):
        st += [gid, ai, context_tokens, output_tokens, lease, "", -1, -1]
        begin = [_text(now), agent, gid, context_tokens, output_tokens, False, 0, ""]
        events.append(json.dumps(["begin", *begin, context_tokens]))
    st[9] = first + count
    st[7] -= total * count  # free
    st[6] += total * count  # reserved
    st[at(3)] = 0  # the agent's reservation is used up by its first grant
    st[at(5)] += total * count  # reserved by the agent
    st[at(7)] += count  # calls
    with client.pipeline(transaction=True) as pipe:
        pipe.set(key, import_msgpack().packb(st), keepttl=True)
        for i in range(0, len(events), 1000):
            pipe.rpush(events_key, *events[i : i + 1000])
        pipe.zadd(index_key, {request_id: min(lease_ends, float(st[3]))})
        pipe.execute()
