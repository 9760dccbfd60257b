"""Comparing policies on a workload, against the hindsight oracle (simulated quality).

:func:`run_bench` plays the same requests (common random numbers) through every policy and
through the oracle, and aggregates the figures named in the workload spec's bench output
(``docs/workload-spec.md``, "apportion bench output"): ``quality_mean``,
``quality_vs_oracle``, ``tokens_mean``, ``truncation_rate``,
``critical_truncation_rate``, ``unspent_mean``, ``extensions_mean``.

:func:`run_cost_frontier` does the same at several cost ceilings (``ceiling_usd``, for a
workload with a ``models`` section) and :func:`cost_frontier_document` adds a
``"frontier_usd"`` block: simulated quality against the mean cost per request.

:func:`run_frontier` does the same at several ceilings (the same requests at each) and
:func:`frontier_document` turns its runs into the bench JSON of one ceiling plus a
``"frontier"`` block: simulated quality against the ceiling, per policy and for the oracle.

The oracle's figures state how it was computed: ``step`` (its discretisation, in tokens),
``discretisation`` (the same in words), ``relaxation`` (how it relaxes the upstream
coupling) and ``relaxed_coupling_rate`` (the fraction of requests whose oracle allocation
relied on that relaxation, see :attr:`~apportion.sim.oracle.OracleResult.relaxed_coupling`).

The ``static`` policy is given budgets profiled the way a team would profile them from
telemetry of an uncapped period: the 90th percentile of each agent's input and output
needs, plus 10%, over requests disjoint from the ones measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apportion.errors import PolicyConfigError
from apportion.policies import (
    REGISTRY,
    Policy,
    StaticPolicy,
    bench_policies,
    policy_options,
    resolve_policy,
)
from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.oracle import DISCRETISATION_NOTE, RELAXATION_NOTE, Oracle, default_step
from apportion.sim.runner import RequestOutcome, controller_for, run_request
from apportion.sim.workload import Workload

__all__ = [
    "DEFAULT_REQUESTS",
    "PROFILE_REQUESTS",
    "AgentTrace",
    "PolicyFigures",
    "Progress",
    "cost_frontier_document",
    "cost_frontier_summary",
    "frontier_document",
    "frontier_summary",
    "make_policy",
    "parse_ceilings",
    "parse_ceilings_usd",
    "profiled_static",
    "progress_total",
    "run_bench",
    "run_cost_frontier",
    "run_frontier",
    "trace_request",
    "traces_of",
]

DEFAULT_REQUESTS = 1000
"""Requests simulated when neither the workload nor the caller says how many."""

PROFILE_REQUESTS = 200
"""Requests (disjoint from the measured ones) used to profile the static policy."""

Progress = Callable[[int], None]
"""Called with the number of simulated requests just completed (oracle or policy)."""


@dataclass
class PolicyFigures:
    """Aggregates of one policy (or the oracle) over the measured requests."""

    outcomes: list[RequestOutcome] = field(default_factory=list)

    def summary(self, ceiling: int, oracle_quality: float | None) -> dict[str, float]:
        """The bench JSON figures of the workload spec."""
        n = len(self.outcomes)
        calls = sum(o.calls + o.refused for o in self.outcomes) or 1
        critical = sum(o.critical_calls for o in self.outcomes)
        quality = statistics.fmean(o.quality for o in self.outcomes) if n else 0.0
        tokens = statistics.fmean(o.tokens for o in self.outcomes) if n else 0.0
        cost = statistics.fmean(o.cost for o in self.outcomes) if n else 0.0
        return {
            "cost_mean": round(cost, 8),
            "quality_mean": round(quality, 4),
            "quality_vs_oracle": round(quality / oracle_quality, 4) if oracle_quality else 0.0,
            "tokens_mean": round(tokens, 1),
            "truncation_rate": round(sum(o.cut_calls for o in self.outcomes) / calls, 4),
            "critical_truncation_rate": round(
                sum(o.critical_cut_calls for o in self.outcomes) / critical, 4
            )
            if critical
            else 0.0,
            "unspent_mean": round(ceiling - tokens, 1),
            "extensions_mean": round(statistics.fmean(o.extensions for o in self.outcomes), 3)
            if n
            else 0.0,
        }


def profiled_static(workload: Workload, seed: int, start: int) -> StaticPolicy:
    """Static budgets from P90 (+10%) of needs over requests ``start .. start+200``."""
    usage: dict[str, list[tuple[int, int]]] = {a.name: [] for a in workload.agents}
    kinds = {a.name for a in workload.agents if a.is_kind}
    for r in range(start, start + PROFILE_REQUESTS):
        needs = draw_needs(workload, seed, r)
        lines = workload.agent_names if needs.realized is None else needs.realized.lines
        names = needs.names_of(workload)
        for index, (line, name) in enumerate(zip(lines, names, strict=True)):
            key = line if line in kinds else name  # per call of the pipeline's line
            usage.setdefault(key, []).append((needs.need_in[index], needs.need_out[index]))
    return StaticPolicy.from_usage(usage, percentile=90.0, margin=0.1)


def make_policy(name: str, workload: Workload, seed: int, requests: int) -> Policy:
    """A fresh policy by name; ``static`` is profiled on requests after the measured ones.

    ``NAME@MODEL`` is policy ``NAME`` with every call on workload model ``MODEL``. A
    policy that draws at random (``learned``'s exploration) draws from ``seed``, so a
    bench replays exactly.
    """
    name = name.split("@", 1)[0]
    if name == "static":
        return profiled_static(workload, seed, requests)
    seeded = name in REGISTRY and "seed" in policy_options(name)
    return resolve_policy(name, options={"seed": seed} if seeded else None)


def pinned_model(name: str, workload: Workload) -> str | None:
    """The model of ``NAME@MODEL`` (checked against the workload), or ``None``."""
    if "@" not in name:
        return None
    model = name.split("@", 1)[1]
    try:
        workload.model(model)
    except KeyError:
        known = ", ".join(m.name for m in workload.models) or "none"
        raise PolicyConfigError(
            f"{name!r}: workload {workload.name!r} has no model {model!r} (models: {known})"
        ) from None
    return model


def parse_ceilings(text: str) -> list[int]:
    """Read a comma-separated list of token ceilings (``"8000,12000,16000"``).

    Spaces around the values are ignored, and so is a trailing comma.

    Args:
        text: the list, as typed after ``--ceilings``.

    Returns:
        The ceilings, in the order given.

    Raises:
        ValueError: the list is empty, a value is not a whole number of tokens, is below
            1, or is given twice. The message quotes the offending value.
    """
    parts = [part.strip() for part in text.split(",")]
    if parts and not parts[-1]:
        parts.pop()
    if not parts:
        raise ValueError("--ceilings: give at least one ceiling, e.g. --ceilings 8000,12000")
    ceilings: list[int] = []
    for part in parts:
        if not part:
            raise ValueError(f"--ceilings: empty value in {text!r}")
        try:
            value = int(part)
        except ValueError:
            raise ValueError(
                f"--ceilings: {part!r} is not a whole number of tokens "
                "(expected a comma-separated list such as 8000,12000,16000)"
            ) from None
        if value < 1:
            raise ValueError(f"--ceilings: {part!r}: a ceiling must be at least 1 token")
        if value in ceilings:
            raise ValueError(f"--ceilings: {value} is given twice")
        ceilings.append(value)
    return ceilings


def progress_total(requests: int, policies: int, ceilings: int = 1) -> int:
    """How many progress steps a bench reports: every request, per policy and oracle, per ceiling.

    Args:
        requests: measured requests.
        policies: number of policies.
        ceilings: number of ceilings (1 for :func:`run_bench`).

    Returns:
        The total the ``progress`` callbacks of :func:`run_bench` and :func:`run_frontier`
        add up to.
    """
    return requests * (policies + 1) * ceilings


@dataclass(frozen=True)
class _Setup:
    """What every ceiling of a bench shares: the requests, the policies, the oracle."""

    workload: Workload
    names: list[str]
    count: int
    seed: int
    needs: list[RequestNeeds]
    oracle: Oracle


def _setup(
    workload: Workload,
    policies: Sequence[str] | None,
    requests: int | None,
    seed: int | None,
) -> _Setup:
    names = list(policies or bench_policies(priced=bool(workload.models)))
    count = requests if requests is not None else (workload.requests or DEFAULT_REQUESTS)
    if count < 1:
        raise ValueError(f"requests must be at least 1, got {count}")
    seed = seed if seed is not None else (workload.seed or 0)
    for name in names:
        pinned_model(name, workload)
        if name.split("@", 1)[0] != "static":  # (profiled per bench by make_policy)
            resolve_policy(name.split("@", 1)[0])  # fail on an unknown name before simulating
    needs = [draw_needs(workload, seed, r) for r in range(count)]
    return _Setup(workload, names, count, seed, needs, Oracle(workload))


def run_bench(
    workload: Workload,
    *,
    policies: Sequence[str] | None = None,
    ceiling: int | None = None,
    requests: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Play ``requests`` requests through each policy and the oracle.

    Args:
        workload: the workload.
        policies: policy names (default: the rule-based ones, and ``routed`` when the
            workload has a ``models`` section).
        ceiling: per-request token ceiling (default: the workload's).
        requests: how many requests (default: the workload's).
        seed: the seed (default: the workload's).
        progress: called with the number of requests just completed (for progress bars);
            the calls add up to :func:`progress_total`.

    Returns:
        The bench result, shaped as the workload spec's JSON output, with ``"simulated":
        true`` and the oracle's ``step``, ``discretisation``, ``relaxation``,
        ``relaxed_coupling_rate``, ``coupled_quality_mean`` and ``upper_bound_mean``.

    Raises:
        PolicyConfigError: neither ``ceiling`` nor the workload gives a ceiling.
        UnknownPolicy: a policy name is not registered.
    """
    ceiling = ceiling or workload.ceiling
    if ceiling is None:
        raise PolicyConfigError(f"workload {workload.name!r} sets no ceiling: give one")
    return _bench_at(_setup(workload, policies, requests, seed), ceiling, progress)


def run_frontier(
    workload: Workload,
    ceilings: Iterable[int],
    *,
    policies: Sequence[str] | None = None,
    requests: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
    on_ceiling: Callable[[int], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Run the bench at each ceiling, on the same requests (the quality-ceiling frontier).

    Args:
        workload: the workload.
        ceilings: the token ceilings (each at least 1, no repeats); run in ascending order.
        policies: policy names (default: the rule-based ones, and ``routed`` when the
            workload has a ``models`` section).
        requests: how many requests per ceiling (default: the workload's).
        seed: the seed (default: the workload's).
        progress: called with the number of requests just completed, over all ceilings
            (the calls add up to :func:`progress_total` with ``ceilings=len(ceilings)``).
        on_ceiling: called with each ceiling before its runs start (e.g. to relabel a
            progress bar).

    Returns:
        ``{ceiling: run_bench result}``, in ascending order of ceiling.

    Raises:
        ValueError: no ceiling, a ceiling below 1, or a repeated ceiling.
        UnknownPolicy: a policy name is not registered.
    """
    levels = list(ceilings)
    if not levels:
        raise ValueError("give at least one ceiling")
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise ValueError(f"a ceiling must be an integer of at least 1, got {level!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"a ceiling is repeated in {levels}")
    setup = _setup(workload, policies, requests, seed)
    runs: dict[int, dict[str, Any]] = {}
    for level in sorted(levels):
        if on_ceiling is not None:
            on_ceiling(level)
        runs[level] = _bench_at(setup, level, progress)
    return runs


def frontier_summary(runs: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``"frontier"`` block of the bench JSON, from :func:`run_frontier`'s runs.

    Args:
        runs: ``{ceiling: run_bench result}``.

    Returns:
        ``{"simulated": true, "ceilings": [...], "policies": {name: [quality_mean per
        ceiling]}, "quality_vs_oracle": {name: [...]}, "oracle": [quality_mean per
        ceiling], "oracle_step": [...], "oracle_relaxed_coupling_rate": [...]}``, every list
        in ascending order of ceiling.
    """
    levels = sorted(runs)
    first = runs[levels[0]] if levels else {"policies": {}}
    names = list(first["policies"])
    return {
        "simulated": True,
        "ceilings": levels,
        "policies": {
            name: [runs[c]["policies"][name]["quality_mean"] for c in levels] for name in names
        },
        "quality_vs_oracle": {
            name: [runs[c]["policies"][name]["quality_vs_oracle"] for c in levels] for name in names
        },
        "oracle": [runs[c]["oracle"]["quality_mean"] for c in levels],
        "oracle_step": [runs[c]["oracle"]["step"] for c in levels],
        "oracle_relaxed_coupling_rate": [
            runs[c]["oracle"]["relaxed_coupling_rate"] for c in levels
        ],
    }


def frontier_document(
    runs: Mapping[int, Mapping[str, Any]], headline: int | None = None
) -> dict[str, Any]:
    """The bench JSON of a frontier: one ceiling's spec document plus ``"frontier"``.

    The top-level keys are exactly those of :func:`run_bench` at the ``headline`` ceiling
    (so they keep the meaning the workload spec gives them); ``"frontier"`` holds
    :func:`frontier_summary`.

    Args:
        runs: ``{ceiling: run_bench result}`` from :func:`run_frontier`.
        headline: the ceiling whose results are the top-level document (default: the
            lowest).

    Returns:
        The document.

    Raises:
        ValueError: no runs, or ``headline`` is not one of the ceilings run.
    """
    if not runs:
        raise ValueError("no runs: give at least one ceiling")
    level = min(runs) if headline is None else headline
    if level not in runs:
        raise ValueError(f"ceiling {level} is not among those run ({', '.join(map(str, runs))})")
    document = dict(runs[level])
    document["frontier"] = frontier_summary(runs)
    return document


def _bench_at(
    setup: _Setup, ceiling: int, progress: Progress | None, ceiling_usd: float | None = None
) -> dict[str, Any]:
    """One ceiling of a bench: the oracle, then each policy, over the same requests.

    ``ceiling_usd`` replaces the workload's cost ceiling (it applies with a ``models``
    section only); the document then says it under ``"ceiling_usd"``, and the oracle
    honours it (``Oracle.solve(..., honour_cost=True)``) instead of relaxing it.
    """
    workload, count = setup.workload, setup.count
    best = PolicyFigures()
    oracle_tokens: list[int] = []
    coupled: list[float] = []
    bounds: list[float] = []
    relaxed = relaxed_cost = 0
    oracle_cost: list[float] = []
    for needs in setup.needs:
        result = setup.oracle.solve(
            needs, ceiling, ceiling_usd=ceiling_usd, honour_cost=ceiling_usd is not None
        )
        best.outcomes.append(_oracle_outcome(result.quality, result.tokens))
        oracle_cost.append(result.cost)
        relaxed_cost += result.relaxed_cost
        oracle_tokens.append(result.tokens)
        coupled.append(result.coupled_quality)
        bounds.append(result.upper_bound)
        relaxed += result.relaxed_coupling
        if progress:
            progress(1)
    oracle_quality = statistics.fmean(o.quality for o in best.outcomes)
    figures: dict[str, dict[str, float]] = {}
    for name in setup.names:
        controller = controller_for(workload, make_policy(name, workload, setup.seed, count))
        measured = PolicyFigures()
        model = pinned_model(name, workload)
        for needs in _with_progress(setup.needs, progress):
            measured.outcomes.append(
                run_request(
                    controller, workload, needs, ceiling, model=model, ceiling_usd=ceiling_usd
                )
            )
        figures[name] = measured.summary(ceiling, oracle_quality)
    step = default_step(ceiling)
    extra = {} if ceiling_usd is None else {"ceiling_usd": ceiling_usd}
    return {
        "workload": workload.name,
        "requests": count,
        "ceiling": ceiling,
        "seed": setup.seed,
        "simulated": True,
        "oracle": {
            "quality_mean": round(oracle_quality, 4),
            "tokens_mean": round(statistics.fmean(oracle_tokens), 1),
            "step": step,
            "discretisation": DISCRETISATION_NOTE.format(step=step),
            "relaxation": RELAXATION_NOTE,
            "relaxed_coupling_rate": round(relaxed / count, 4),
            "coupled_quality_mean": round(statistics.fmean(coupled), 4),
            "upper_bound_mean": round(statistics.fmean(bounds), 4),
            "cost_mean": round(statistics.fmean(oracle_cost), 8),
            "relaxed_cost_rate": round(relaxed_cost / count, 4),
        },
        "policies": figures,
        **extra,
    }


def parse_ceilings_usd(text: str) -> list[float]:
    """Read a comma-separated list of cost ceilings in USD (``"0.02,0.05,0.1"``).

    Raises:
        ValueError: the list is empty, a value is not a positive finite number, or is
            given twice. The message quotes the offending value.
    """
    parts = [part.strip() for part in text.split(",")]
    if parts and not parts[-1]:
        parts.pop()
    if not parts:
        raise ValueError("--ceilings-usd: give at least one cost ceiling, e.g. 0.02,0.05")
    levels: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(
                f"--ceilings-usd: {part!r} is not a number of USD "
                "(expected a comma-separated list such as 0.02,0.05,0.1)"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"--ceilings-usd: {part!r}: a cost ceiling is a positive number")
        if value in levels:
            raise ValueError(f"--ceilings-usd: {part} is given twice")
        levels.append(value)
    return levels


def run_cost_frontier(
    workload: Workload,
    ceilings_usd: Iterable[float],
    *,
    policies: Sequence[str] | None = None,
    ceiling: int | None = None,
    requests: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
    on_ceiling: Callable[[float], None] | None = None,
) -> dict[float, dict[str, Any]]:
    """Run the bench at each cost ceiling, on the same requests and token ceiling.

    The cost-against-quality frontier: what each policy (and the oracle) buys per request
    at each cost ceiling. Needs a workload with a ``models`` section.

    Returns:
        ``{ceiling_usd: run_bench result}``, in ascending order of cost ceiling.

    Raises:
        ValueError: no models in the workload, no cost ceiling, a non-positive or repeated
            one.
        PolicyConfigError: neither ``ceiling`` nor the workload gives a token ceiling.
    """
    if not workload.models:
        raise ValueError(
            f"workload {workload.name!r} has no models section: cost ceilings need priced models"
        )
    levels = [float(level) for level in ceilings_usd]
    if not levels:
        raise ValueError("give at least one cost ceiling")
    for level in levels:
        if not math.isfinite(level) or level <= 0:
            raise ValueError(f"a cost ceiling must be a positive number of USD, got {level!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"a cost ceiling is repeated in {levels}")
    tokens = ceiling or workload.ceiling
    if tokens is None:
        raise PolicyConfigError(f"workload {workload.name!r} sets no ceiling: give one")
    setup = _setup(workload, policies, requests, seed)
    runs: dict[float, dict[str, Any]] = {}
    for level in sorted(levels):
        if on_ceiling is not None:
            on_ceiling(level)
        runs[level] = _bench_at(setup, tokens, progress, ceiling_usd=level)
    return runs


def cost_frontier_summary(runs: Mapping[float, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``"frontier_usd"`` block of the bench JSON, from :func:`run_cost_frontier`.

    Returns:
        ``{"simulated": true, "ceiling": tokens, "ceilings_usd": [...], "policies": {name:
        {"quality": [...], "cost": [...]}}, "oracle": {"quality": [...], "cost": [...],
        "relaxed_cost_rate": [...]}}``: mean quality and mean cost per request (USD) at each
        cost ceiling, ascending. The oracle honours each cost ceiling (its best plan found
        under both ceilings, by a Lagrange multiplier on cost); ``relaxed_cost_rate`` is the
        share of requests where no multiplier made the plan fit (the relaxed plan is kept).
    """
    levels = sorted(runs)
    first = runs[levels[0]] if levels else {"policies": {}, "ceiling": None}
    names = list(first["policies"])
    return {
        "simulated": True,
        "ceiling": first["ceiling"],
        "ceilings_usd": levels,
        "policies": {
            name: {
                "quality": [runs[c]["policies"][name]["quality_mean"] for c in levels],
                "cost": [runs[c]["policies"][name].get("cost_mean", 0.0) for c in levels],
            }
            for name in names
        },
        "oracle": {
            "quality": [runs[c]["oracle"]["quality_mean"] for c in levels],
            "cost": [runs[c]["oracle"]["cost_mean"] for c in levels],
            "relaxed_cost_rate": [runs[c]["oracle"].get("relaxed_cost_rate", 0.0) for c in levels],
        },
    }


def cost_frontier_document(
    runs: Mapping[float, Mapping[str, Any]], headline: float | None = None
) -> dict[str, Any]:
    """One cost ceiling's bench JSON (``headline``, default the lowest) plus ``"frontier_usd"``.

    Raises:
        ValueError: no runs, or ``headline`` is not one of the cost ceilings run.
    """
    if not runs:
        raise ValueError("no runs: give at least one cost ceiling")
    level = min(runs) if headline is None else headline
    if level not in runs:
        raise ValueError(f"cost ceiling {level} is not among those run")
    document = dict(runs[level])
    document["frontier_usd"] = cost_frontier_summary(runs)
    return document


def _oracle_outcome(quality: float, tokens: int) -> RequestOutcome:
    return RequestOutcome(quality, tokens, 0, 0, 0, 0, 0, 0)


def _with_progress(
    items: Iterable[RequestNeeds], progress: Progress | None
) -> Iterable[RequestNeeds]:
    for item in items:
        yield item
        if progress:
            progress(1)


@dataclass(frozen=True, slots=True)
class AgentTrace:
    """What one agent needed and got in a traced request (tokens).

    ``granted_in`` and ``granted_out`` add up the first grant and every extension;
    ``read`` and ``wrote`` are what the agent's finish reported (``read`` counts resent
    context too). ``context`` is the context of the first grant: what the agent read of
    its input (0 when it never ran, then ``ran`` is false).
    """

    agent: str
    priority: str
    need_in: int
    need_out: int
    granted_in: int
    granted_out: int
    read: int
    wrote: int
    context: int = 0
    ran: bool = False


def trace_request(
    workload: Workload,
    policy: str,
    needs: RequestNeeds,
    ceiling: int,
    *,
    warmup: Sequence[RequestNeeds] = (),
    seed: int = 0,
) -> tuple[RequestOutcome, list[AgentTrace]]:
    """Play one request through ``policy`` (after ``warmup`` requests) and trace its grants."""
    controller = controller_for(workload, make_policy(policy, workload, seed, len(warmup) + 1))
    for earlier in warmup:
        run_request(controller, workload, earlier, ceiling)
    outcome = run_request(controller, workload, needs, ceiling)
    return outcome, traces_of(workload, needs, outcome)


def traces_of(workload: Workload, needs: RequestNeeds, outcome: RequestOutcome) -> list[AgentTrace]:
    """Trace each call of a request played by :func:`~apportion.sim.runner.run_request`.

    Args:
        workload: the workload (not realized).
        needs: the request's needs.
        outcome: what :func:`~apportion.sim.runner.run_request` returned for it.

    Returns:
        One :class:`AgentTrace` per agent, in agent order; for a workload with trees or
        dynamic teams, one per realized call, named by the workload agent (the line) it is
        an instance of.
    """
    current = needs.workload_of(workload)
    lines = current.agent_names if needs.realized is None else needs.realized.lines
    return [
        AgentTrace(
            line,
            agent.priority,
            needs.need_in[index],
            needs.need_out[index],
            call.granted - call.granted_out,
            call.granted_out,
            call.consumed_in,
            call.wrote,
            call.read,
            not call.refused,
        )
        for index, (agent, line, call) in enumerate(
            zip(current.agents, lines, outcome.played, strict=True)
        )
    ]


def policy_cells(figures: Mapping[str, Any]) -> list[str]:
    """A policy's bench figures as the cells the terminal table and the HTML page show.

    Quality, share of the oracle, tokens, cut, critical cut, unspent, extensions.
    """
    return [
        f"{figures['quality_mean']:.3f}",
        f"{figures['quality_vs_oracle']:.1%}",
        f"{figures['tokens_mean']:,.0f}",
        f"{figures['truncation_rate']:.1%}",
        f"{figures['critical_truncation_rate']:.1%}",
        f"{figures['unspent_mean']:,.0f}",
        f"{figures['extensions_mean']:.2f}",
    ]
