"""The Redis store's stored documents: ledgers and events as JSON, and the text of values.

A ledger is one flat JSON array (its layout is described in ``lua/common.lua``), an event
one JSON array; floats travel as the exact decimal text that reads back as the same float.
"""

from __future__ import annotations

import json
import math
from typing import Any

from apportion.ledger import OPEN, Event, Grant, Ledger

_new_ledger = object.__new__
_decode = json.JSONDecoder().decode
_new = tuple.__new__  # builds a NamedTuple from a full tuple, skipping its slow __new__
_CENTURY = 100 * 365.25 * 86_400.0  # seconds: a TTL beyond this is kept forever


def _text(value: float) -> str:
    """A float as the exact decimal text that reads back as the same float."""
    return repr(float(value))


def ledger_from_json(raw: bytes | str) -> Ledger:
    """Build a :class:`~apportion.ledger.Ledger` snapshot from a script's ledger document.

    The snapshot is a plain ledger object with the stored state (no validation: the store
    validated every change); it carries no events (read them with ``events``) and changing
    it changes nothing in the store. The document is the flat JSON array described in
    ``lua/common.lua``.
    """
    v = _decode(raw.decode() if isinstance(raw, bytes) else raw)
    n = v[12]
    agents = v[13 : 13 + n]
    request_id = v[0]
    ledger: Ledger = _new_ledger(Ledger)
    ledger.request_id = request_id
    ledger.status = v[1]
    ledger.outcome = float(v[2]) if v[2] else None
    ledger.expires_at = float(v[3])
    ledger.ceiling = v[4]
    ledger.consumed = v[5]
    ledger.reserved = v[6]
    ledger.free = v[7]
    ledger.overflow = int(v[8])
    ledger.next_grant_id = v[9]
    b = 13 + n
    ledger.ranks = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.allocation = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.reserve = {a: t for a, t in zip(agents, v[b : b + n], strict=False) if t}
    b += n
    ledger.consumed_by = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.reserved_by = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.overuse_by = {a: int(t) for a, t in zip(agents, v[b : b + n], strict=False)}
    b += n
    ledger.calls = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.truncated_calls = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.input_cut_calls = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.cost_ceiling = int(v[b]) if v[b] != "" else None
    ledger.cost_reserved = int(v[b + 1])
    ledger.cost_consumed = int(v[b + 2])
    b += 3
    ledger.cost_by = {a: int(t) for a, t in zip(agents, v[b : b + n], strict=False)}
    b += n
    ledger.parent_id = v[b] or None
    ledger.depth = v[b + 1]
    ledger.rank = v[b + 2]
    ledger.children_consumed = v[b + 3]
    ledger.children_cost_consumed = int(v[b + 4])
    k = v[b + 5]
    b += 6
    ledger.children = {v[i]: (v[i + 1], int(v[i + 2])) for i in range(b, b + 3 * k, 3)}
    b += 3 * k
    grants: dict[int, Grant] = {}
    prices: dict[int, tuple[int, int]] = {}
    next_lease = math.inf
    for i in range(b, len(v), 8):
        grant_id, index, context, output, lease, model, pin, pout = v[i : i + 8]
        expires = float(lease)
        grants[grant_id] = _new(
            Grant,
            (request_id, agents[index - 1], grant_id, context, output, expires, model or None, 0),
        )
        if pin >= 0:
            prices[grant_id] = (pin, pout)
        if expires < next_lease:
            next_lease = expires
    ledger.grants = grants
    ledger.grant_prices = prices
    ledger._next_lease = next_lease
    ledger._settled = {}
    ledger.events = []
    return ledger


def _ledger_json(ledger: Ledger, pool: str, draw: str) -> str:
    agents = list(ledger.ranks)
    n = len(agents)
    head: list[Any] = [
        ledger.request_id,
        OPEN,
        "",
        _text(ledger.expires_at),
        ledger.ceiling,
        0,
        0,
        ledger.ceiling,
        "0",
        1,
        pool,
        draw,
        n,
    ]
    blocks: list[Any] = [
        *agents,
        *(ledger.ranks[a] for a in agents),
        *(ledger.allocation[a] for a in agents),
        *(ledger.reserve.get(a, 0) for a in agents),
        *[0] * (2 * n),
        *["0"] * n,
        *[0] * (3 * n),
        "" if ledger.cost_ceiling is None else str(ledger.cost_ceiling),
        "0",
        "0",
        *["0"] * n,
        "",  # the tree section: a root request with no children yet
        0,
        -1,
        0,
        "0",
        0,
    ]
    return json.dumps(head + blocks, separators=(",", ":"))


def _pool_debt(raw: bytes | str) -> tuple[str, str, int, str]:
    """``(pool, draw, free, overflow)`` of a closed ledger document."""
    v = json.loads(raw)
    return v[10], v[11], v[7], v[8]


def _event(raw: bytes | str) -> Event:
    kind, at, agent, grant_id, context, output, truncated, overuse, note, *asked = json.loads(raw)
    return Event(
        kind,
        float(at),
        agent or None,
        grant_id,
        context,
        output,
        truncated,
        overuse,
        note,
        asked[0] if asked else 0,
    )


def _str(value: bytes | str) -> str:
    """A reply's bytes as text."""
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    """A reply's text as bytes."""
    return value if isinstance(value, bytes) else value.encode()


def _score(value: float) -> str:
    """A time as a sorted set's score (``+inf`` for never)."""
    return "+inf" if value == math.inf else repr(float(value))


def _ttl_ms(seconds: float) -> str:
    """A key's TTL in milliseconds for ``PEXPIRE``; ``0`` (none) past a century."""
    if not seconds < _CENTURY:
        return "0"
    return str(max(1, math.ceil(seconds * 1000)))
