"""Where a policy loses quality to the oracle: per agent and per kind of cut (simulated).

:func:`play` runs a list of requests through one policy (online, one controller, as a
bench does) and keeps each request's :class:`~apportion.sim.bench.AgentTrace` list;
:func:`solve` solves the same requests for the oracle; :func:`diagnose` compares the two,
request by request, and returns the ``"losses"`` block of ``benchmarks/allocation.py``.

Attribution. For request ``r`` the gap is ``dQ = Q_oracle - Q_policy`` (each request's
quality as the bench measures it). Both qualities are products
``prod(q_i ** influence_i)``, so ``ln Q_oracle - ln Q_policy`` is a sum of terms, one per
agent and per factor of its quality; each term is charged to one *component*:

- ``input_upstream``: ``s * ln(need_in / avail_in)``, the input an upstream cut removed
  (``s`` is the agent's input sensitivity);
- ``input_grant``: ``s * ln(avail_in / ctx)``, the input the grant left out;
- ``output_structured``, ``output_prose``, ``output_reasoning``: ``-ln q_out`` of the
  agent's output, named by its output kind;
- ``refused``: every term of an agent that could not run at all;
- ``model`` (workloads with models only): the capability of the model each call ran on.

The oracle's own terms enter with the opposite sign (its input coverage and output
coverage of each agent), so a component is negative where the policy served an agent
better than the oracle did (the oracle spent those tokens elsewhere). Logarithms of 0 (a
cut structured output, an agent refused) are taken at :data:`FLOOR`. The request's ``dQ``
is then shared out over the components in proportion to their terms; when the terms do
not add up to the sign of ``dQ`` (only possible through the floor) the request's gap is
reported as ``unattributed``. Averaged over requests, per agent and per component, the
shares add up exactly to ``oracle quality_mean - policy quality_mean`` (the block's
``gap``): ``sum(agents[*].loss) + unattributed == gap``, and the same for ``by_cut``.

Unspent budget is not a term of the quality, so it is reported beside them:
``unspent_mean`` (policy and oracle) and, over the requests where the policy cut some
agent's input or output, how much of the ceiling was left unspent at the end
(``unspent_when_cut_mean``) and how often it was at least :data:`UNSPENT_SHARE` of the
ceiling (``cut_with_unspent_rate``): tokens that could have paid for the cut.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from apportion.sim.bench import AgentTrace, make_policy, pinned_model, traces_of
from apportion.sim.needs import RequestNeeds
from apportion.sim.oracle import Oracle, OracleResult
from apportion.sim.quality import output_quality
from apportion.sim.runner import RequestOutcome, controller_for, run_request
from apportion.sim.workload import OUTPUT_KINDS, Workload

__all__ = [
    "COMPONENTS",
    "FLOOR",
    "UNSPENT_SHARE",
    "Played",
    "diagnose",
    "play",
    "solve",
]

FLOOR: Final = 1e-6
"""Quality factors below this are taken at it in the logarithms (0 has no logarithm)."""

UNSPENT_SHARE: Final = 0.05
"""A cut request left "unspent" budget when at least this share of the ceiling was left."""

COMPONENTS: Final[tuple[str, ...]] = (
    "input_upstream",
    "input_grant",
    *(f"output_{kind}" for kind in OUTPUT_KINDS),
    "refused",
    "model",
)
"""The kinds of cut a loss is charged to (see the module docstring)."""

WorkloadAt = Callable[[int], Workload]
"""The workload request ``r`` is drawn from (a shifted traffic changes it halfway)."""


@dataclass(frozen=True)
class Played:
    """One request played through a policy: its outcome and each agent's trace."""

    outcome: RequestOutcome
    traces: list[AgentTrace]


def _fixed(workload: Workload) -> WorkloadAt:
    return lambda _r: workload


def play(
    workload: Workload,
    policy: str,
    needs: Sequence[RequestNeeds],
    ceiling: int,
    *,
    seed: int = 0,
    workload_at: WorkloadAt | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Played]:
    """Play ``needs`` in order through one fresh ``policy`` (it learns online), traced.

    Args:
        workload: the workload (its pipeline is what the policy sees).
        policy: a registered policy name (``static`` is profiled as the bench does it,
            ``NAME@MODEL`` pins a model).
        needs: the requests, in order.
        ceiling: the token ceiling of every request.
        seed: the seed (``static`` profiles on requests after the measured ones).
        workload_at: the workload request ``r`` is played and scored with (default:
            ``workload``); a shifted traffic changes the needs, not the pipeline.
        progress: called with 1 after each request.

    Returns:
        One :class:`Played` per request.
    """
    at = workload_at or _fixed(workload)
    controller = controller_for(workload, make_policy(policy, workload, seed, len(needs)))
    model = pinned_model(policy, workload)
    played = []
    for r, item in enumerate(needs):
        current = at(r)
        outcome = run_request(controller, current, item, ceiling, model=model)
        played.append(Played(outcome, traces_of(current, item, outcome)))
        if progress:
            progress(1)
    return played


