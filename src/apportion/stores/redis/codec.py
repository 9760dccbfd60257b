"""The Redis store's stored documents: ledgers, events, and the text of values.

A ledger is one flat array stored as MessagePack (its layout is described in
``lua/common.lua``; the JSON array earlier versions stored still reads), an event one JSON
array; floats travel as the exact decimal text that reads back as the same float.
"""

from __future__ import annotations

import json
import math
from typing import Any

from apportion.errors import MissingExtra
from apportion.ledger import OPEN, Event, Grant, Ledger

_decode = json.JSONDecoder().decode
_msgpack: Any = None
_new = tuple.__new__  # builds a NamedTuple from a full tuple, skipping its slow __new__
_CENTURY = 100 * 365.25 * 86_400.0  # seconds: a TTL beyond this is kept forever


def import_msgpack() -> Any:
    """The ``msgpack`` module (imported once), or :class:`~apportion.errors.MissingExtra`."""
    global _msgpack
    if _msgpack is None:
        try:
            import msgpack
        except ImportError as exc:  # pragma: no cover - the extra is installed in tests
            raise MissingExtra("msgpack", "redis") from exc
        _msgpack = msgpack
    return _msgpack


def _values(raw: bytes) -> list[Any]:
    """The values of a stored ledger: MessagePack, or the JSON array earlier versions stored."""
    if raw[:1] == b"[":
        return _decode(raw.decode())  # type: ignore[no-any-return]
    return (_msgpack or import_msgpack()).unpackb(raw)  # type: ignore[no-any-return]


def _text(value: float) -> str:
    """A float as the exact decimal text that reads back as the same float."""
    return repr(float(value))


def ledger_from_stored(raw: bytes) -> Ledger:
    """A :class:`~apportion.ledger.Ledger` snapshot of a stored ledger (a reply's).

    The snapshot is a ledger restored from the stored fields (:meth:`Ledger.restore
    <apportion.ledger.Ledger.restore>`, no validation: the store validated every change);
    it carries no events (read them with ``events``) and changing it changes nothing in the
    store. The ledger is the flat array described in ``lua/common.lua``. It is decoded when
    first read (:class:`_StoredLedger`): the state an operation returns and nobody reads
    costs nothing.
    """
    return _lazy(raw)


def _lazy(stored: bytes | list[Any]) -> Ledger:
    """A snapshot decoded on first read, of a stored ledger or of its values already read."""
    ledger = object.__new__(_StoredLedger)
    ledger._stored = stored
    return ledger


_FIELDS = frozenset(Ledger.__slots__)


class _StoredLedger(Ledger):
    """A ledger snapshot that restores its fields on first read of any.

    From its stored bytes, or their values when the store already read them.
    """

    __slots__ = ("_stored",)

    _stored: bytes | list[Any] | None

    def __getattr__(self, name: str) -> Any:
        """A field not read yet: restore them all (called only for an attribute not set)."""
        if name not in _FIELDS:
            raise AttributeError(name)
        stored = self._stored
        if stored is not None:  # None: another thread restored it meanwhile
            _ledger_of(stored if isinstance(stored, list) else _values(stored), self)
            self._stored = None
        return object.__getattribute__(self, name)


def _ledger_of(v: list[Any], into: Ledger | None = None) -> Ledger:
    """The :class:`~apportion.ledger.Ledger` of a stored ledger's values (in ``into``)."""
    n = v[12]
    agents = v[13 : 13 + n]
    request_id = v[0]
    b = 13 + n  # nine blocks by agent: ranks, allocation, reserve, ... input_cut_calls
    cost = b + 9 * n + 3  # cost_by, after the cost ceiling, reserved and consumed
    tree = cost + n  # parent, depth, rank, children's usage, the open children (3 each)
    first_grant = tree + 6 + 3 * v[tree + 5]  # then the open grants, 8 fields each
    grants: dict[int, Grant] = {}
    prices: dict[int, tuple[int, int]] = {}
    for i in range(first_grant, len(v), 8):
        grant_id, index, context, output, lease, model, pin, pout = v[i : i + 8]
        grants[grant_id] = _new(
            Grant,
            (
                request_id,
                agents[index - 1],
                grant_id,
                context,
                output,
                float(lease),
                model or None,
                0,
            ),
        )
        if pin >= 0:
            prices[grant_id] = (pin, pout)
    return Ledger.restore(
        request_id=request_id,
        ranks=dict(zip(agents, v[b : b + n], strict=False)),
        ceiling=v[4],
        status=v[1],
        outcome=float(v[2]) if v[2] else None,
        expires_at=float(v[3]),
        consumed=v[5],
        reserved=v[6],
        free=v[7],
        overflow=int(v[8]),
        next_grant_id=v[9],
        allocation=dict(zip(agents, v[b + n : b + 2 * n], strict=False)),
        reserve={a: t for a, t in zip(agents, v[b + 2 * n : b + 3 * n], strict=False) if t},
        consumed_by=dict(zip(agents, v[b + 3 * n : b + 4 * n], strict=False)),
        reserved_by=dict(zip(agents, v[b + 4 * n : b + 5 * n], strict=False)),
        overuse_by={a: int(t) for a, t in zip(agents, v[b + 5 * n : b + 6 * n], strict=False)},
        calls=dict(zip(agents, v[b + 6 * n : b + 7 * n], strict=False)),
        truncated_calls=dict(zip(agents, v[b + 7 * n : b + 8 * n], strict=False)),
        input_cut_calls=dict(zip(agents, v[b + 8 * n : b + 9 * n], strict=False)),
        grants=grants,
        cost_ceiling=int(v[cost - 3]) if v[cost - 3] != "" else None,
        cost_reserved=int(v[cost - 2]),
        cost_consumed=int(v[cost - 1]),
        cost_by={a: int(t) for a, t in zip(agents, v[cost : cost + n], strict=False)},
        grant_prices=prices,
        parent_id=v[tree] or None,
        depth=v[tree + 1],
        rank=v[tree + 2],
        children={v[i]: (v[i + 1], int(v[i + 2])) for i in range(tree + 6, first_grant, 3)},
        children_consumed=v[tree + 3],
        children_cost_consumed=int(v[tree + 4]),
        into=into,
    )


def _ledger_blob(ledger: Ledger, pool: str, draw: str) -> bytes:
    """A new ledger as the store keeps it (see ``lua/common.lua``), drawn from ``pool``."""
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
    return (_msgpack or import_msgpack()).packb(head + blocks)  # type: ignore[no-any-return]


def _debt(v: list[Any]) -> tuple[str, str, int, str]:
    """``(pool, draw, free, overflow)`` of a ledger's values."""
    return v[10], v[11], v[7], v[8]


def _pool_debt(raw: bytes) -> tuple[str, str, int, str]:
    """``(pool, draw, free, overflow)`` of a closed stored ledger."""
    return _debt(_values(raw))


def _closed(raw: bytes) -> tuple[Ledger, tuple[str, str, int, str]]:
    """A closed stored ledger's snapshot and its :func:`_pool_debt`, decoded once."""
    v = _values(raw)
    return _lazy(v), _debt(v)


def _closed_debt(raw: bytes) -> tuple[str, tuple[str, str, int, str] | None]:
    """The draw a stored ledger opened with, and its :func:`_pool_debt` (None while open).

    One decode of the values it needs: reconciling pools reads many ledgers for these.
    """
    v = _values(raw)
    return v[11], (None if v[1] == OPEN else _debt(v))


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
