"""How well budgets fit, per agent, from telemetry (``apportion report``).

Definitions (per agent, over the calls in the period):

- ``calls``: calls that finished with usage; ``released`` counts grants settled without
  usage (released by the caller, expired, or open at close), left out of every figure
  below.
- ``input`` / ``output``: P50, P90 and P99 (:func:`~apportion.analysis.stats.percentile`,
  linear interpolation), mean and max of the tokens used per call.
- ``utilization``: tokens used over tokens granted, summed over the calls whose grant is
  known (context plus output, extensions included): ``sum(used) / sum(granted)``;
  ``input_utilization`` and ``output_utilization`` the same for each side. ``None`` when
  no grant is known (a call log without caps).
- ``ceiling_hit_rate``: share of calls that hit their budget, that is whose output was
  truncated at its cap *or* whose input was cut to fit its context grant (each is also
  given alone: ``truncation_rate``, ``input_cut_rate``); over the calls where this is
  known. Extended calls are counted by how they ended (``extension_rate`` says how often).
- ``under_budgeted``: ceiling-hit rate over :attr:`Thresholds.under_hit_rate` (10%);
  ``over_budgeted``: utilization under :attr:`Thresholds.over_utilization` (50%) and not
  under-budgeted (a cut agent that left much of its grants unused was given the wrong
  shape, not too much: its budget is raised, never lowered). ``None`` when the figure
  behind the flag is unknown.
- ``quality``: among requests with an outcome score (``req.score``), the mean outcome of
  those where a call of the agent hit its budget (``cut``) and of those where none did
  (``uncut``), each with a 95% t interval and its number of requests.
- ``statuses``: the agent's calls counted by how they ended (:mod:`apportion.calls`):
  ``completed``, ``wrapped_up`` (an extension was refused and the agent concluded within
  its wrap-up reserve: a partial result), ``cut``, ``late``, ``released``, ``expired``,
  ``closed``, ``refused`` (begins refused: no grant made; from the requests), and
  ``unknown`` (ingested calls that say nothing, or neither truncated nor not);
  ``success_rate``: ``completed`` over the calls whose ending is known (refused begins
  included), so a truncated or wrapped-up answer is never counted as a success. The
  document's ``statuses`` sums them over the agents.
- ``recommended``: a static budget, :func:`recommend`: the percentile (P90 unless told)
  of the input needed (input used plus input cut away, when known) and of the output
  used, plus the margin (10%), rounded up. When the agent is under-budgeted, observed
  usage understates the need of the cut calls, so the budget is also at least the
  largest usage observed on a cut call, plus the margin (``censored: true``).

Agent kinds (``kinds``): the calls of names not listed in the pipeline, budgeted by an
agent kind (``expert:*``: a team drawn per run), rolled up per kind with the same figures
as an agent (its refused begins included), and ``members``: how many names of the kind
made calls. Empty when no call was budgeted by a kind (older telemetry records none).

Request trees (``trees``): each tree of child requests (``req.child``, ``fan_out``) with
the root's usage rolled up over its descendants, and the children grouped by name (how
much each kind of sub-agent used, how often it ran out); see
:mod:`apportion.analysis.trees`.

Rollouts (``rollouts``): the decisions of progressive rollouts
(:class:`~apportion.policies.rollout.Rollout`) recorded in the period, per rollout: its
candidate and baseline, its last decision's kind and share, and every decision (kind,
share, scored requests seen, mean outcome per 1,000 tokens of each side, the confidence
bounds of their difference, the reason, the time).

:func:`build_report` gives the JSON document (its terminal tables are in
:mod:`apportion.cli.tables`);
:func:`report_page` the self-contained HTML page with its figures.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from apportion.analysis.stats import mean_ci, percentile
from apportion.analysis.statuses import STATUS_ORDER, statuses_of
from apportion.analysis.trees import build_trees
from apportion.errors import InvalidDuration
from apportion.telemetry.records import CallUsage
from apportion.telemetry.sql import Dataset

__all__ = [
    "KIND_CAPTION",
    "KIND_COLUMNS",
    "PERCENTILES",
    "QUALITY_COLUMNS",
    "REPORT_COLUMNS",
    "STATUS_COLUMNS",
    "Thresholds",
    "agent_calls",
    "build_report",
    "kind_rows",
    "parse_duration",
    "parse_since",
    "quality_rows",
    "recommend",
    "report_rows",
    "rollout_rows",
    "status_rows",
    "statuses_of",
]

PERCENTILES: Final = (50, 90, 99)
"""The percentiles a report gives of input and output tokens."""


@dataclass(frozen=True)
class Thresholds:
    """The flags' thresholds and the recommendation's settings.

    Attributes:
        over_utilization: flag over-budgeted below this utilization.
        under_hit_rate: flag under-budgeted above this ceiling-hit rate.
        percentile: which percentile a recommended budget covers.
        margin: added on top of it (0.1 = 10%).
    """

    over_utilization: float = 0.5
    under_hit_rate: float = 0.10
    percentile: float = 90.0
    margin: float = 0.1


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: object, option: str = "--older-than") -> float:
    """A duration (``45s``, ``30m``, ``12h``, ``30d``, ``2w``) in seconds, above zero.

    Raises:
        InvalidDuration: anything else (the option and the value are its fields).
    """
    reason = "give a number and a unit: 45s, 30m, 12h, 30d or 2w (more than zero)"
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidDuration(option, text, reason)
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds < 1e11:
        raise InvalidDuration(option, text, reason)
    return seconds


def parse_since(text: str, now: float | None = None, option: str = "--since") -> float:
    """A ``--since`` value as a clock time (seconds since the epoch).

    Accepted: a duration back from now (``30m``, ``12h``, ``7d``, ``2w``, ``45s``), an ISO
    date or date-time (``2025-01-31``, ``2025-01-31T12:00``; local time unless it has an
    offset), or seconds since the epoch.

    Raises:
        ValueError: none of these (the message lists them).
    """
    text = text.strip()
    now = time.time() if now is None else now
    match = _DURATION.fullmatch(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"{option} {text!r}: give a duration (30m, 12h, 7d, 2w), an ISO date or date-time "
            "(2025-01-31, 2025-01-31T12:00), or seconds since the epoch"
        ) from None


def agent_calls(calls: Iterable[CallUsage]) -> dict[str, list[CallUsage]]:
    """Calls grouped by agent, agents sorted by name."""
    groups: dict[str, list[CallUsage]] = {}
    for call in calls:
        groups.setdefault(call.agent, []).append(call)
    return {agent: groups[agent] for agent in sorted(groups)}


def _finished(calls: Iterable[CallUsage]) -> list[CallUsage]:
    return [
        c
        for c in calls
        if c.settled == "finish" and c.used_input is not None and c.used_output is not None
    ]


def _need_input(call: CallUsage) -> int:
    return int(call.used_input or 0) + int(call.dropped_tokens or 0)


def recommend(
    calls: Sequence[CallUsage],
    *,
    input_percentile: float = 90.0,
    output_percentile: float = 90.0,
    margin: float = 0.1,
    under_hit_rate: float = 0.10,
) -> dict[str, Any] | None:
    """A static budget for one agent from its calls (see the module docstring).

    Args:
        calls: the agent's calls (those without usage are ignored).
        input_percentile: percentile of the input needed to budget for.
        output_percentile: percentile of the output to budget for.
        margin: added on top (0.1 = 10%).
        under_hit_rate: above this ceiling-hit rate, cut calls are taken as lower bounds.

    Returns:
        ``{"context_tokens", "output_tokens", "censored"}``, or ``None`` without calls.
    """
    done = _finished(calls)
    if not done:
        return None
    grow = 1.0 + margin
    ctx = _up(percentile([_need_input(c) for c in done], input_percentile) * grow)
    out = _up(percentile([int(c.used_output or 0) for c in done], output_percentile) * grow)
    known = [c for c in done if c.truncated is not None or c.input_cut is not None]
    hits = [c for c in known if c.ceiling_hit]
    censored = bool(known) and len(hits) / len(known) > under_hit_rate
    if censored:
        cut_out = [int(c.used_output or 0) for c in hits if c.truncated]
        cut_in = [_need_input(c) for c in hits if c.input_cut]
        if cut_out:
            out = max(out, _up(max(cut_out) * grow))
        if cut_in:
            ctx = max(ctx, _up(max(cut_in) * grow))
    return {"context_tokens": int(ctx), "output_tokens": max(1, int(out)), "censored": censored}


def _up(tokens: float) -> int:
    """Round up to whole tokens, ignoring floating-point dust (``140 * 1.1`` is 154)."""
    return math.ceil(round(tokens, 6))


def _spread(values: Sequence[int]) -> dict[str, Any]:
    out: dict[str, Any] = {f"p{q}": percentile(values, q) for q in PERCENTILES}
    out["mean"] = math.fsum(values) / len(values)
    out["max"] = max(values)
    return out


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _rate(flags: Sequence[bool | None]) -> tuple[float | None, int]:
    known = [f for f in flags if f is not None]
    return (sum(known) / len(known) if known else None), len(known)


def _over_budgeted(
    utilization: float | None, hit_rate: float | None, thresholds: Thresholds
) -> bool | None:
    """Whether an agent is granted more than it uses; one that is cut never is."""
    if utilization is None:
        return None
    cut = hit_rate is not None and hit_rate > thresholds.under_hit_rate
    return utilization < thresholds.over_utilization and not cut


def _success_rate(statuses: Mapping[str, int]) -> float | None:
    known = sum(n for s, n in statuses.items() if s != "unknown")
    return statuses.get("completed", 0) / known if known else None


def _agent(
    calls: Sequence[CallUsage],
    outcomes: Mapping[str, float],
    thresholds: Thresholds,
    refused: int = 0,
) -> dict[str, Any] | None:
    done = _finished(calls)
    released = len(calls) - len(done)
    if not done:
        return None
    statuses = statuses_of(calls, refused)
    inputs = [int(c.used_input or 0) for c in done]
    outputs = [int(c.used_output or 0) for c in done]
    sized = [c for c in done if c.granted is not None]
    used_in = sum(int(c.used_input or 0) for c in sized)
    used_out = sum(int(c.used_output or 0) for c in sized)
    granted_in = sum(int(c.granted_context or 0) for c in sized)
    granted_out = sum(int(c.granted_output or 0) for c in sized)
    utilization = _ratio(used_in + used_out, granted_in + granted_out)
    hit_flags: list[bool | None] = [
        None if c.truncated is None and c.input_cut is None else c.ceiling_hit for c in done
    ]
    hit_rate, hit_known = _rate(hit_flags)
    truncation_rate, _ = _rate([c.truncated for c in done])
    input_cut_rate, _ = _rate([c.input_cut for c in done])
    per_request: dict[str, bool] = {}
    for call, hit in zip(done, hit_flags, strict=True):
        per_request[call.request_id] = per_request.get(call.request_id, False) or bool(hit)
    groups: dict[bool, list[float]] = {True: [], False: []}
    for request_id, cut in per_request.items():
        if request_id in outcomes:
            groups[cut].append(outcomes[request_id])
    quality = {}
    for name, cut in (("cut", True), ("uncut", False)):
        ci = mean_ci(groups[cut])
        quality[name] = {"mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "requests": ci.n}
    costs = [c.cost_usd for c in done if c.cost_usd is not None]
    recommended = recommend(
        done,
        input_percentile=thresholds.percentile,
        output_percentile=thresholds.percentile,
        margin=thresholds.margin,
        under_hit_rate=thresholds.under_hit_rate,
    )
    return {
        "calls": len(done),
        "released": released,
        "requests": len(per_request),
        "input": _spread(inputs),
        "output": _spread(outputs),
        "utilization": utilization,
        "input_utilization": _ratio(used_in, granted_in),
        "output_utilization": _ratio(used_out, granted_out),
        "granted_calls": len(sized),
        "ceiling_hit_rate": hit_rate,
        "ceiling_hits": sum(1 for h in hit_flags if h),
        "ceiling_known_calls": hit_known,
        "truncation_rate": truncation_rate,
        "input_cut_rate": input_cut_rate,
        "extension_rate": sum(1 for c in done if c.extensions) / len(done),
        "overuse": sum(c.overuse for c in done),
        "over_budgeted": _over_budgeted(utilization, hit_rate, thresholds),
        "under_budgeted": None if hit_rate is None else hit_rate > thresholds.under_hit_rate,
        "quality": quality,
        "recommended": recommended,
        "models": sorted({c.model for c in done if c.model}),
        "cost_usd": math.fsum(costs) if costs else None,
        "statuses": statuses,
        "success_rate": _success_rate(statuses),
    }


def build_report(
    dataset: Dataset,
    *,
    thresholds: Thresholds | None = None,
    since: float | None = None,
    pipeline: str | None = None,
) -> dict[str, Any]:
    """The report of a dataset, as a JSON-ready document (see the module docstring).

    Args:
        dataset: what :meth:`~apportion.telemetry.sql.Database.load` read.
        thresholds: the flags' thresholds and the recommendation's settings.
        since: the period's start, as given to ``load`` (recorded in the document).
        pipeline: the pipeline it was restricted to, if any (recorded in the document).

    Returns:
        ``{"source", "since", "pipeline", "requests", "calls", "empty", "message",
        "thresholds", "agents": {NAME: {...}}, "kinds": {KIND: {...}}, "rollouts": [...],
        "trees": {...}}``;
        ``empty`` (with ``agents`` empty and a ``message`` saying why) when there is
        nothing to report.
    """
    thresholds = thresholds or Thresholds()
    outcomes = {
        rid: float(r.outcome) for rid, r in dataset.requests.items() if r.outcome is not None
    }
    refused: dict[str, int] = {}
    for request in dataset.requests.values():
        for agent, count in request.refused.items():
            refused[agent] = refused.get(agent, 0) + count
    agents: dict[str, Any] = {}
    for agent, calls in agent_calls(dataset.calls).items():
        figures = _agent(calls, outcomes, thresholds, refused.get(agent, 0))
        if figures is not None:
            agents[agent] = figures
    return assemble(
        source=dataset.url,
        empty_database=dataset.empty,
        since=since,
        pipeline=pipeline,
        requests=len(dataset.requests),
        requests_scored=len(outcomes),
        overflow=sum(r.overflow for r in dataset.requests.values()),
        thresholds=thresholds,
        agents=agents,
        kinds=_kinds(dataset, outcomes, thresholds),
        rollouts=rollouts_of(dataset),
        trees=build_trees(dataset),
    )


def assemble(
    *,
    source: str,
    empty_database: bool,
    since: float | None,
    pipeline: str | None,
    requests: int,
    requests_scored: int,
    overflow: int,
    thresholds: Thresholds,
    agents: dict[str, Any],
    kinds: dict[str, Any],
    rollouts: list[dict[str, Any]],
    trees: dict[str, Any],
    until: float | None = None,
) -> dict[str, Any]:
    """The report document from its parts (the ``build_report`` fields, in their order).

    ``until`` (the window's end) is recorded only when given.
    """
    totals: dict[str, int] = {}
    for figures in agents.values():
        for status, count in figures["statuses"].items():
            totals[status] = totals.get(status, 0) + count
    message = None
    if empty_database:
        message = f"the database {source} holds no telemetry yet"
    elif not agents:
        where = [f"since {fmt_time(since)}"] if since is not None else []
        if until is not None:
            where.append(f"until {fmt_time(until)}")
        if pipeline is not None:
            where.append(f"for pipeline {pipeline!r}")
        message = "no finished calls" + (" " + " ".join(where) if where else "") + f" in {source}"
    window = {"until": until} if until is not None else {}
    return {
        "source": source,
        "since": since,
        **window,
        "pipeline": pipeline,
        "requests": requests,
        "requests_scored": requests_scored,
        "overflow": overflow,
        "calls": sum(a["calls"] for a in agents.values()),
        "empty": not agents,
        "message": message,
        "thresholds": {
            "over_utilization": thresholds.over_utilization,
            "under_hit_rate": thresholds.under_hit_rate,
            "percentile": thresholds.percentile,
            "margin": thresholds.margin,
        },
        "ceiling_hit": "output truncated at its cap, or input cut to fit its context grant",
        "statuses": {s: totals[s] for s in STATUS_ORDER if s in totals}
        | {s: n for s, n in totals.items() if s not in STATUS_ORDER},
        "agents": agents,
        "kinds": kinds,
        "rollouts": rollouts,
        "trees": trees,
    }


def _kinds(
    dataset: Dataset, outcomes: Mapping[str, float], thresholds: Thresholds
) -> dict[str, Any]:
    """The figures of each agent kind over its members' calls (see the module docstring)."""
    groups: dict[str, list[CallUsage]] = {}
    for call in dataset.calls:
        if call.kind is not None:
            groups.setdefault(call.kind, []).append(call)
    refused: dict[str, int] = {}
    for request in dataset.requests.values():
        for agent, count in request.refused.items():
            kind = request.refused_kinds.get(agent)
            if kind is not None:
                refused[kind] = refused.get(kind, 0) + count
    kinds: dict[str, Any] = {}
    for kind in sorted(groups):
        calls = groups[kind]
        figures = _agent(calls, outcomes, thresholds, refused.get(kind, 0))
        if figures is not None:
            kinds[kind] = {"members": len({c.agent for c in calls}), **figures}
    return kinds


def rollouts_of(dataset: Dataset) -> list[dict[str, Any]]:
    """The rollouts of a dataset, each with its decisions in order (see the docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for r in getattr(dataset, "rollouts", ()):
        entry = out.setdefault(
            r.rollout,
            {"rollout": r.rollout, "candidate": r.candidate, "baseline": r.baseline},
        )
        entry["status"] = r.kind
        entry["share"] = r.share
        entry.setdefault("decisions", []).append(
            {
                "kind": r.kind,
                "share": r.share,
                "seen": r.seen,
                "candidate_mean": r.candidate_mean,
                "baseline_mean": r.baseline_mean,
                "lower": r.lower,
                "upper": r.upper,
                "reason": r.reason,
                "at": r.at,
            }
        )
    return list(out.values())


def fmt_time(seconds: float) -> str:
    """A clock time as a local ISO date-time (the number itself if it is not one)."""
    try:
        return datetime.fromtimestamp(seconds).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(seconds)


# ------------------------------------------------------------------ rendering


def fmt_tokens(value: float | None) -> str:
    """Tokens for tables: thousands separated, no decimals (``-`` when unknown)."""
    return "-" if value is None else f"{value:,.0f}"


def fmt_share(value: float | None) -> str:
    """A share for tables, as a percentage (``-`` when unknown)."""
    return "-" if value is None else f"{value:.0%}"


def fmt_quality(group: Mapping[str, Any]) -> str:
    """A quality group for tables: ``mean [low, high]``, ``-`` when empty."""
    if not group["requests"]:
        return "-"
    text = f"{group['mean']:.2f}"
    if group["ci_low"] is not None:
        text += f" [{group['ci_low']:.2f}, {group['ci_high']:.2f}]"
    return text


def flags(figures: Mapping[str, Any]) -> str:
    """The flags of one agent in words."""
    words = []
    if figures["over_budgeted"]:
        words.append("over-budgeted")
    if figures["under_budgeted"]:
        words.append("under-budgeted")
    if not words:
        unknown = figures["over_budgeted"] is None and figures["under_budgeted"] is None
        words.append("unknown" if unknown else "ok")
    return ", ".join(words)


REPORT_COLUMNS: Final = (
    "agent",
    "calls",
    "input P50/P90/P99",
    "output P50/P90/P99",
    "util.",
    "hits",
    "over-use",
    "flag",
    "budget ctx/out",
)
"""The columns of the report's main table (terminal and HTML)."""

QUALITY_COLUMNS: Final = (
    "agent",
    "requests cut",
    "mean outcome cut [95%]",
    "requests not cut",
    "mean outcome not cut [95%]",
)
"""The columns of the truncation-against-quality table."""


def report_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row of text per agent, in the order of :data:`REPORT_COLUMNS`."""
    rows = []
    for agent, f in report["agents"].items():
        rec = f["recommended"] or {}
        rows.append(
            [
                agent,
                str(f["calls"]),
                " / ".join(fmt_tokens(f["input"][f"p{q}"]) for q in PERCENTILES),
                " / ".join(fmt_tokens(f["output"][f"p{q}"]) for q in PERCENTILES),
                fmt_share(f["utilization"]),
                fmt_share(f["ceiling_hit_rate"]),
                fmt_tokens(f["overuse"]) if f["overuse"] else "-",
                flags(f),
                f"{fmt_tokens(rec.get('context_tokens'))} / {fmt_tokens(rec.get('output_tokens'))}",
            ]
        )
    return rows


def quality_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per agent with scored requests, in the order of :data:`QUALITY_COLUMNS`."""
    rows = []
    for agent, f in report["agents"].items():
        cut, uncut = f["quality"]["cut"], f["quality"]["uncut"]
        if cut["requests"] or uncut["requests"]:
            rows.append(
                [
                    agent,
                    str(cut["requests"]),
                    fmt_quality(cut),
                    str(uncut["requests"]),
                    fmt_quality(uncut),
                ]
            )
    return rows


def report_caption(report: Mapping[str, Any]) -> str:
    """What the main table's figures mean, in one paragraph."""
    t = report["thresholds"]
    return (
        "util.: tokens used / granted. hits: calls whose output was truncated or whose input "
        f"was cut. Over-budgeted: util. under {t['over_utilization']:.0%}; under-budgeted: "
        f"hits over {t['under_hit_rate']:.0%}. budget: P{t['percentile']:g} of tokens used "
        f"+{t['margin']:.0%} (at least the largest cut call +{t['margin']:.0%} when "
        "under-budgeted). over-use: tokens used beyond the grants (all of a call finished "
        "after its lease expired)"
        + (
            f"; {report['overflow']:,} tokens were used beyond the requests' ceilings."
            if report.get("overflow")
            else "."
        )
    )


STATUS_COLUMNS: Final = (
    "agent",
    "completed",
    "wrapped up",
    "cut",
    "refused",
    "other",
    "success",
)
"""The columns of the how-calls-ended table (terminal and HTML)."""

STATUS_CAPTION: Final = (
    "How calls ended. completed: whole answers (the only successes); wrapped up: an "
    "extension was refused and the agent concluded within its wrap-up reserve (a partial "
    "result); cut: stopped at the cap; refused: begins refused, no grant made; other: late, "
    "released, expired, closed or unknown. success: completed over the calls whose ending "
    "is known."
)


KIND_COLUMNS: Final = (
    "kind",
    "members",
    "calls",
    "input P50/P90/P99",
    "output P50/P90/P99",
    "util.",
    "hits",
    "completed",
    "wrapped up",
    "cut",
    "refused",
    "success",
    "budget ctx/out",
)
"""The columns of the per-kind table (terminal and HTML)."""

KIND_CAPTION: Final = (
    "Names not listed in the pipeline, budgeted by the agent kind they matched, rolled up "
    "per kind. members: names of the kind that made calls. The figures are those of the "
    "per-agent tables, over all the members' calls; budget: what a static budget for the "
    "kind would be."
)


def kind_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per agent kind, in the order of :data:`KIND_COLUMNS` (none without kinds)."""
    rows = []
    for kind, f in (report.get("kinds") or {}).items():
        rec = f["recommended"] or {}
        counts = f["statuses"]
        rows.append(
            [
                kind,
                str(f["members"]),
                str(f["calls"]),
                " / ".join(fmt_tokens(f["input"][f"p{q}"]) for q in PERCENTILES),
                " / ".join(fmt_tokens(f["output"][f"p{q}"]) for q in PERCENTILES),
                fmt_share(f["utilization"]),
                fmt_share(f["ceiling_hit_rate"]),
                *(str(counts.get(s, 0)) for s in ("completed", "wrapped_up", "cut", "refused")),
                fmt_share(f["success_rate"]),
                f"{fmt_tokens(rec.get('context_tokens'))} / {fmt_tokens(rec.get('output_tokens'))}",
            ]
        )
    return rows


def status_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per agent, in the order of :data:`STATUS_COLUMNS`."""
    shown = ("completed", "wrapped_up", "cut", "refused")
    rows = []
    for agent, f in report["agents"].items():
        counts = f["statuses"]
        other = sum(n for s, n in counts.items() if s not in shown)
        rows.append(
            [
                agent,
                *(str(counts.get(s, 0)) for s in shown),
                str(other),
                fmt_share(f["success_rate"]),
            ]
        )
    return rows


QUALITY_CAPTION: Final = (
    "Mean outcome score (req.score) of the requests in which a call of the agent hit its "
    "budget, and of those in which none did, with 95% Student-t intervals (none below two "
    "requests). A difference suggests cuts cost quality; it is not proof of cause."
)


ROLLOUT_COLUMNS: Final = (
    "rollout",
    "decision",
    "share",
    "seen",
    "candidate/1k tok",
    "baseline/1k tok",
    "difference bounds",
    "at",
    "reason",
)
"""The columns of the rollouts table."""

ROLLOUT_CAPTION: Final = (
    "Decisions of progressive rollouts: share is the candidate's share of traffic after the "
    "decision; candidate and baseline give mean outcome per 1,000 tokens at the step; the "
    "bounds are the always-valid confidence sequence of their difference."
)


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rollout_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per rollout decision, in the order of :data:`ROLLOUT_COLUMNS`."""
    rows = []
    for rollout in report.get("rollouts", []):
        for d in rollout["decisions"]:
            bounds = "-"
            if d["lower"] is not None or d["upper"] is not None:
                bounds = f"[{_num(d['lower'], 4)}, {_num(d['upper'], 4)}]"
            rows.append(
                [
                    f"{rollout['rollout']}",
                    d["kind"],
                    fmt_share(d["share"]),
                    str(d["seen"]),
                    _num(d["candidate_mean"]),
                    _num(d["baseline_mean"]),
                    bounds,
                    "-" if d["at"] is None else fmt_time(d["at"]),
                    d["reason"],
                ]
            )
    return rows
