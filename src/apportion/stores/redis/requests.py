"""The Redis store's request operations, each written once as the calls it makes.

Open, child budgets, begin, extend, finish, release, close, get and events: each is a
generator of steps (:mod:`apportion.stores.redis.calls`), one request script per ledger
operation, that the sync and async shells of the store both carry out. A script replies
with the state after the operation, or refuses with a code raised as the ledger's own
error (:mod:`apportion.stores.redis.refusals`). A close, whose request tree may hold
requests it has not declared, reads the tree and calls again (see "Redis Cluster" in
:mod:`apportion.stores.redis`).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from apportion.errors import (
    ApportionError,
    ChildBudgetExceeded,
    CostExceeded,
    DuplicateRequest,
    InvalidArgument,
    InvalidPrice,
    OperationConflict,
    PoolDrawExpired,
    PoolExhausted,
    StoreUnavailable,
    TreeTooDeep,
    UnknownPool,
    UnknownRequest,
)
from apportion.features import features_from
from apportion.ledger import (
    CHILD_SEP,
    MAX_TOKENS,
    NANO,
    Event,
    Grant,
    Ledger,
    check_name,
    check_outcome,
    check_prices,
    check_seconds,
    check_status,
    check_time,
    check_wrap_up,
)
from apportion.limits import is_text
from apportion.pools import PRIORITY_RANKS, check_pool_name, check_priority
from apportion.stores.base import Digests, check_children, check_op_id
from apportion.stores.feed import NOTE_KINDS
from apportion.stores.redis.arguments import _checked, _grant_args, _time, _tokens
from apportion.stores.redis.calls import _OK, _Cmd, _Eval, _Steps
from apportion.stores.redis.codec import (
    _closed,
    _event,
    _ledger_blob,
    _score,
    _str,
    _text,
    _ttl_ms,
    ledger_from_stored,
)
from apportion.stores.redis.pools import RedisPools
from apportion.stores.redis.refusals import _refusal

_TREE_ATTEMPTS = 16
"""Attempts of a ``close`` (rounds of a ``reap``) whose request tree changed since it was
read (children opened meanwhile) before giving up: each attempt reads the tree again."""


def _draw_tag(op_id: str) -> str:
    """The tag of a pool draw made by an open of operation id ``op_id`` (a retry's too)."""
    return hashlib.blake2b(op_id.encode("ascii"), digest_size=6).hexdigest()


class RedisRequests(RedisPools):
    """Request operations in Redis (a part of :class:`~apportion.stores.redis.RedisStore`)."""

    retention_seconds: float
    open_grace_seconds: float

    def _open_steps(
        self,
        request_id: str,
        ranks: Mapping[str, int],
        ceiling: int,
        now: float,
        allocation: Mapping[str, int] | None,
        reserve: Mapping[str, int] | None,
        ttl: float,
        pool: str | None,
        pool_priority: str,
        ceiling_usd: int | None = None,
        features: Mapping[str, Any] | None = None,
        op_id: str | None = None,
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        now = check_time("now", now)
        ttl = check_seconds("ttl", ttl)
        ledger = Ledger(
            request_id,
            ranks,
            ceiling,
            now,
            allocation=allocation,
            reserve=reserve,
            expires_at=now + ttl,
            ceiling_usd=ceiling_usd,
            features=features,
        )
        digest = Digests.open(op_id, ledger.ranks, ledger.ceiling, pool, pool_priority, ceiling_usd)
        draw = ""
        fresh = False  # drawn by this call (not found drawn by the first call of its op id)
        keys: tuple[str, ...] = self._own_keys(request_id)
        if pool is not None:
            check_pool_name(pool)
            rank = PRIORITY_RANKS[check_priority(pool_priority)]
            tag = secrets.token_hex(6) if op_id is None else _draw_tag(op_id)
            draw = f"{request_id}#{tag}"
            pool_keys = self._pool_keys(pool)
            deadline = _text(now + self.open_grace_seconds)
            reply = yield _Eval(
                "pool_draw", pool_keys, (draw, ledger.ceiling, rank, _text(now), deadline)
            )
            code = _str(reply[0])
            if code == "unknown":
                raise UnknownPool(pool)
            if code == "exhausted":
                raise PoolExhausted(pool, ledger.ceiling, int(reply[1]), pool_priority)
            if code == "conflict":
                assert op_id is not None
                raise OperationConflict(op_id, "open", "open", request_id)
            fresh = code == "ok"
        blob = _ledger_blob(ledger, pool or "", draw)
        note = ledger.events[0].note  # the features
        opened = json.dumps(["open", _text(now), False, 0, ledger.ceiling, 0, False, 0, note])
        key_ttl = "0"  # a pooled request keeps its keys while open: its draw is settled from them
        if pool is None and math.isfinite(ttl) and not math.isinf(self.retention_seconds):
            key_ttl = _ttl_ms(ttl + self.retention_seconds)
        if pool is not None:
            keys = (*keys, self._marker_key(draw))
        reply = yield _Eval(
            "open",
            (*keys, self._feed_of(request_id)),
            (
                op_id or "",
                digest,
                blob,
                request_id,
                opened,
                _score(ledger.expires_at),
                key_ttl,
                self._retention_ms,
            ),
        )
        again = _str(reply[0]) == "ok" and len(reply) > 1  # a repeated operation id
        if _str(reply[0]) != "ok" or again:
            if _str(reply[0]) == "void" and pool is not None:  # given back already
                raise PoolDrawExpired(request_id, pool)
            if pool is not None and fresh:  # give the draw back: this open never happened
                yield _Eval(
                    "pool_return", self._pool_keys(pool), (draw, ledger.ceiling, 0, _text(now))
                )
            if again:
                return ledger_from_stored(reply[1])
            raise _refusal(request_id, reply, [], op=(op_id, digest))
        return ledger_from_stored(blob)

    def _children_steps(
        self,
        parent_id: str,
        request_ids: Sequence[str],
        ranks: Mapping[str, int],
        now: float,
        priorities: Sequence[str],
        ceiling: int | None,
        share: float | None,
        allocation: Mapping[str, int] | None,
        reserve: Mapping[str, int] | None,
        ttl: float,
        max_depth: int,
        features: Mapping[str, Any] | None = None,
        op_id: str | None = None,
    ) -> _Steps[tuple[Ledger, list[Ledger]]]:
        op_id = check_op_id(op_id)
        args = check_children(
            parent_id, request_ids, now, priorities, ceiling, share, ttl, max_depth
        )
        digest = Digests.children(op_id, args, max_depth)
        if self.topology == "cluster":  # one script: every key in the parent's slot
            index = self._keys(args.parent_id)[2]
            apart = [rid for rid in args.request_ids if self._keys(rid)[2] != index]
            if apart:
                raise InvalidArgument(
                    "request_ids",
                    apart,
                    "on a Redis Cluster a child's id starts with its parent's root's id "
                    f"and {CHILD_SEP!r} (its keys share the root's hash slot)",
                )
        now = args.now
        template = Ledger(
            args.request_ids[0],
            ranks,
            MAX_TOKENS,
            now,
            allocation=allocation,
            reserve=reserve,
            expires_at=now + args.ttl,
            features=features,
        )
        keys: list[str] = list(self._own_keys(args.parent_id))
        each: list[str | int] = []
        for request_id, rank in zip(args.request_ids, args.ranks, strict=True):
            keys += self._declared([request_id])[request_id]
            each += [request_id, rank]
        key_ttl = "0"
        if math.isfinite(args.ttl) and not math.isinf(self.retention_seconds):
            key_ttl = _ttl_ms(args.ttl + self.retention_seconds)
        reply = yield _Eval(
            "children",
            (*keys, self._feed_of(args.parent_id)),
            (
                op_id or "",
                digest,
                _text(now),
                args.max_depth,
                "" if args.ceiling is None else args.ceiling,
                "" if args.share is None else _text(args.share),
                _ledger_blob(template, "", ""),
                key_ttl,
                _score(template.expires_at),
                template.events[0].note,  # the features
                *each,
            ),
        )
        code = _str(reply[0])
        if code == "ok":
            return ledger_from_stored(reply[1]), [ledger_from_stored(blob) for blob in reply[2:]]
        if code == "child":
            ids = args.request_ids
            label = ids[0] if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1})"
            raise ChildBudgetExceeded(
                args.parent_id, label, int(reply[1]), int(reply[2]), reason=_str(reply[3])
            )
        if code == "deep":
            raise TreeTooDeep(args.parent_id, int(reply[1]), args.max_depth)
        if code == "dup":
            raise DuplicateRequest(_str(reply[1]))
        raise _refusal(args.parent_id, reply, [], op=(op_id, digest))

    def _begin_steps(
        self,
        request_id: str,
        agent: str,
        context_tokens: int,
        output_tokens: int,
        now: float,
        lease_seconds: float,
        model: str | None = None,
        prices: tuple[int, int] | None = None,
        asked: int | None = None,
        wrap_up_tokens: int = 0,
        op_id: str | None = None,
    ) -> _Steps[tuple[Grant, Ledger]]:
        op_id = check_op_id(op_id)
        digest = Digests.begin(
            op_id, agent, context_tokens if asked is None else asked, wrap_up_tokens
        )
        pending: list[Exception] = []
        is_name = isinstance(agent, str) and is_text(agent)
        ctx = _tokens("context_tokens", context_tokens, pending)
        out = _tokens("output_tokens", output_tokens, pending)
        now = _time(now, pending)
        lease_seconds = _checked(check_seconds, "lease_seconds", lease_seconds, pending, 1.0)
        held = "" if asked is None else _tokens("input_tokens", asked, pending)
        reserve = 0  # inside the grant's output: the scripts account nothing for it
        if not pending and (type(wrap_up_tokens) is not int or wrap_up_tokens):
            try:
                reserve = check_wrap_up(agent, wrap_up_tokens, output_tokens)
            except ApportionError as exc:
                if not pending:
                    pending.append(exc)
        pin = pout = ""
        try:
            clean = check_prices(prices)
            if model is not None and (not isinstance(model, str) or not model):
                raise InvalidPrice("model", model, "a model is a non-empty name")
            if model is not None:
                check_name("model", model)
        except (InvalidPrice, InvalidArgument) as exc:
            if not pending:
                pending.append(exc)
            pin = pout = "!"
            model = None
        else:
            if clean is not None:
                pin, pout = str(clean[0]), str(clean[1])
        if pending:
            ctx = "!"
        lease = now + lease_seconds
        reply = yield _Eval(
            "begin",
            self._request_keys(request_id),
            (
                op_id or "",
                digest,
                agent if is_name else "",
                "1" if is_name else "0",
                ctx,
                out,
                _text(now),
                _text(lease),
                model if isinstance(model, str) else "",
                pin,
                pout,
                held,
            ),
        )
        if reply[0] not in _OK:
            if _str(reply[0]) == "cost":
                raise CostExceeded(
                    agent, int(reply[1]) / NANO, int(reply[2]) / NANO, model=model or None
                )
            raise _refusal(request_id, reply, pending, agent=agent, op=(op_id, digest))
        if len(reply) > 3:  # a repeated operation id: the first call's grant
            ctx, out, lease, model = reply[3], reply[4], float(_str(reply[5])), _str(reply[6])
        grant = Grant(
            request_id, agent, int(reply[2]), int(ctx), int(out), lease, model or None, reserve
        )
        return grant, ledger_from_stored(reply[1])

    def _extend_steps(
        self,
        request_id: str,
        grant: Grant,
        output_tokens: int,
        context_tokens: int,
        now: float,
        lease_seconds: float,
        op_id: str | None = None,
    ) -> _Steps[tuple[Grant, Ledger]]:
        op_id = check_op_id(op_id)
        digest = Digests.extend(op_id, grant)
        pending: list[Exception] = []
        out = _tokens("output_tokens", output_tokens, pending)
        ctx = _tokens("context_tokens", context_tokens, pending)
        now = _time(now, pending)
        lease_seconds = _checked(check_seconds, "lease_seconds", lease_seconds, pending, 1.0)
        if pending:
            out = "!"
        ok, grant_id, agent = _grant_args(request_id, grant)
        reply = yield _Eval(
            "extend",
            self._request_keys(request_id),
            (
                op_id or "",
                digest,
                out,
                ctx,
                _text(now),
                _text(now + lease_seconds),
                ok,
                grant_id,
                agent,
            ),
        )
        if reply[0] not in _OK:
            raise _refusal(
                request_id, reply, pending, grant=grant, reason="extension", op=(op_id, digest)
            )
        state = ledger_from_stored(reply[1])
        if len(reply) > 2:  # a repeated operation id: the grant as the first call grew it
            grown = Grant(
                request_id,
                grant.agent,
                int(grant_id),
                int(reply[2]),
                int(reply[3]),
                float(_str(reply[4])),
                grant.model,
            )
        else:
            grown = state.grants[int(grant_id)]
        if isinstance(grant, Grant) and grant.wrap_up_tokens:  # not in the state: carried over
            grown = grown._replace(wrap_up_tokens=grant.wrap_up_tokens)
        return grown, state

    def _finish_steps(
        self,
        request_id: str,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        now: float,
        truncated: bool,
        allocation: Mapping[str, int] | None,
        op_id: str | None = None,
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        digest = Digests.finish(op_id, grant, input_tokens, output_tokens, truncated)
        pending: list[Exception] = []
        inp = _tokens("input_tokens", input_tokens, pending)
        out = _tokens("output_tokens", output_tokens, pending)
        if allocation is not None and not isinstance(allocation, Mapping) and not pending:
            pending.append(
                InvalidArgument("allocation", allocation, "a mapping of agent names to tokens")
            )
        now = _time(now, pending)
        if pending:
            inp = "!"
        ok, grant_id, agent = _grant_args(request_id, grant)
        args: list[str | int] = [
            op_id or "",
            digest,
            inp,
            out,
            _text(now),
            "1" if truncated else "0",
            ok,
            grant_id,
            agent,
        ]
        plan: list[object] = []
        if allocation and not pending:
            for name, tokens in allocation.items():
                plan.append(name)
                is_name = isinstance(name, str) and is_text(name)
                args += ["1" if is_name else "0", name if is_name else "", "0"]
                args[-1] = _tokens(f"allocation[{name}]", tokens, pending)
                if pending:
                    break
        reply = yield _Eval("finish", self._request_keys(request_id), tuple(args))
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, pending, grant=grant, plan=plan, op=(op_id, digest))
        return ledger_from_stored(reply[1])

    def _release_steps(
        self, request_id: str, grant: Grant, now: float, reason: str, op_id: str | None = None
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        digest = Digests.release(op_id, grant, reason)
        pending: list[Exception] = []
        now = _time(now, pending)
        reason = _checked(check_name, "reason", reason, pending, "")
        ok, grant_id, agent = _grant_args(request_id, grant)
        reply = yield _Eval(
            "release",
            self._request_keys(request_id),
            (op_id or "", digest, _text(now), reason, ok, grant_id, agent, "1" if pending else "0"),
        )
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, pending, grant=grant, op=(op_id, digest))
        return ledger_from_stored(reply[1])

    def _close_steps(
        self,
        request_id: str,
        now: float,
        status: str,
        outcome: float | None,
        op_id: str | None = None,
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        digest = Digests.close(op_id, status, outcome)
        pending: list[Exception] = []
        status = _checked(lambda _, value: check_status(value), "status", status, pending, "")
        outcome = _checked(lambda _, value: check_outcome(value), "outcome", outcome, pending, None)
        now = _time(now, pending)
        score = "" if outcome is None or pending else _text(outcome)
        args = (
            op_id or "",
            digest,
            _text(now),
            str(status),
            score,
            "1" if pending else "0",
            self._retention_ms,
        )
        own = self._own_keys(request_id)
        parent = request_id.rpartition(CHILD_SEP)[0]
        declared = self._declared([parent] if parent else [])  # its likely parent: no read
        for _ in range(_TREE_ATTEMPTS):
            ids = list(declared)
            keys = [*own, *(k for i in ids for k in declared[i])]
            reply = yield _Eval("close", (*keys, self._feed_of(request_id)), (*args, *ids))
            if _str(reply[0]) != "tree":
                break
            # the tree holds requests not declared (opened since, or deeper): read them
            yield from self._read_tree([_str(i) for i in reply[1:]], declared)
        else:
            raise self._tree_changing(request_id, "close")
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, pending, op=(op_id, digest))
        state, (pool, draw, free, overflow) = _closed(reply[1])
        if pool:
            yield self._give_back(pool, draw, free, overflow, now)
        return state

    def _get_steps(self, request_id: str) -> _Steps[Ledger]:
        raw = yield _Cmd(("GET", self._keys(request_id)[0]))
        if raw is None:
            raise UnknownRequest(request_id)
        return ledger_from_stored(raw)

    def _features_steps(self, request_id: str) -> _Steps[dict[str, Any]]:
        """The features the request opened with: the note of its first event, ``open``."""
        raw = yield _Cmd(("LINDEX", self._keys(request_id)[1], 0))
        if raw is None:
            raise UnknownRequest(request_id)
        return features_from([_event(raw)])

    def _get_with_features_steps(self, request_id: str) -> _Steps[tuple[Ledger, dict[str, Any]]]:
        """The state and the features of a request, read in one call (``lua/read.lua``)."""
        raw, first = yield _Eval("read", self._keys(request_id)[:2], ())
        if raw is None or first is None:
            raise UnknownRequest(request_id)
        return ledger_from_stored(raw), features_from([_event(first)])

    def _events_steps(self, request_id: str, notes: bool = False) -> _Steps[list[Event]]:
        """The request's events list: its ledger events, and its notes when ``notes``."""
        raws = yield _Cmd(("LRANGE", self._keys(request_id)[1], 0, -1))
        if not raws:
            raise UnknownRequest(request_id)
        if notes:
            return [_event(raw) for raw in raws]
        return [e for raw in raws if (e := _event(raw)).kind not in NOTE_KINDS]

    def _read_tree(
        self, ids: Sequence[str], declared: dict[str, tuple[str, str, str]]
    ) -> _Steps[None]:
        """Declare ``ids`` and the rest of their trees (parents, open children, theirs ...).

        Reads the ledgers a level at a time (one round trip each), adding to ``declared``
        every request a close or a reap of ``ids`` may reach.
        """
        level = [rid for rid in dict.fromkeys(ids) if rid not in declared]
        seen: set[str] = set()
        while level:
            declared.update(self._declared(level))
            raws = yield [_Cmd(("GET", declared[rid][0])) for rid in level]
            seen.update(level)
            found: list[str] = []
            for raw in raws:
                if raw is None:
                    continue
                ledger = ledger_from_stored(raw)
                found += [r for r in (ledger.parent_id, *ledger.children) if r]
            level = [rid for rid in dict.fromkeys(found) if rid not in seen]

    def _tree_changing(self, request_id: str, what: str) -> StoreUnavailable:
        """The error of a tree that changed under every attempt of ``what`` (none applied)."""
        return StoreUnavailable(
            self.url,
            f"the request tree of {request_id!r} kept changing during {_TREE_ATTEMPTS} "
            f"attempts to {what} it (children opening all the while); nothing was changed",
        )