def solve(
    workload: Workload,
    needs: Sequence[RequestNeeds],
    ceiling: int,
    *,
    workload_at: WorkloadAt | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[OracleResult]:
    """The oracle's allocation of each request (coupling relaxed, see the oracle)."""
    at = workload_at or _fixed(workload)
    oracles: dict[int, Oracle] = {}
    results = []
    for r, item in enumerate(needs):
        current = at(r)
        oracle = oracles.setdefault(id(current), Oracle(current))
        results.append(oracle.solve(item, ceiling))
        if progress:
            progress(1)
    return results


def _ln(value: float) -> float:
    return math.log(max(value, FLOOR))


def _in_cover(ctx: int, need: int, sensitivity: float) -> float:
    if sensitivity == 0:
        return 1.0
    return float(min(1.0, max(0, ctx) / need) ** sensitivity)


def _terms(
    workload: Workload,
    needs: RequestNeeds,
    played: Played,
    best: OracleResult,
) -> dict[tuple[str, str], float]:
    """``{(agent, component): log-quality term}`` of one request (module docstring).

    For a workload with trees or dynamic teams, the terms of the request's realized calls,
    each charged to the workload agent (the line) it is a call of.
    """
    terms: dict[tuple[str, str], float] = {}
    workload = needs.workload_of(workload)
    wrote = [t.wrote for t in played.traces]
    capability = 0.0
    for index, (agent, trace) in enumerate(zip(workload.agents, played.traces, strict=True)):
        line = trace.agent
        weight = agent.influence
        if weight == 0:
            continue
        need_in, need_out = needs.need_in[index], needs.need_out[index]
        sens = agent.input_sensitivity
        ctx_o, cap_o = best.allocation[index]
        oracle_in = _ln(_in_cover(ctx_o, need_in, sens))
        oracle_out = _ln(output_quality(agent.output_kind, cap_o, need_out))
        if best.models and best.models[index] is not None and workload.models:
            capability += weight * _ln(
                workload.model(str(best.models[index])).capability[agent.output_kind]
            )
        if not trace.ran:
            nothing = _ln(_in_cover(0, need_in, sens)) + _ln(0.0)
            _add(terms, line, "refused", weight * (oracle_in + oracle_out - nothing))
            continue
        avail = need_in
        if agent.input.upstream:
            avail -= sum(needs.need_out[u] - wrote[u] for u in workload.upstream_indices(index))
        avail = max(0, min(avail, need_in))
        upstream = _ln(_in_cover(avail, need_in, sens))
        total_in = _ln(_in_cover(trace.context, need_in, sens))
        got_out = _ln(output_quality(agent.output_kind, trace.wrote, need_out))
        _add(
            terms,
            line,
            "input_upstream",
            weight * (oracle_in - upstream) if avail < need_in else 0.0,
        )
        granted_from = oracle_in if avail >= need_in else upstream
        _add(terms, line, "input_grant", weight * (granted_from - total_in))
        _add(terms, line, f"output_{agent.output_kind}", weight * (oracle_out - got_out))
    if workload.models:
        # the policy's capabilities: what its quality holds beyond the token terms
        tokens = 0.0
        for index, (agent, trace) in enumerate(zip(workload.agents, played.traces, strict=True)):
            if agent.influence == 0 or not trace.ran:
                continue
            tokens += agent.influence * (
                _ln(_in_cover(trace.context, needs.need_in[index], agent.input_sensitivity))
                + _ln(output_quality(agent.output_kind, trace.wrote, needs.need_out[index]))
            )
        policy_capability = (
            _ln(played.outcome.quality) - tokens if played.outcome.quality > 0 else capability
        )
        terms[("", "model")] = capability - policy_capability
    return terms


def _add(terms: dict[tuple[str, str], float], line: str, component: str, term: float) -> None:
    """Add one call's ``term`` to its line's ``component``."""
    terms[(line, component)] = terms.get((line, component), 0.0) + term


def diagnose(
    workload: Workload,
    played: Sequence[Played],
    best: Sequence[OracleResult],
    needs: Sequence[RequestNeeds],
    ceiling: int,
    *,
    workload_at: WorkloadAt | None = None,
) -> dict[str, Any]:
    """The ``"losses"`` block of one policy on one workload (see the module docstring).

    Args:
        workload: the workload (its agents name the per-agent rows).
        played: :func:`play`'s result.
        best: :func:`solve`'s result on the same requests.
        needs: the requests.
        ceiling: the token ceiling they were played at.
        workload_at: as for :func:`play`.

    Returns:
        ``{"gap", "unattributed", "agents": {name: {...}}, "by_cut": {component: loss},
        "top": [...], "unspent": {...}}``; every loss is a mean over requests in units of
        quality (``gap`` is ``oracle quality_mean - policy quality_mean``).

    Raises:
        ValueError: the three sequences differ in length, or are empty.
    """
    count = len(played)
    if count == 0 or count != len(best) or count != len(needs):
        raise ValueError(
            f"diagnose needs as many played requests as oracle results and needs, "
            f"got {count}, {len(best)}, {len(needs)}"
        )
    at = workload_at or _fixed(workload)
    names = list(workload.agent_names)
    agent_loss = {name: dict.fromkeys(COMPONENTS, 0.0) for name in names}
    model_loss = unattributed = 0.0
    stats = {name: _AgentStats() for name in names}
    unspent: list[int] = []
    unspent_cut: list[int] = []
    cut_with_unspent = 0
    for r in range(count):
        current, item, mine, oracle = at(r), needs[r], played[r], best[r]
        gap = oracle.quality - mine.outcome.quality
        terms = _terms(current, item, mine, oracle)
        total = sum(terms.values())
        if gap != 0 and total != 0 and (gap > 0) == (total > 0):
            for (agent, component), term in terms.items():
                share = gap * term / total
                if component == "model":
                    model_loss += share
                else:
                    agent_loss[agent][component] += share
        else:
            unattributed += gap
        left = ceiling - mine.outcome.tokens
        unspent.append(left)
        was_cut = False
        for index, trace in enumerate(mine.traces):
            stats[trace.agent].add(trace, oracle.allocation[index])
            was_cut = was_cut or not trace.ran or trace.context < trace.need_in
            was_cut = was_cut or trace.wrote < trace.need_out
        if was_cut:
            unspent_cut.append(left)
            cut_with_unspent += left >= UNSPENT_SHARE * ceiling
    agents: dict[str, Any] = {}
    for name in names:
        components = {k: round(v / count, 5) for k, v in agent_loss[name].items() if k != "model"}
        agents[name] = {
            "loss": round(sum(agent_loss[name].values()) / count, 5),
            "by_cut": {k: v for k, v in components.items() if v != 0},
            **stats[name].summary(count),
        }
    by_cut = {
        component: round(sum(agent_loss[name][component] for name in names) / count, 5)
        for component in COMPONENTS
    }
    by_cut["model"] = round(model_loss / count, 5)
    ranked = sorted(
        (
            (value, name, component)
            for name in names
            for component, value in agent_loss[name].items()
        ),
        reverse=True,
    )
    oracle_tokens = statistics.fmean(b.tokens for b in best)
    return {
        "gap": round(
            statistics.fmean(b.quality for b in best)
            - statistics.fmean(p.outcome.quality for p in played),
            5,
        ),
        "unattributed": round(unattributed / count, 5),
        "agents": agents,
        "by_cut": by_cut,
        "top": [
            {"agent": name, "cut": component, "loss": round(value / count, 5)}
            for value, name, component in ranked[:3]
            if value > 0
        ],
        "unspent": {
            "unspent_mean": round(statistics.fmean(unspent), 1),
            "oracle_unspent_mean": round(ceiling - oracle_tokens, 1),
            "cut_requests_rate": round(len(unspent_cut) / count, 4),
            "unspent_when_cut_mean": round(statistics.fmean(unspent_cut), 1)
            if unspent_cut
            else 0.0,
            "cut_with_unspent_rate": round(cut_with_unspent / count, 4),
        },
    }


class _AgentStats:
    """Per-agent sums: coverage, cut rates and tokens against the oracle's.

    Summed per call (an agent of a fixed pipeline makes one per request; a line of a tree
    or a team, as many as the request made of it): the summary's rates and means are per
    call, and ``calls_per_request`` says how many there were.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.in_cut = self.out_cut = self.refused = 0
        self.in_cover = self.out_cover = 0.0
        self.tokens = self.oracle_tokens = self.cap = self.oracle_cap = 0
        self.ctx = self.oracle_ctx = 0

    def add(self, trace: AgentTrace, allocation: tuple[int, int]) -> None:
        ctx_o, cap_o = allocation
        self.calls += 1
        self.refused += not trace.ran
        self.in_cut += trace.context < trace.need_in
        self.out_cut += trace.wrote < trace.need_out
        self.in_cover += min(1.0, trace.context / trace.need_in)
        self.out_cover += min(1.0, trace.wrote / trace.need_out)
        self.ctx += trace.context
        self.cap += trace.granted_out
        self.tokens += trace.read + trace.wrote
        self.oracle_ctx += ctx_o
        self.oracle_cap += cap_o
        self.oracle_tokens += ctx_o + cap_o

    def summary(self, requests: int) -> dict[str, float]:
        count = max(self.calls, 1)
        return {
            "calls_per_request": round(self.calls / requests, 4),
            "input_cut_rate": round(self.in_cut / count, 4),
            "output_cut_rate": round(self.out_cut / count, 4),
            "refused_rate": round(self.refused / count, 4),
            "input_coverage": round(self.in_cover / count, 4),
            "output_coverage": round(self.out_cover / count, 4),
            "context_mean": round(self.ctx / count, 1),
            "oracle_context_mean": round(self.oracle_ctx / count, 1),
            "output_cap_mean": round(self.cap / count, 1),
            "oracle_output_mean": round(self.oracle_cap / count, 1),
            "tokens_mean": round(self.tokens / count, 1),
            "oracle_tokens_mean": round(self.oracle_tokens / count, 1),
        }
