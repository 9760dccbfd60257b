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

from apportion.controller import Controller, Request
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


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one played call came to.

    Attributes:
        read: context tokens granted at first: what the agent read of its input.
        wrote: output tokens written, extensions included.
        consumed_in: input tokens consumed (the first read plus every resent context).
        granted: tokens granted, extensions included.
        extensions: extensions granted.
        refused: the call could not run at all (nothing left for the agent).
    """

    read: int
    wrote: int
    consumed_in: int
    granted: int
    extensions: int
    refused: bool


REFUSED = CallResult(0, 0, 0, 0, 0, True)


def play_call(
    req: Request,
    agent: str,
    input_tokens: int,
    need_out: int,
    *,
    resend: bool,
    max_extensions: int = MAX_EXTENSIONS,
) -> CallResult:
    """Play one model call: begin, write what the cap allows, extend while cut, finish.

    Args:
        req: the open request.
        agent: the agent calling.
        input_tokens: the input it has in hand.
        need_out: the output it would write unconstrained.
        resend: an extension re-reads the prompt and the partial answer.
        max_extensions: most extensions the call asks for (each asks for as much again as
            the call was granted).
    """
    try:
        grant = req.begin(agent, input_tokens=input_tokens)
    except BudgetExceeded:
        return REFUSED
    read = grant.context_tokens
    wrote = min(grant.output_tokens, need_out)
    consumed_in = read
    extensions = 0
    for _ in range(max_extensions):
        if wrote >= need_out:
            break
        resent = read + wrote if resend else 0
        grown = req.extend(grant, grant.output_tokens, context_tokens=resent)
        if grown is None:
            break
        extensions += 1
        consumed_in += resent
        wrote = min(wrote + grown.output_tokens - grant.output_tokens, need_out)
        grant = grown
    req.finish(grant, input_tokens=consumed_in, output_tokens=wrote, truncated=wrote < need_out)
    return CallResult(read, wrote, consumed_in, grant.total, extensions, False)


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
            call = play_call(
                req,
                spec.name,
                max(avail, 0),
                need_out,
                resend=resend,
                max_extensions=max_extensions,
            )
            was_cut = call.refused or call.read < need_in or call.wrote < need_out
            critical += is_critical
            cut += was_cut
            critical_cut += is_critical and was_cut
            refused += call.refused
            extensions += call.extensions
            outs.append(call.wrote)
            qualities.append(
                agent_quality(
                    spec.output_kind,
                    call.read,
                    need_in,
                    call.wrote,
                    need_out,
                    spec.input_sensitivity,
                )
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
