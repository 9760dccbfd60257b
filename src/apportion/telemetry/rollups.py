"""Daily rollups of usage per agent (table ``apportion_daily``, since schema version 5).

The SQL sink keeps them as records arrive, in the transaction that writes the records, so
a report over a long period reads a few rows per agent and day instead of every call, and
old raw rows can be pruned (``apportion prune``) without losing their figures.

A row is keyed by the UTC ``day`` (days since the epoch), ``pipeline``, ``agent``,
``kind`` (``""`` for none), ``measure`` and ``key``, and holds ``count`` and ``total``,
``total2`` (sums, and sums of squares, of a float) and ``top`` (a maximum). Every update
is additive (``count + n``: an upsert, safe with writers in parallel) except ``top``,
which only grows. A request written again (same id) has its earlier rows' contribution
taken back first (``top`` stays: a maximum cannot be taken back). A call belongs to the
day it settled (else began); a request to the day it closed (else opened); rows without
a time are not rolled up (a report reads them raw; ``prune``, by age, keeps them).

Measures, per ``(agent, kind)`` of the calls (every one counted by its own ``kind``):

- ``calls`` (finished with usage), ``released`` (the others), ``status``/``NAME`` (every
  call by how it ended), ``refused`` (begins refused, from the requests);
- ``input``, ``need`` (input plus input cut away), ``output``: a histogram, ``key`` the
  bucket (:func:`bucket_of`) and ``count`` its calls; ``used_input``/``used_output``:
  their number, sum (``total``) and largest (``top``);
- ``sized``/``used_input`` ... ``granted_output``: sums over the calls whose grant is
  known; ``hit``, ``truncated``, ``input_cut`` with keys ``known`` and ``yes``;
  ``extended``, ``overuse``, ``cost`` (number and sum), ``model``/``NAME``,
  ``cut_top``/``output`` and ``cut_top``/``input`` (largest usage of a cut call);

per agent (``kind`` ``""``) and per kind (``agent`` ``""``), over the requests in which
it finished a call (on the day of its first such call): ``requests``, and ``quality`` with
keys ``cut`` and ``uncut`` (scored requests: number, sum and sum of squares of the
outcome); and per request (``agent`` and ``kind`` ``""``): ``requests``, ``scored``,
``overflow``.

**Histogram error bound.** Values below :data:`EXACT_BELOW` have a bucket each; above,
buckets are log-spaced by :data:`GAMMA` (1.02) and a bucket stands for
``2 * GAMMA**(i+1) / (GAMMA + 1)``, within ``(GAMMA - 1) / (GAMMA + 1)`` (under 1%) of
every value in it. The stand-in is monotone in the value, so every order statistic, and
every percentile interpolated between two of them, is within 1% of the exact one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from apportion.telemetry.records import CallUsage, RequestUsage

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

__all__ = [
    "DAY",
    "EXACT_BELOW",
    "GAMMA",
    "RELATIVE_ERROR",
    "Rollup",
    "bucket_of",
    "bucket_value",
    "day_of",
    "upsert",
]

DAY: Final = 86_400
"""Seconds in a rollup day (UTC days: ``floor(time / DAY)``)."""

GAMMA: Final = 1.02
"""Ratio between the bounds of a log-spaced histogram bucket."""

EXACT_BELOW: Final = 128
"""Token counts below this have a bucket of their own (exact)."""

RELATIVE_ERROR: Final = (GAMMA - 1) / (GAMMA + 1)
"""Largest relative error of a percentile read from the histograms (under 1%)."""

_LOG_GAMMA: Final = math.log(GAMMA)
_FIRST: Final = math.floor(math.log(EXACT_BELOW) / _LOG_GAMMA)

Key = tuple[int, str, str, str, str, str]
"""day, pipeline, agent, kind, measure, key."""


def bucket_of(value: int) -> int:
    """The histogram bucket of a token count (the value itself below :data:`EXACT_BELOW`)."""
    if value < EXACT_BELOW:
        return max(0, int(value))
    return EXACT_BELOW + math.floor(math.log(value) / _LOG_GAMMA) - _FIRST


def bucket_value(bucket: int) -> float:
    """What a bucket stands for (see the module docstring for the error bound)."""
    if bucket < EXACT_BELOW:
        return float(bucket)
    i = bucket - EXACT_BELOW + _FIRST
    return 2.0 * GAMMA ** (i + 1) / (GAMMA + 1)


def day_of(*times: float | None) -> int | None:
    """The day of the first finite time given (``None`` when there is none)."""
    for t in times:
        if t is not None and math.isfinite(t):
            return math.floor(t / DAY)
    return None


def _finished(call: CallUsage) -> bool:
    return call.settled == "finish" and call.used_input is not None and call.used_output is not None


def _hit(call: CallUsage) -> bool | None:
    if call.truncated is None and call.input_cut is None:
        return None
    return call.ceiling_hit


class Rollup:
    """The rollup rows a batch of records adds (or, with ``sign=-1``, takes back).

    Args:
        clean: how text is stored (the sink's :func:`~apportion.telemetry.sql.storable`).
    """

    def __init__(self, clean: Callable[[str], str] = str) -> None:
        self.clean = clean
        self.cells: dict[Key, list[Any]] = {}  # count, total, total2, top

    def _add(
        self,
        key: Key,
        count: int = 0,
        total: float = 0.0,
        total2: float = 0.0,
        top: int | None = None,
    ) -> None:
        cell = self.cells.get(key)
        if cell is None:
            self.cells[key] = [count, total, total2, top]
            return
        cell[0] += count
        cell[1] += total
        cell[2] += total2
        if top is not None and (cell[3] is None or top > cell[3]):
            cell[3] = top

    def add(self, record: RequestUsage, sign: int = 1) -> None:
        """Roll up one record (``sign=-1``: take back what it added)."""
        clean = self.clean
        pipeline = clean(record.pipeline)
        outcome = record.outcome
        scored = outcome is not None and math.isfinite(outcome)
        rday = day_of(record.closed_at, record.opened_at)
        if rday is not None:
            self._add((rday, pipeline, "", "", "requests", ""), sign)
            if scored:
                self._add((rday, pipeline, "", "", "scored", ""), sign)
            if record.overflow:
                self._add((rday, pipeline, "", "", "overflow", ""), sign * int(record.overflow))
            for agent, count in record.refused.items():
                kind = clean(record.refused_kinds.get(agent) or "")
                self._add((rday, pipeline, clean(agent), kind, "refused", ""), sign * count)
        # (level agent, level kind): (first day, cut) over the finished calls of each
        firsts: dict[tuple[str, str], list[Any]] = {}
        for call in record.calls:
            day = day_of(call.at, call.began_at)
            if day is None:
                continue
            agent, kind = clean(call.agent), clean(call.kind or "")
            self._add((day, pipeline, agent, kind, "status", clean(call.ending)), sign)
            if not _finished(call):
                self._add((day, pipeline, agent, kind, "released", ""), sign)
                continue
            self._call(day, pipeline, agent, kind, call, sign)
            hit = bool(_hit(call))
            for level in ((agent, ""), ("", kind)) if kind else ((agent, ""),):
                seen = firsts.get(level)
                if seen is None:
                    firsts[level] = [day, hit]
                else:
                    seen[0] = min(seen[0], day)
                    seen[1] = seen[1] or hit
        for (agent, kind), (day, cut) in firsts.items():
            self._add((day, pipeline, agent, kind, "requests", ""), sign)
            if scored:
                assert outcome is not None
                name = "cut" if cut else "uncut"
                self._add(
                    (day, pipeline, agent, kind, "quality", name),
                    sign,
                    sign * outcome,
                    sign * outcome * outcome,
                )

    def _call(
        self, day: int, pipeline: str, agent: str, kind: str, call: CallUsage, sign: int
    ) -> None:
        used_in, used_out = int(call.used_input or 0), int(call.used_output or 0)
        need = used_in + int(call.dropped_tokens or 0)
        at = (day, pipeline, agent, kind)
        add = self._add
        add((*at, "calls", ""), sign)
        add((*at, "input", str(bucket_of(used_in))), sign)
        add((*at, "need", str(bucket_of(need))), sign)
        add((*at, "output", str(bucket_of(used_out))), sign)
        add((*at, "used_input", ""), sign, float(sign * used_in), 0.0, used_in)
        add((*at, "used_output", ""), sign, float(sign * used_out), 0.0, used_out)
        if call.granted_context is not None and call.granted_output is not None:
            add((*at, "sized", "used_input"), sign, float(sign * used_in))
            add((*at, "sized", "used_output"), sign, float(sign * used_out))
            add((*at, "sized", "granted_context"), sign, float(sign * call.granted_context))
            add((*at, "sized", "granted_output"), sign, float(sign * call.granted_output))
        hit = _hit(call)
        for name, flag in (
            ("hit", hit),
            ("truncated", call.truncated),
            ("input_cut", call.input_cut),
        ):
            if flag is not None:
                add((*at, name, "known"), sign)
                if flag:
                    add((*at, name, "yes"), sign)
        if call.extensions:
            add((*at, "extended", ""), sign)
        if call.overuse:
            add((*at, "overuse", ""), sign * int(call.overuse))
        if call.cost_usd is not None and math.isfinite(call.cost_usd):
            add((*at, "cost", ""), sign, sign * call.cost_usd)
        if call.model:
            add((*at, "model", self.clean(call.model)), sign)
        if call.truncated:
            add((*at, "cut_top", "output"), 0, top=used_out)
        if call.input_cut:
            add((*at, "cut_top", "input"), 0, top=need)

    def rows(self) -> list[dict[str, Any]]:
        """The rows to upsert (those that change nothing left out)."""
        out = []
        for (day, pipeline, agent, kind, measure, key), cell in self.cells.items():
            count, total, total2, top = cell
            if not count and not total and not total2 and top is None:
                continue
            out.append(
                {
                    "day": day,
                    "pipeline": pipeline,
                    "agent": agent,
                    "kind": kind,
                    "measure": measure,
                    "key": key,
                    "count": count,
                    "total": total,
                    "total2": total2,
                    "top": top,
                }
            )
        return out


def upsert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Add ``rows`` to the rollups: counts and sums added, ``top`` the larger."""
    if not rows:
        return
    from sqlalchemy import case

    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table)
    new = stmt.excluded
    c = table.c
    stmt = stmt.on_conflict_do_update(
        index_elements=[c.day, c.pipeline, c.agent, c.kind, c.measure, c.key],
        set_={
            "count": c["count"] + new["count"],
            "total": c.total + new.total,
            "total2": c.total2 + new.total2,
            "top": case(
                (new.top.is_(None), c.top),
                (c.top.is_(None), new.top),
                (new.top > c.top, new.top),
                else_=c.top,
            ),
        },
    )
    conn.execute(stmt, list(rows))


def roll_up(records: Iterable[RequestUsage], clean: Callable[[str], str], sign: int = 1) -> Rollup:
    """A :class:`Rollup` of ``records``."""
    rollup = Rollup(clean)
    for record in records:
        rollup.add(record, sign)
    return rollup
