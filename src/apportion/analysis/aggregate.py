"""A report's figures aggregated in the database: SQL over raw rows, plus daily rollups.

The report (:func:`apportion.analysis.report.report_database`) asks the database for
aggregates instead of reading every call: per ``(agent, kind)`` the counts, sums and
maxima of the finished calls, the calls by how they ended, the models, and for the
percentiles the number of calls per distinct token count (``GROUP BY agent, kind,
used_input``: a few thousand rows per agent however many calls); per agent and per kind
the number of requests and the outcome sums of the requests that were cut and not (a
``GROUP BY request_id`` inside the database). Percentiles are then read exactly from
those counts (:func:`~apportion.analysis.stats.percentile_of_counts`: the same linear
interpolation as :func:`~apportion.analysis.stats.percentile`). The same queries run on
SQLite and PostgreSQL (SQLAlchemy Core).

Whole days can come from the daily rollups (:mod:`apportion.telemetry.rollups`) instead
of raw rows: then the raw rows of those days are left out of the queries. Counts, sums
and maxima read from the rollups are exact (a maximum is the only figure a request
written again cannot take back). The histograms can come from the rollups for fewer days
(:attr:`Window.histogram_end_day`: the days whose raw rows were pruned) and raw, exact,
for the rest; when any come from the rollups, every histogram (raw ones bucketed the same
way) is merged, so percentiles are within
:data:`~apportion.telemetry.rollups.RELATIVE_ERROR` (1%) of the exact ones. An agent's
request belongs to the day of its first finished call in it, in the rollups and in the
raw rows alike, so a request whose calls span midnight counts once.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from apportion.telemetry.rollups import DAY, bucket_of, bucket_value
from apportion.telemetry.sql import root_of_record

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy import Connection, Table
    from sqlalchemy.sql.elements import ColumnElement

    from apportion.analysis.trees import CallCounts
    from apportion.telemetry.records import RequestUsage
    from apportion.telemetry.sql import Database

__all__ = ["Aggregates", "Group", "Window", "aggregate", "tree_counts"]

HISTOGRAMS: Final = ("input", "need", "output")
"""The token counts a report takes percentiles of: input used, input needed, output."""


@dataclass(frozen=True)
class Window:
    """The rows a report covers.

    Attributes:
        since: calls settled (or begun) at or after this clock time, requests closed (or
            opened) at or after it (``None``: from the first).
        until: and before this time (``None``: to the last).
        pipeline: only this pipeline's (as stored).
        request_prefix: only the calls and requests whose request id starts with it (a
            gateway tenant's ``TENANT/``); the rollups keep no request ids, so a window
            with a prefix reads raw rows only.
        first_day: the first day read from the rollups (``None``: from the first).
        end_day: the day after the last read from the rollups (no rollups when
            ``first_day`` is not below it).
        histogram_end_day: the day after the last whose histograms come from the
            rollups too (``None``: none do; at most ``end_day``); the histograms of the
            other days are read raw, exact.
    """

    since: float | None = None
    until: float | None = None
    pipeline: str | None = None
    request_prefix: str | None = None
    first_day: int | None = None
    end_day: int | None = None
    histogram_end_day: int | None = None

    @property
    def rolled(self) -> bool:
        """Whether some days are read from the rollups."""
        return self.rolled_days(self.end_day) is not None

    @property
    def histograms_rolled(self) -> bool:
        """Whether some days' histograms are read from the rollups (percentiles within 1%)."""
        return self.rolled_days(self._histogram_end) is not None

    @property
    def _histogram_end(self) -> int | None:
        if self.histogram_end_day is None or self.end_day is None:
            return None
        return min(self.histogram_end_day, self.end_day)

    def rolled_days(self, end: int | None) -> tuple[int | None, int] | None:
        """``(first_day, end)`` when that range of days is not empty, else ``None``."""
        if end is None or (self.first_day is not None and self.first_day >= end):
            return None
        return self.first_day, end

    def histogram_days(self) -> tuple[int | None, int] | None:
        """The days whose histograms come from the rollups (``None``: none)."""
        return self.rolled_days(self._histogram_end)


@dataclass
class Group:
    """What the calls of one agent (or one agent kind) add up to."""

    calls: int = 0
    released: int = 0
    requests: int = 0
    values: dict[str, Counter[int]] = field(
        default_factory=lambda: {h: Counter() for h in HISTOGRAMS}
    )
    buckets: dict[str, Counter[int]] = field(
        default_factory=lambda: {h: Counter() for h in HISTOGRAMS}
    )
    input_sum: int = 0
    output_sum: int = 0
    input_max: int | None = None
    output_max: int | None = None
    sized: int = 0
    sized_used_input: int = 0
    sized_used_output: int = 0
    sized_granted_context: int = 0
    sized_granted_output: int = 0
    hit_known: int = 0
    hits: int = 0
    truncated_known: int = 0
    truncated: int = 0
    input_cut_known: int = 0
    input_cut: int = 0
    extended: int = 0
    overuse: int = 0
    cost_calls: int = 0
    cost: float = 0.0
    models: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    cut_top_output: int | None = None
    cut_top_input: int | None = None
    quality: dict[str, list[float]] = field(
        default_factory=lambda: {"cut": [0, 0.0, 0.0], "uncut": [0, 0.0, 0.0]}
    )
    members: set[str] = field(default_factory=set)
    refused: int = 0

    def histogram(self, name: str) -> list[tuple[float, int]]:
        """``(value, calls)`` pairs in value order: exact, or bucketed when rollups are in."""
        if not self.buckets[name]:
            return sorted((float(v), n) for v, n in self.values[name].items() if n)
        merged = Counter(self.buckets[name])
        for value, count in self.values[name].items():
            merged[bucket_of(value)] += count
        return sorted((bucket_value(b), n) for b, n in merged.items() if n)


def _opt(value: Any) -> int | None:
    """An integer from the database (PostgreSQL sums are decimals), or ``None``."""
    return None if value is None else int(value)


def _top(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass
class Aggregates:
    """Everything a report reads from the database, aggregated.

    Attributes:
        agents: per agent.
        kinds: per agent kind.
        requests: requests in the window.
        scored: of them, those with an outcome score.
        overflow: tokens used beyond the requests' ceilings.
        rolled: whether some days' histograms were read from the rollups (percentiles
            within 1%).
    """

    agents: dict[str, Group] = field(default_factory=dict)
    kinds: dict[str, Group] = field(default_factory=dict)
    requests: int = 0
    scored: int = 0
    overflow: int = 0
    rolled: bool = False

    def _groups(self, agent: str, kind: str) -> list[Group]:
        groups = [_group(self.agents, agent)]
        if kind:
            group = _group(self.kinds, kind)
            group.members.add(agent)
            groups.append(group)
        return groups


def _group(groups: dict[str, Group], name: str) -> Group:
    group = groups.get(name)
    if group is None:
        group = groups[name] = Group()
    return group


# ---------------------------------------------------------------------------- SQL


def _time_filter(
    column: ColumnElement[Any], window: Window, *, exclude: tuple[int | None, int] | None = None
) -> list[ColumnElement[Any]]:
    """The window's time bounds on ``column``, leaving out the days ``exclude`` when given."""
    where: list[ColumnElement[Any]] = []
    if window.since is not None:
        where.append(column >= window.since)
    if window.until is not None:
        where.append(column < window.until)
    if exclude is not None:
        where.append(_outside(column, exclude))
    return where


def _outside(column: ColumnElement[Any], days: tuple[int | None, int]) -> ColumnElement[Any]:
    """``column`` (a time) is not in the days ``[first, end)``, or has no time."""
    from sqlalchemy import or_

    first, end = days
    outside = [column.is_(None), column >= end * DAY]
    if first is not None:
        outside.append(column < first * DAY)
    return or_(*outside)


def _prefix_filter(column: Any, window: Window) -> list[ColumnElement[Any]]:
    """``column`` (a request id) starts with the window's request prefix, if it has one."""
    if window.request_prefix is None:
        return []
    return [column.startswith(window.request_prefix, autoescape=True)]


def _columns(conn: Connection, table: Table) -> dict[str, Any]:
    """The table's columns by name; a column an older database lacks reads as NULL."""
    from sqlalchemy import inspect, null

    held = {c["name"] for c in inspect(conn).get_columns(table.name)}
    return {c.name: (c if c.name in held else null()) for c in table.columns}


def aggregate(db: Database, window: Window) -> Aggregates:
    """The aggregates of a window (see the module docstring).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed (the caller names it).
    """
    out = Aggregates(rolled=window.histograms_rolled)
    with db.engine.connect() as conn:
        statements = _raw(conn, db, window)
        if window.rolled:
            statements["rollups"] = _rollups_query(db.tables.daily, window)
    results = _run(db, statements)
    _apply_raw(results, out)
    if window.rolled:
        _apply_rollups(results["rollups"], out)
    return out


PARALLEL: Final = 3
"""Statements run at once, each on a connection of its own (the database does the work)."""


def _run(db: Database, statements: dict[str, Any]) -> dict[str, list[Any]]:
    """Every statement's rows, several statements at once."""
    from concurrent.futures import ThreadPoolExecutor

    def rows(statement: Any) -> list[Any]:
        with db.engine.connect() as conn:
            return list(conn.execute(statement).all())

    # the slowest first, so the last ones to start are the short ones
    with ThreadPoolExecutor(PARALLEL, thread_name_prefix="apportion-report") as pool:
        futures = {name: pool.submit(rows, statement) for name, statement in statements.items()}
        return {name: future.result() for name, future in futures.items()}


def _finished(c: dict[str, Any]) -> Any:
    """Whether a call finished with usage (SQL)."""
    from sqlalchemy import and_

    return and_(
        c["settled"] == "finish", c["used_input"].is_not(None), c["used_output"].is_not(None)
    )


def _status(c: dict[str, Any]) -> Any:
    """How a call ended (SQL): :attr:`~apportion.telemetry.records.CallUsage.ending`."""
    from sqlalchemy import and_, case, or_

    return case(
        (and_(c["status"].is_not(None), c["status"] != ""), c["status"]),
        (
            or_(c["used_input"].is_(None), c["used_output"].is_(None)),
            case((c["settled"] == "release", "released"), else_="unknown"),
        ),
        (c["truncated"].is_(None), "unknown"),
        (c["truncated"] == True, "cut"),  # noqa: E712 - SQL, not Python
        else_="completed",
    )


def tree_counts(
    db: Database, window: Window, requests: Mapping[str, RequestUsage]
) -> list[CallCounts]:
    """The calls of the trees' requests summed up per request and status (in the database).

    Args:
        db: the database.
        window: the window (trees are read from raw rows only: no day is left out).
        requests: the trees' requests (:meth:`~apportion.telemetry.sql.Database.
            load_tree_requests`): the calls of the children in it and of their roots count.
    """
    from sqlalchemy import and_, case, func, or_, select

    out: list[CallCounts] = []
    with db.engine.connect() as conn:
        c = _columns(conn, db.tables.calls)
        r = db.tables.requests.c
        at = func.coalesce(c["at"], c["began_at"])
        where = _time_filter(at, window)
        rwhere = _time_filter(func.coalesce(r.closed_at, r.opened_at), window)
        if window.pipeline is not None:
            where.append(c["pipeline"] == window.pipeline)
            rwhere.append(r.pipeline == window.pipeline)
        where += _prefix_filter(c["request_id"], window)
        rwhere += _prefix_filter(r.request_id, window)
        children = select(r.request_id).where(*rwhere, r.parent_id.is_not(None))
        roots = select(r.root_id).where(*rwhere, r.parent_id.is_not(None), r.root_id.is_not(None))
        finished = _finished(c)
        costed = and_(finished, c["cost_usd"].is_not(None))

        def query(members: Any) -> Any:
            status = _status(c)  # one expression: PostgreSQL matches GROUP BY by its text
            return (
                select(
                    c["request_id"],
                    status,
                    func.count(),
                    func.sum(case((finished, 1), else_=0)),
                    func.sum(case((finished, c["used_input"] + c["used_output"]), else_=0)),
                    func.sum(case((costed, c["cost_usd"]), else_=None)),
                    func.sum(case((costed, 1), else_=0)),
                )
                .where(*where, members)
                .group_by(c["request_id"], status)
            )

        batches = [query(or_(c["request_id"].in_(children), c["request_id"].in_(roots)))]
        known = {rec.root_id for rec in requests.values() if rec.parent_id is not None}
        derived = sorted(
            {root_of_record(rec) for rec in requests.values() if rec.parent_id is not None}
            - known
            - {rid for rid, rec in requests.items() if rec.parent_id is not None}
        )
        for start in range(0, len(derived), 500):
            batches.append(query(c["request_id"].in_(derived[start : start + 500])))
        for statement in batches:
            for rid, name, n, done, tokens, cost, n_costed in conn.execute(statement):
                out.append(
                    (
                        rid,
                        name,
                        int(n),
                        int(done or 0),
                        int(tokens or 0),
                        float(cost or 0.0),
                        int(n_costed or 0),
                    )
                )
    return out


def _raw(conn: Connection, db: Database, window: Window) -> dict[str, Any]:
    """The statements over the raw rows of the window, by name."""
    from sqlalchemy import and_, case, func, literal, or_, select

    c = _columns(conn, db.tables.calls)
    at = func.coalesce(c["at"], c["began_at"])
    rolled = window.rolled_days(window.end_day)
    chosen = [] if window.pipeline is None else [c["pipeline"] == window.pipeline]
    chosen += _prefix_filter(c["request_id"], window)
    where = [*_time_filter(at, window, exclude=rolled), *chosen]
    # the histograms: raw (exact) on the days whose rows are kept, even where the other
    # figures come from the rollups
    histogram_where = [*_time_filter(at, window, exclude=window.histogram_days()), *chosen]
    finished = _finished(c)
    kind = func.coalesce(c["kind"], "")
    status = _status(c)
    truncated = c["truncated"] == True  # noqa: E712
    input_cut = c["input_cut"] == True  # noqa: E712
    hit = or_(truncated, input_cut)
    hit_known = or_(c["truncated"].is_not(None), c["input_cut"].is_not(None))
    sized = and_(finished, c["granted_context"].is_not(None), c["granted_output"].is_not(None))
    need = c["used_input"] + func.coalesce(c["dropped_tokens"], 0)

    def count(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    def total(condition: Any, value: Any) -> Any:
        return func.sum(case((condition, value), else_=None))

    def top(condition: Any, value: Any) -> Any:
        return func.max(case((condition, value), else_=None))

    main = (
        select(
            c["agent"],
            kind,
            status,
            func.count(),
            count(finished),
            total(finished, c["used_input"]),
            top(finished, c["used_input"]),
            total(finished, c["used_output"]),
            top(finished, c["used_output"]),
            count(sized),
            total(sized, c["used_input"]),
            total(sized, c["used_output"]),
            total(sized, c["granted_context"]),
            total(sized, c["granted_output"]),
            count(and_(finished, hit_known)),
            count(and_(finished, hit)),
            count(and_(finished, c["truncated"].is_not(None))),
            count(and_(finished, truncated)),
            count(and_(finished, c["input_cut"].is_not(None))),
            count(and_(finished, input_cut)),
            count(and_(finished, c["extensions"] > 0)),
            total(finished, c["overuse"]),
            count(and_(finished, c["cost_usd"].is_not(None))),
            total(finished, c["cost_usd"]),
            top(and_(finished, truncated), c["used_output"]),
            top(and_(finished, input_cut), need),
        )
        .where(*where)
        .group_by(c["agent"], kind, status)
    )
    statements: dict[str, Any] = {}
    done = [*where, finished]
    histogram_done = [*histogram_where, finished]
    # the histograms of input needed: the input's, but for the calls with input cut away
    cut_away = and_(*histogram_done, c["dropped_tokens"] > 0)
    statements["quality:agent"] = None  # placeholders keep the slowest first
    statements["main"] = main
    statements["input"] = (
        select(c["agent"], kind, c["used_input"], func.count())
        .where(*histogram_done)
        .group_by(c["agent"], kind, c["used_input"])
    )
    statements["output"] = (
        select(c["agent"], kind, c["used_output"], func.count())
        .where(*histogram_done)
        .group_by(c["agent"], kind, c["used_output"])
    )
    statements["need"] = (
        select(c["agent"], kind, c["used_input"], need, func.count())
        .where(cut_away)
        .group_by(c["agent"], kind, c["used_input"], need)
    )
    statements["models"] = (
        select(c["agent"], kind, c["model"], func.count())
        .where(*done, c["model"].is_not(None), c["model"] != "")
        .group_by(c["agent"], kind, c["model"])
    )
    r = _columns(conn, db.tables.requests)
    opened = func.coalesce(r["closed_at"], r["opened_at"])
    rwhere = _time_filter(opened, window, exclude=rolled)
    if window.pipeline is not None:
        rwhere.append(r["pipeline"] == window.pipeline)
    rwhere += _prefix_filter(r["request_id"], window)
    # quality joins the requests of the whole window (the calls of rolled-up days are out)
    scored = _time_filter(opened, window)
    for name, level in (("quality:agent", "agent"), ("quality:kind", "kind")):
        per_request = (
            select(
                c[level].label("level"),
                c["request_id"].label("request_id"),
                func.max(case((hit, 1), else_=0)).label("cut"),
            )
            .where(*done, c[level].is_not(None), *_first_in_raw(db, c, level, rolled))
            .group_by(c[level], c["request_id"])
            .subquery()
        )
        requests = db.tables.requests
        joined = per_request.outerjoin(
            requests,
            and_(
                requests.c.request_id == per_request.c.request_id,
                *scored,
                *([requests.c.pipeline == window.pipeline] if window.pipeline is not None else []),
            ),
        )
        outcome = requests.c.outcome
        statements[name] = (
            select(
                per_request.c.level,
                per_request.c.cut,
                func.count(),
                func.count(outcome),
                func.sum(outcome),
                func.sum(outcome * outcome),
            )
            .select_from(joined)
            .group_by(per_request.c.level, per_request.c.cut)
        )
    statements["totals"] = select(
        func.count(), func.count(r["outcome"]), func.sum(r["overflow"])
    ).where(*rwhere)
    statements["refusals"] = select(r["refused"], r["refused_kinds"]).where(
        *rwhere, r["refused"].is_not(None), r["refused"] != literal("")
    )
    return statements


def _first_in_raw(
    db: Database, c: dict[str, Any], level: str, rolled: tuple[int | None, int] | None
) -> list[ColumnElement[Any]]:
    """The agent (or kind) of a raw call finished no call of its request on a rolled day.

    The rollups count an agent's request on the day of its first finished call in it: the
    raw rows count it only when that call is not on a rolled-up day (else it would count
    twice when its calls span midnight).
    """
    from sqlalchemy import exists, func, not_, select
    from sqlalchemy.sql.elements import ColumnClause

    if rolled is None or not isinstance(c[level], ColumnClause):
        return []
    other = db.tables.calls.alias("rolled_call")
    o = {name: other.c[name] if isinstance(col, ColumnClause) else col for name, col in c.items()}
    earlier = select(o["request_id"]).where(
        o["request_id"] == c["request_id"],
        o[level] == c[level],
        _finished(o),
        not_(_outside(func.coalesce(o["at"], o["began_at"]), rolled)),
    )
    return [~exists(earlier)]


def _apply_raw(results: dict[str, list[Any]], out: Aggregates) -> None:
    """Add the rows of the raw statements to ``out``."""
    for row in results["main"]:
        agent, k, name, n_all, n = row[0], row[1], row[2], row[3], row[4]
        for g in out._groups(agent, k):
            g.statuses[name] += int(n_all)
            g.released += int(n_all) - int(n or 0)
            if not n:
                continue
            g.calls += int(n)
            g.input_sum += int(row[5] or 0)
            g.input_max = _top(g.input_max, _opt(row[6]))
            g.output_sum += int(row[7] or 0)
            g.output_max = _top(g.output_max, _opt(row[8]))
            g.sized += int(row[9] or 0)
            g.sized_used_input += int(row[10] or 0)
            g.sized_used_output += int(row[11] or 0)
            g.sized_granted_context += int(row[12] or 0)
            g.sized_granted_output += int(row[13] or 0)
            g.hit_known += int(row[14] or 0)
            g.hits += int(row[15] or 0)
            g.truncated_known += int(row[16] or 0)
            g.truncated += int(row[17] or 0)
            g.input_cut_known += int(row[18] or 0)
            g.input_cut += int(row[19] or 0)
            g.extended += int(row[20] or 0)
            g.overuse += int(row[21] or 0)
            g.cost_calls += int(row[22] or 0)
            g.cost += float(row[23] or 0.0)
            g.cut_top_output = _top(g.cut_top_output, _opt(row[24]))
            g.cut_top_input = _top(g.cut_top_input, _opt(row[25]))
    for name in ("input", "output"):
        for agent, k, v, n in results[name]:
            for g in out._groups(agent, k):
                g.values[name][int(v)] += int(n)
                if name == "input":
                    g.values["need"][int(v)] += int(n)
    for agent, k, used, v, n in results["need"]:
        for g in out._groups(agent, k):
            g.values["need"][int(used)] -= int(n)
            g.values["need"][int(v)] += int(n)
    for agent, k, model, n in results["models"]:
        for g in out._groups(agent, k):
            g.models[model] += int(n)
    for level, groups in (("agent", out.agents), ("kind", out.kinds)):
        for name, cut, n, n_scored, total, squares in results[f"quality:{level}"]:
            g = _group(groups, name)
            g.requests += int(n)
            if n_scored:
                cell = g.quality["cut" if cut else "uncut"]
                cell[0] += n_scored
                cell[1] += float(total or 0.0)
                cell[2] += float(squares or 0.0)
    n, n_scored, overflow = results["totals"][0]
    out.requests += int(n or 0)
    out.scored += int(n_scored or 0)
    out.overflow += int(overflow or 0)
    for raw, raw_kinds in results["refusals"]:
        kinds = _json_map(raw_kinds)
        for agent, count_ in _json_map(raw).items():
            if type(count_) is not int or count_ <= 0 or not isinstance(agent, str):
                continue
            _group(out.agents, agent).refused += count_
            kind_name = kinds.get(agent)
            if isinstance(kind_name, str) and kind_name:
                _group(out.kinds, kind_name).refused += count_


def _json_map(raw: Any) -> dict[Any, Any]:
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _rollups_query(daily: Table, window: Window) -> Any:
    """The statement summing the rollups of the window's whole days.

    The histograms' rows only for the days whose histograms come from the rollups.
    """
    from sqlalchemy import func, or_, select

    d = daily.c
    where = [d.day < window.end_day]
    if window.first_day is not None:
        where.append(d.day >= window.first_day)
    histogram_days = window.histogram_days()
    if histogram_days is None:
        where.append(d.measure.not_in(HISTOGRAMS))
    elif histogram_days[1] != window.end_day:
        where.append(or_(d.measure.not_in(HISTOGRAMS), d.day < histogram_days[1]))
    if window.pipeline is not None:
        where.append(d.pipeline == window.pipeline)
    query = (
        select(
            d.agent,
            d.kind,
            d.measure,
            d.key,
            func.sum(d["count"]),
            func.sum(d.total),
            func.sum(d.total2),
            func.max(d.top),
        )
        .where(*where)
        .group_by(d.agent, d.kind, d.measure, d.key)
    )
    return query


def _apply_rollups(rows: list[Any], out: Aggregates) -> None:
    """Add the summed rollups to ``out``."""
    for agent, kind, measure, key, n, s, s2, top in rows:
        n, s, s2, top = int(n or 0), float(s or 0.0), float(s2 or 0.0), _opt(top)
        if not agent:
            if not kind:
                if measure == "requests":
                    out.requests += n
                elif measure == "scored":
                    out.scored += n
                elif measure == "overflow":
                    out.overflow += n
                continue
            groups = [_group(out.kinds, kind)]
        elif measure in ("requests", "quality"):
            groups = [_group(out.agents, agent)]
        elif measure == "refused":
            groups = [_group(out.agents, agent)]
            if kind:
                groups.append(_group(out.kinds, kind))
        else:
            groups = out._groups(agent, kind)
        for g in groups:
            _add_rolled(g, measure, key, n, s, s2, top)


def _add_rolled(g: Group, measure: str, key: str, n: int, s: float, s2: float, top: Any) -> None:
    if measure == "calls":
        g.calls += n
    elif measure == "released":
        g.released += n
    elif measure == "status":
        g.statuses[key] += n
    elif measure in HISTOGRAMS:
        g.buckets[measure][int(key)] += n
    elif measure == "used_input":
        g.input_sum += round(s)
        g.input_max = _top(g.input_max, top)
    elif measure == "used_output":
        g.output_sum += round(s)
        g.output_max = _top(g.output_max, top)
    elif measure == "sized":
        if key == "used_input":
            g.sized += n
        setattr(g, f"sized_{key}", getattr(g, f"sized_{key}") + round(s))
    elif measure in ("hit", "truncated", "input_cut"):
        name = {"hit": "hit", "truncated": "truncated", "input_cut": "input_cut"}[measure]
        if key == "known":
            setattr(g, f"{name}_known", getattr(g, f"{name}_known") + n)
        elif measure == "hit":
            g.hits += n
        else:
            setattr(g, name, getattr(g, name) + n)
    elif measure == "extended":
        g.extended += n
    elif measure == "overuse":
        g.overuse += n
    elif measure == "cost":
        g.cost_calls += n
        g.cost += s
    elif measure == "model":
        g.models[key] += n
    elif measure == "cut_top":
        if key == "output":
            g.cut_top_output = _top(g.cut_top_output, top)
        else:
            g.cut_top_input = _top(g.cut_top_input, top)
    elif measure == "refused":
        g.refused += n
    elif measure == "requests":
        g.requests += n
    elif measure == "quality":
        cell = g.quality[key]
        cell[0] += n
        cell[1] += s
        cell[2] += s2
