"""The report of a database over a window of time, aggregated in the database.

:func:`report_database` is what ``apportion report`` runs (and what a dashboard calls for
a window): the same document as :func:`~apportion.analysis.report.build_report` over the
rows :meth:`~apportion.telemetry.sql.Database.load` would read, without reading them into
memory (see :mod:`apportion.analysis.aggregate` for how, and for what changes when days
come from the daily rollups).

Which days come from the rollups (``rollups``):

- ``auto`` (default): every whole UTC day of the window before today, but the token
  histograms (the percentiles) only for the days whose raw rows were pruned
  (``apportion prune``): the rest of them raw. Nothing pruned: every figure exact, as
  ``build_report`` gives it, while counts, sums and outcomes of past days are read from a
  few rows per agent and day.
- ``always``: every whole UTC day of the window before today, histograms too (fastest
  over long windows; percentiles within 1%).

In both, the window's partial days, today and rows without a time are read raw.
- ``never``: raw rows only (pruned days are missing).

Request trees are built from the raw rows of the window (rollups keep no trees), only
when some request in it is a child.

When writers lost telemetry records before they reached the database (a full buffer, a
database down for longer than the buffer holds, a record refused), they say so in it
(:meth:`~apportion.telemetry.sql.Database.record_losses`): the document then has
``telemetry_lost`` (``dropped_full``, ``dropped_failed``, ``discarded``, ``total``, over
all time, not only the window), and ``apportion report`` warns that its figures
undercount.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from apportion.analysis.aggregate import Aggregates, Group, Window, aggregate, tree_counts
from apportion.analysis.figures import SPREAD_PERCENTILES
from apportion.analysis.report import (
    PERCENTILES,
    Thresholds,
    _over_budgeted,
    _success_rate,
    _up,
    assemble,
    rollouts_of,
)
from apportion.analysis.stats import mean_ci_of_sums, percentile_of_counts
from apportion.analysis.statuses import ordered
from apportion.analysis.trees import build_trees
from apportion.errors import DatabaseUnavailable, InvalidArgument, SchemaVersionError
from apportion.telemetry.records import SCHEMA_VERSION
from apportion.telemetry.rollups import DAY
from apportion.telemetry.sql import Database, Dataset, open_database, storable

__all__ = ["ROLLUP_MODES", "DatabaseReport", "report_database"]

ROLLUP_MODES: Final = ("auto", "always", "never")
"""The values ``rollups`` accepts (see the module docstring)."""


@dataclass(frozen=True)
class DatabaseReport:
    """A report of a window, with what its HTML page draws besides the document.

    Attributes:
        document: the JSON document (:func:`~apportion.analysis.report.build_report`'s).
        spreads: per agent, ``{"input": [...], "output": [...]}``: the
            :data:`~apportion.analysis.figures.SPREAD_PERCENTILES` of its tokens per
            finished call (at least 1).
        budgets: per agent, the recommended static budget with its number of calls
            (as :func:`~apportion.analysis.profile.profile_budgets` gives it).
    """

    document: dict[str, Any]
    spreads: dict[str, dict[str, list[float]]]
    budgets: dict[str, dict[str, Any]]


def _check_time(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(name, value, "must be a finite clock time (seconds since the epoch)")
    return float(value)


def report_database(
    url: str,
    *,
    since: float | None = None,
    until: float | None = None,
    pipeline: str | None = None,
    thresholds: Thresholds | None = None,
    rollups: str = "auto",
    now: float | None = None,
    request_prefix: str | None = None,
) -> DatabaseReport:
    """The report of a telemetry database over a window (see the module docstring).

    Args:
        url: the database (a URL or a SQLite file's path).
        since: the window's start, clock time (``None``: from the first row).
        until: its end, excluded (``None``: to the last row).
        pipeline: only this pipeline's calls and requests.
        thresholds: the flags' thresholds and the recommendation's settings.
        rollups: ``auto``, ``always`` or ``never`` (which days come from the rollups).
        now: the clock time taken as now (for ``always``: today is read raw).
        request_prefix: only the calls and requests whose id starts with it (a gateway
            tenant's ``TENANT/``: its own); read from raw rows only (the rollups keep no
            request ids, so days pruned to rollups are missing), without the policy's
            rollouts (they are not any one tenant's).

    Raises:
        InvalidArgument: a bad time, ``until`` not after ``since``, an unknown
            ``rollups``.
        DatabaseUnavailable: the database cannot be read.
        SchemaVersionError: it was written by a newer apportion.
        MissingExtra: SQLAlchemy or the database driver is missing.
    """
    since, until = _check_time("since", since), _check_time("until", until)
    if since is not None and until is not None and until <= since:
        raise InvalidArgument("until", until, f"must be after since ({since})")
    if rollups not in ROLLUP_MODES:
        raise InvalidArgument("rollups", rollups, f"must be one of {', '.join(ROLLUP_MODES)}")
    if pipeline is not None and not isinstance(pipeline, str):
        raise InvalidArgument("pipeline", pipeline, "must be a pipeline name (text)")
    if request_prefix is not None and (not isinstance(request_prefix, str) or not request_prefix):
        raise InvalidArgument("request_prefix", request_prefix, "the start of request ids")
    thresholds = thresholds or Thresholds()
    from sqlalchemy.exc import SQLAlchemyError

    with open_database(url) as db:
        try:
            return _report(db, since, until, pipeline, thresholds, rollups, now, request_prefix)
        except SQLAlchemyError as exc:
            from apportion.telemetry.sql import _reason

            raise DatabaseUnavailable(db.shown, _reason(exc, db.url)) from None


def _report(
    db: Database,
    since: float | None,
    until: float | None,
    pipeline: str | None,
    thresholds: Thresholds,
    rollups: str,
    now: float | None,
    request_prefix: str | None = None,
) -> DatabaseReport:
    if db.version is None:
        document = assemble(
            source=db.shown,
            empty_database=True,
            since=since,
            until=until,
            pipeline=pipeline,
            requests=0,
            requests_scored=0,
            overflow=0,
            thresholds=thresholds,
            agents={},
            kinds={},
            rollouts=[],
            trees=build_trees(Dataset(db.shown, (), {})),
        )
        return DatabaseReport(document, {}, {})
    stored = storable(pipeline) if pipeline is not None else None
    if request_prefix is not None:  # the rollups keep no request ids: raw rows only
        window = Window(since, until, stored, request_prefix)
    else:
        window = _window(db, since, until, stored, rollups, time.time() if now is None else now)
    found = aggregate(db, window)
    agents = {name: _figures(g, thresholds) for name, g in _listed(found.agents)}
    kinds = {
        name: {"members": len(g.members), **_figures(g, thresholds)}
        for name, g in _listed(found.kinds)
    }
    if request_prefix is None:
        rollout_set = _rollouts(db, since, until)
    else:
        rollout_set = Dataset(db.shown, (), {})
    document = assemble(
        source=db.shown,
        empty_database=_empty(db, found, rollout_set),
        since=since,
        until=until,
        pipeline=pipeline,
        requests=found.requests,
        requests_scored=found.scored,
        overflow=found.overflow,
        thresholds=thresholds,
        agents=agents,
        kinds=kinds,
        rollouts=rollouts_of(rollout_set),
        trees=_trees(db, window),
    )
    lost = db.losses()
    if lost:  # what the writers never got into the database: every figure undercounts
        document["telemetry_lost"] = {**lost, "total": sum(lost.values())}
    spreads = {
        name: {side: _spread(g, side) for side in ("input", "output")}
        for name, g in _listed(found.agents)
    }
    budgets = {
        name: {**f["recommended"], "calls": f["calls"]}
        for name, f in agents.items()
        if f["recommended"] is not None
    }
    return DatabaseReport(document, spreads, budgets)


def _listed(groups: Mapping[str, Group]) -> list[tuple[str, Group]]:
    return [(name, groups[name]) for name in sorted(groups) if groups[name].calls > 0]


def _window(
    db: Database,
    since: float | None,
    until: float | None,
    pipeline: str | None,
    rollups: str,
    now: float,
) -> Window:
    """Which whole days of the window come from the rollups, and for which the histograms."""
    plain = Window(since, until, pipeline)
    if rollups == "never" or not db.has_rollups():
        return plain
    end = math.floor(now / DAY)
    if until is not None:
        end = min(end, math.floor(until / DAY))
    first = None if since is None else math.ceil(since / DAY)
    if first is not None and first >= end:
        return plain
    if rollups == "always":
        histogram_end: int | None = end
    else:  # auto: exact histograms wherever the raw rows are kept
        pruned = db.pruned_before()
        histogram_end = None if pruned is None else math.floor(pruned / DAY)
    return Window(
        since, until, pipeline, first_day=first, end_day=end, histogram_end_day=histogram_end
    )


def _empty(db: Database, found: Aggregates, rollouts: Dataset) -> bool:
    """Whether the database holds no telemetry at all (not only none in the window)."""
    from sqlalchemy import func, select

    t = db.tables
    with db.engine.connect() as conn:
        newest = conn.execute(select(func.max(t.requests.c.schema_version))).scalar()
        if newest is not None and int(newest) > SCHEMA_VERSION:
            raise SchemaVersionError(int(newest), SCHEMA_VERSION, db.shown)
        if newest is not None or rollouts.rollouts:
            return False
        if db.has_rollups():
            return conn.execute(select(t.daily.c.day).limit(1)).first() is None
    return True


def _rollouts(db: Database, since: float | None, until: float | None) -> Dataset:
    with db.engine.connect() as conn:
        records = db.rollout_records(conn, since)
    if until is not None:
        records = tuple(r for r in records if r.at is None or r.at < until)
    return Dataset(db.shown, (), {}, rollouts=records)


def _trees(db: Database, window: Window) -> dict[str, Any]:
    """The ``trees`` part of the report: the window's trees, from its raw rows."""
    from sqlalchemy import func, select

    r = db.tables.requests.c
    plain = Window(window.since, window.until, window.pipeline, window.request_prefix)
    with db.engine.connect() as conn:
        held = {c["name"] for c in _inspect_columns(conn, db.tables.requests.name)}
        if "parent_id" not in held:
            return build_trees(Dataset(db.shown, (), {}))
        when = func.coalesce(r.closed_at, r.opened_at)
        where = []
        if window.since is not None:
            where.append(when >= window.since)
        if window.until is not None:
            where.append(when < window.until)
        if window.pipeline is not None:
            where.append(r.pipeline == window.pipeline)
        if window.request_prefix is not None:
            where.append(r.request_id.startswith(window.request_prefix, autoescape=True))
        child = select(r.request_id).where(*where, r.parent_id.is_not(None)).limit(1)
        if conn.execute(child).first() is None:
            return build_trees(Dataset(db.shown, (), {}))
        requests = db.load_tree_requests(
            conn, since=window.since, until=window.until, pipeline=window.pipeline
        )
    if window.request_prefix is not None:
        prefix = window.request_prefix
        requests = {k: v for k, v in requests.items() if k.startswith(prefix)}
    counts = tree_counts(db, plain, requests)
    return build_trees(Dataset(db.shown, (), requests), counts=counts)


def _inspect_columns(conn: Any, name: str) -> list[Any]:
    from sqlalchemy import inspect

    return list(inspect(conn).get_columns(name))


# ------------------------------------------------------------------ figures


def _spread(g: Group, side: str) -> list[float]:
    clamped: Counter[float] = Counter()
    for value, count in g.histogram(side):
        clamped[max(value, 1.0)] += count
    pairs = sorted(clamped.items())
    return [percentile_of_counts(pairs, q) for q in SPREAD_PERCENTILES]


def _tokens(g: Group, side: str, total: int, top: int | None) -> dict[str, Any]:
    pairs = g.histogram(side)
    out: dict[str, Any] = {f"p{q}": percentile_of_counts(pairs, q) for q in PERCENTILES}
    out["mean"] = total / g.calls
    out["max"] = top
    return out


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _figures(g: Group, thresholds: Thresholds) -> dict[str, Any]:
    """An agent's (or kind's) figures, as :func:`~apportion.analysis.report.build_report`."""
    counts = {s: n for s, n in g.statuses.items() if n}
    if g.refused:
        counts["refused"] = counts.get("refused", 0) + g.refused
    statuses = ordered(counts)
    used_in, used_out = g.sized_used_input, g.sized_used_output
    granted_in, granted_out = g.sized_granted_context, g.sized_granted_output
    utilization = _share(used_in + used_out, granted_in + granted_out)
    hit_rate = _share(g.hits, g.hit_known)
    quality = {}
    for name in ("cut", "uncut"):
        n, total, squares = g.quality[name]
        ci = mean_ci_of_sums(int(n), total, squares)
        quality[name] = {"mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "requests": ci.n}
    return {
        "calls": g.calls,
        "released": g.released,
        "requests": g.requests,
        "input": _tokens(g, "input", g.input_sum, g.input_max),
        "output": _tokens(g, "output", g.output_sum, g.output_max),
        "utilization": utilization,
        "input_utilization": _share(used_in, granted_in),
        "output_utilization": _share(used_out, granted_out),
        "granted_calls": g.sized,
        "ceiling_hit_rate": hit_rate,
        "ceiling_hits": g.hits,
        "ceiling_known_calls": g.hit_known,
        "truncation_rate": _share(g.truncated, g.truncated_known),
        "input_cut_rate": _share(g.input_cut, g.input_cut_known),
        "extension_rate": g.extended / g.calls,
        "overuse": g.overuse,
        "over_budgeted": _over_budgeted(utilization, hit_rate, thresholds),
        "under_budgeted": None if hit_rate is None else hit_rate > thresholds.under_hit_rate,
        "quality": quality,
        "recommended": _recommend(g, thresholds),
        "models": sorted(m for m, n in g.models.items() if n),
        "cost_usd": g.cost if g.cost_calls else None,
        "statuses": statuses,
        "success_rate": _success_rate(statuses),
    }


def _recommend(g: Group, thresholds: Thresholds) -> dict[str, Any]:
    """:func:`~apportion.analysis.report.recommend` from the aggregates."""
    grow = 1.0 + thresholds.margin
    ctx = _up(percentile_of_counts(g.histogram("need"), thresholds.percentile) * grow)
    out = _up(percentile_of_counts(g.histogram("output"), thresholds.percentile) * grow)
    censored = bool(g.hit_known) and g.hits / g.hit_known > thresholds.under_hit_rate
    if censored:
        if g.cut_top_output is not None:
            out = max(out, _up(g.cut_top_output * grow))
        if g.cut_top_input is not None:
            ctx = max(ctx, _up(g.cut_top_input * grow))
    return {"context_tokens": int(ctx), "output_tokens": max(1, int(out)), "censored": censored}
