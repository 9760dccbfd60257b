"""Playing requests of a workload through the real Controller: the simulator plays the model.

Each request follows "One request, step by step" of the workload spec: for every agent in
order, its available input (what upstream cuts left) is counted and handed to
``req.begin``; the policy's grant decides what the agent reads and the most it may write;
the agent writes ``min(cap, need_out)``; while its output is cut it asks for more with
``req.extend`` (asking each time for as much again as it was granted, at most
``max_extensions`` times), paying the extension overhead the workload declares; then it
settles with ``req.finish``. When the request ends, its simulated quality is computed from
the hidden response model and told to the policy with ``req.score``.

The policy only ever sees what :class:`~apportion.policies.base.Observation` holds (the
features, the ceiling, the priorities, counted inputs, settled usage): never the needs or
the quality model, which stay in this module.
"""

from __future__ import annotations

from dataclasses import dataclass

from apportion.controller import Controller
from apportion.errors import BudgetExceeded
from apportion.policies import Policy
from apportion.sim.needs import RequestNeeds
from apportion.sim.quality import agent_quality, request_quality
from apportion.sim.workload import Workload
from apportion.spec import Agent, Pipeline

MAX_EXTENSIONS = 4


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What one simulated request came to.

    Attributes:
        quality: the request's simulated quality ``Q``.
        tokens: tokens consumed (input plus output, extensions included).
        calls: agent calls made.
        cut_calls: calls whose input or output was cut.
        critical_calls: calls of critical agents.
        critical_cut_calls: calls of critical agents whose input or output was cut.
        extensions: extensions granted.
        refused: agents that could not run at all (nothing left for them).
        request_id: the request's id in the controller's store.
    """

    quality: float
    tokens: int
    calls: int
    cut_calls: int
    critical_calls: int
    critical_cut_calls: int
    extensions: int
    refused: int
    request_id: str = ""


def pipeline_of(workload: Workload) -> Pipeline:
    """The pipeline a policy sees for a workload: names, priorities, order, output kinds."""
    return Pipeline(
        [
            Agent(a.name, priority=a.priority, after=a.after, output_kind=a.output_kind)
            for a in workload.agents
        ],
        name=workload.name,
    )


def run_request(
    controller: Controller,
    workload: Workload,
    needs: RequestNeeds,
    ceiling: int,
    *,
    max_extensions: int = MAX_EXTENSIONS,
) -> RequestOutcome:
    """Play one request through ``controller`` and return its outcome."""
    resend = workload.extension_overhead == "resend"
    outs: list[int] = []
    qualities: list[float] = []
    cut = critical = critical_cut = extensions = refused = 0
    with controller.request(ceiling, dict(needs.features)) as req:
        for index, spec in enumerate(workload.agents):
            need_in, need_out = needs.need_in[index], needs.need_out[index]
            avail = need_in
            if spec.input.upstream:
                avail -= sum(needs.need_out[u] - outs[u] for u in workload.upstream_indices(index))
            is_critical = spec.priority == "critical"
            critical += is_critical
            try:
                grant = req.begin(spec.name, input_tokens=max(avail, 0))
            except BudgetExceeded:
                refused += 1
                cut += 1
                critical_cut += is_critical
                outs.append(0)
                qualities.append(0.0)
                continue
            ctx = grant.context_tokens
            out = min(grant.output_tokens, need_out)
            used_in = ctx
            for _ in range(max_extensions):
                if out >= need_out:
                    break
                resent = ctx + out if resend else 0
                grown = req.extend(grant, grant.output_tokens, context_tokens=resent)
                if grown is None:
                    break
                extensions += 1
                used_in += resent
                out = min(out + (grown.output_tokens - grant.output_tokens), need_out)
                grant = grown
            was_cut = ctx < need_in or out < need_out
            cut += was_cut
            critical_cut += is_critical and was_cut
            req.finish(grant, input_tokens=used_in, output_tokens=out, truncated=out < need_out)
            outs.append(out)
            qualities.append(
                agent_quality(spec.output_kind, ctx, need_in, out, need_out, spec.input_sensitivity)
            )
        quality = request_quality(qualities, [a.influence for a in workload.agents])
        req.score(quality)
    return RequestOutcome(
        quality=quality,
        tokens=req.summary().consumed,
        calls=len(workload.agents) - refused,
        cut_calls=cut,
        critical_calls=critical,
        critical_cut_calls=critical_cut,
        extensions=extensions,
        refused=refused,
        request_id=req.request_id,
    )


def controller_for(workload: Workload, policy: str | Policy) -> Controller:
    """A controller over the workload's pipeline with the memory store, as production uses."""
    return Controller(pipeline_of(workload), policy=policy, store="memory://")
