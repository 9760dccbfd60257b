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
from collections.abc import Callable, Sequence
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


class _Group:
    """What one ``(day, pipeline, agent, kind)`` adds up to, before it becomes rows."""

    __slots__ = (
        "calls",
        "counts",
        "cut_input",
        "cut_output",
        "histograms",
        "models",
        "quality",
        "statuses",
        "sums",
        "top_input",
        "top_output",
    )

    def __init__(self) -> None:
        self.calls = 0
        # (measure, key): count, for the measures that only count
        self.counts: dict[tuple[str, str], int] = {}
        # (measure, key): total, for the sums (the count is ``calls`` or ``counts``)
        self.sums: dict[tuple[str, str], float] = {}
        self.histograms: dict[str, dict[int, int]] = {"input": {}, "need": {}, "output": {}}
        self.models: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.quality: dict[str, list[float]] = {}
        self.top_input: int | None = None
        self.top_output: int | None = None
        self.cut_input: int | None = None
        self.cut_output: int | None = None


def _count(counts: dict[Any, Any], key: Any, n: float) -> None:
    counts[key] = counts.get(key, 0) + n


def _larger(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


class Rollup:
    """The rollup rows a batch of records adds (or, with ``sign=-1``, takes back).

    Args:
        clean: how text is stored (the sink's :func:`~apportion.telemetry.sql.storable`).
    """

    def __init__(self, clean: Callable[[str], str] = str) -> None:
        self._clean = clean
        self._texts: dict[str, str] = {}  # names recur: each cleaned once
        self.groups: dict[tuple[int, str, str, str], _Group] = {}

    def clean(self, text: str) -> str:
        """``text`` as it is stored."""
        stored = self._texts.get(text)
        if stored is None:
            stored = self._texts[text] = self._clean(text)
        return stored

    def _group(self, day: int, pipeline: str, agent: str, kind: str) -> _Group:
        key = (day, pipeline, agent, kind)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group()
        return group

    def add(self, record: RequestUsage, sign: int = 1) -> None:
        """Roll up one record (``sign=-1``: take back what it added)."""
        clean = self.clean
        pipeline = clean(record.pipeline)
        outcome = record.outcome
        scored = outcome is not None and math.isfinite(outcome)
        rday = day_of(record.closed_at, record.opened_at)
        if rday is not None:
            counts = self._group(rday, pipeline, "", "").counts
            _count(counts, ("requests", ""), sign)
            if scored:
                _count(counts, ("scored", ""), sign)
            if record.overflow:
                _count(counts, ("overflow", ""), sign * int(record.overflow))
            for agent, n in record.refused.items():
                kind = clean(record.refused_kinds.get(agent) or "")
                _count(
                    self._group(rday, pipeline, clean(agent), kind).counts,
                    ("refused", ""),
                    sign * n,
                )
        # (level agent, level kind): [first day, cut] over the finished calls of each
        firsts: dict[tuple[str, str], list[Any]] = {}
        for call in record.calls:
            day = day_of(call.at, call.began_at)
            if day is None:
                continue
            agent, kind = clean(call.agent), clean(call.kind) if call.kind else ""
            group = self._group(day, pipeline, agent, kind)
            _count(group.statuses, clean(call.ending), sign)
            if not _finished(call):
                _count(group.counts, ("released", ""), sign)
                continue
            hit = self._call(group, call, sign)
            for level in ((agent, ""), ("", kind)) if kind else ((agent, ""),):
                seen = firsts.get(level)
                if seen is None:
                    firsts[level] = [day, hit]
                else:
                    seen[0] = min(seen[0], day)
                    seen[1] = seen[1] or hit
        for (agent, kind), (day, cut) in firsts.items():
            group = self._group(day, pipeline, agent, kind)
            _count(group.counts, ("requests", ""), sign)
            if scored:
                assert outcome is not None
                cell = group.quality.setdefault("cut" if cut else "uncut", [0, 0.0, 0.0])
                cell[0] += sign
                cell[1] += sign * outcome
                cell[2] += sign * outcome * outcome

    def _call(self, g: _Group, call: CallUsage, sign: int) -> bool:
        """Count one finished call; whether it hit its budget."""
        used_in, used_out = int(call.used_input or 0), int(call.used_output or 0)
        need = used_in + int(call.dropped_tokens or 0)
        g.calls += sign
        hist = g.histograms
        _count(hist["input"], bucket_of(used_in), sign)
        _count(hist["need"], bucket_of(need), sign)
        _count(hist["output"], bucket_of(used_out), sign)
        sums, counts = g.sums, g.counts
        _count(sums, ("used_input", ""), sign * used_in)
        _count(sums, ("used_output", ""), sign * used_out)
        g.top_input = _larger(g.top_input, used_in)
        g.top_output = _larger(g.top_output, used_out)
        if call.granted_context is not None and call.granted_output is not None:
            _count(counts, ("sized", ""), sign)
            _count(sums, ("sized", "used_input"), sign * used_in)
            _count(sums, ("sized", "used_output"), sign * used_out)
            _count(sums, ("sized", "granted_context"), sign * call.granted_context)
            _count(sums, ("sized", "granted_output"), sign * call.granted_output)
        truncated, input_cut = call.truncated, call.input_cut
        hit = bool(truncated) or bool(input_cut)
        if truncated is not None or input_cut is not None:
            _count(counts, ("hit", "known"), sign)
            if hit:
                _count(counts, ("hit", "yes"), sign)
        if truncated is not None:
            _count(counts, ("truncated", "known"), sign)
            if truncated:
                _count(counts, ("truncated", "yes"), sign)
                g.cut_output = _larger(g.cut_output, used_out)
        if input_cut is not None:
            _count(counts, ("input_cut", "known"), sign)
            if input_cut:
                _count(counts, ("input_cut", "yes"), sign)
                g.cut_input = _larger(g.cut_input, need)
        if call.extensions:
            _count(counts, ("extended", ""), sign)
        if call.overuse:
            _count(counts, ("overuse", ""), sign * int(call.overuse))
        if call.cost_usd is not None and math.isfinite(call.cost_usd):
            _count(counts, ("cost", ""), sign)
            _count(sums, ("cost", ""), sign * call.cost_usd)
        if call.model:
            _count(g.models, self.clean(call.model), sign)
        return hit

    def rows(self) -> list[dict[str, Any]]:
        """The rows to upsert, one per key (those that change nothing left out)."""
        out: list[dict[str, Any]] = []
        for (day, pipeline, agent, kind), g in self.groups.items():
            head = {"day": day, "pipeline": pipeline, "agent": agent, "kind": kind}
            cells: list[tuple[str, str, int, float, float, int | None]] = [
                ("calls", "", g.calls, 0.0, 0.0, None)
            ]
            sized = g.counts.get(("sized", ""), 0)
            for (measure, key), n in g.counts.items():
                if measure not in ("sized", "cost"):  # those with their sums below
                    cells.append((measure, key, n, 0.0, 0.0, None))
            for (measure, key), total in g.sums.items():
                if measure == "cost":
                    n = g.counts.get(("cost", ""), 0)
                elif measure == "sized":
                    n = sized
                else:
                    n = g.calls
                top = {"used_input": g.top_input, "used_output": g.top_output}.get(measure)
                cells.append((measure, key, n, float(total), 0.0, top))
            for name, histogram in g.histograms.items():
                cells.extend(
                    (name, str(bucket), n, 0.0, 0.0, None) for bucket, n in histogram.items()
                )
            cells.extend(("model", model, n, 0.0, 0.0, None) for model, n in g.models.items())
            cells.extend(("status", name, n, 0.0, 0.0, None) for name, n in g.statuses.items())
            for name, (scored, total, squares) in g.quality.items():
                cells.append(("quality", name, int(scored), total, squares, None))
            if g.cut_output is not None:
                cells.append(("cut_top", "output", 0, 0.0, 0.0, g.cut_output))
            if g.cut_input is not None:
                cells.append(("cut_top", "input", 0, 0.0, 0.0, g.cut_input))
            for measure, key, count, total, total2, top in cells:
                if count or total or total2 or top is not None:
                    out.append(
                        head
                        | {
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
