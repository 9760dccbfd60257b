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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from apportion.catalog import Catalog, ModelInfo
from apportion.controller import Controller, Request
from apportion.errors import BudgetExceeded
from apportion.policies import Policy
from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.quality import agent_quality, request_quality
from apportion.sim.workload import Workload
from apportion.spec import Agent, AgentKind, Pipeline

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
        cost: USD the request's calls cost (0 without a ``models`` section).
        played: each call as played, in the order of the request's agents (of its
            realized calls, for a workload with trees or dynamic teams).
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
    cost: float = 0.0
    played: tuple[CallResult, ...] = ()


def pipeline_of(workload: Workload) -> Pipeline:
    """The pipeline a policy sees for a workload: names, priorities, order, output kinds.

    An agent with ``fan_out`` or a ``pool`` (``docs/workload-trees.md``) is an agent kind
    matching ``NAME:*``, unless its pool is ``listed``: then every name of the pool is an
    agent (after the kind's upstream agents). Probabilities and call counts are not shown:
    a policy learns them from history.
    """
    agents: list[Agent] = []
    kinds: list[AgentKind] = []
    expanded: dict[str, tuple[str, ...]] = {}
    for a in workload.agents:
        after = tuple(dict.fromkeys(n for u in a.after for n in expanded.get(u, (u,))))
        fields: dict[str, Any] = {
            "priority": a.priority,
            "after": after,
            "output_kind": a.output_kind,
        }
        if a.model is not None:
            fields["model"] = a.model
        if a.is_kind:
            kinds.append(AgentKind(a.name, f"{a.name}:*", **fields))
        elif a.pool is not None:
            names = a.pool.names(a.name)
            expanded[a.name] = names
            agents.extend(Agent(name, **fields) for name in names)
        else:
            agents.append(Agent(a.name, **fields))
    return Pipeline(agents, name=workload.name, kinds=kinds)


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
        model: the model the call ran on (``None``: none named).
        granted_out: output tokens granted, extensions included (part of ``granted``).
    """

    read: int
    wrote: int
    consumed_in: int
    granted: int
    extensions: int
    refused: bool
    model: str | None = None
    granted_out: int = 0


REFUSED = CallResult(0, 0, 0, 0, 0, True)


def play_call(
    req: Request,
    agent: str,
    input_tokens: int,
    need_out: int,
    *,
    resend: bool,
    max_extensions: int = MAX_EXTENSIONS,
    model: str | None = None,
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
        model: the model the caller means to call (a routing policy may choose another).
    """
    try:
        grant = req.begin(agent, input_tokens=input_tokens, model=model)
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
    return CallResult(
        read,
        wrote,
        consumed_in,
        grant.total,
        extensions,
        False,
        grant.model or model,
        grant.output_tokens,
    )


def run_request(
    controller: Controller,
    workload: Workload,
    needs: RequestNeeds,
    ceiling: int,
    *,
    max_extensions: int = MAX_EXTENSIONS,
    ceiling_usd: float | None = None,
    model: str | None = None,
    request_id: str | None = None,
) -> RequestOutcome:
    """Play one request through ``controller`` and return its outcome.

    ``request_id`` names the request in the store (default: a fresh id); a rollout splits
    traffic by it, so fixed ids replay the same split.

    With a ``models`` section, each call runs on the model the policy chose (a routing
    policy), else on ``model``, else on the agent's ``model``, else on the workload's first
    model; its quality is multiplied by that model's capability and its cost is priced
    on it. ``ceiling_usd`` (the workload's when ``None``) applies only then.

    A request of a workload with trees or dynamic teams plays its realized calls
    (:class:`~apportion.sim.needs.Realized`), each under its instance's name.
    """
    names = needs.names_of(workload)
    workload = needs.workload_of(workload)
    resend = workload.extension_overhead == "resend"
    models = {m.name: m for m in workload.models}
    usd = (ceiling_usd if ceiling_usd is not None else workload.ceiling_usd) if models else None
    cost = 0.0
    outs: list[int] = []
    played: list[CallResult] = []
    qualities: list[float] = []
    cut = critical = critical_cut = extensions = refused = 0
    with controller.request(
        ceiling, dict(needs.features), ceiling_usd=usd, request_id=request_id
    ) as req:
        for index, spec in enumerate(workload.agents):
            need_in, need_out = needs.need_in[index], needs.need_out[index]
            avail = need_in
            if spec.input.upstream:
                avail -= sum(needs.need_out[u] - outs[u] for u in workload.upstream_indices(index))
            is_critical = spec.priority == "critical"
            default = (model or spec.model or workload.models[0].name) if models else None
            call = play_call(
                req,
                names[index],
                max(avail, 0),
                need_out,
                resend=resend,
                max_extensions=max_extensions,
                model=default,
            )
            capability = 1.0
            if models and not call.refused:
                used = models[call.model or str(default)]
                capability = used.capability[spec.output_kind]
                cost += used.cost(call.consumed_in, call.wrote)
            was_cut = call.refused or call.read < need_in or call.wrote < need_out
            critical += is_critical
            cut += was_cut
            critical_cut += is_critical and was_cut
            refused += call.refused
            extensions += call.extensions
            outs.append(call.wrote)
            played.append(call)
            qualities.append(
                agent_quality(
                    spec.output_kind,
                    call.read,
                    need_in,
                    call.wrote,
                    need_out,
                    spec.input_sensitivity,
                )
                * capability
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
        cost=cost,
        played=tuple(played),
    )


def catalog_of(
    workload: Workload, declared: Mapping[str, Mapping[str, float] | None] | None = None
) -> Catalog:
    """The workload's models as a catalog (no LiteLLM: the workload is the whole world).

    Args:
        workload: the workload.
        declared: capability tables to declare instead of the workload's, by model name
            (``None``: declare no table); a policy is then told a table the simulated
            world does not follow (the world's stays the workload's).
    """
    tables: Mapping[str, Mapping[str, float] | None] = declared or {}
    return Catalog(
        [
            ModelInfo(
                m.name,
                input_price=m.input_price,
                output_price=m.output_price,
                context_window=m.context_window,
                max_output=m.max_output,
                capability=tables.get(m.name, m.capability),  # checked into a dict
                source=f"workload {workload.name}",
            )
            for m in workload.models
        ],
        litellm=False,
        name=f"workload {workload.name}",
    )


def controller_for(
    workload: Workload, policy: str | Policy, catalog: Catalog | None = None
) -> Controller:
    """A controller over the workload's pipeline with the memory store, as production uses.

    ``catalog`` (default: :func:`catalog_of` the workload) is what the policy is told.
    """
    return Controller(
        pipeline_of(workload),
        policy=policy,
        store="memory://",
        catalog=catalog if catalog is not None else catalog_of(workload),
    )


def run_requests(
    workload: Workload,
    policy: str | Policy,
    requests: int,
    *,
    catalog: Catalog | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[RequestOutcome]:
    """Requests ``0 .. requests - 1`` of ``workload`` played online through one controller.

    Each drawn from the workload's seed and played at its ceiling (:func:`run_request`),
    the policy learning as it goes; ``catalog`` as for :func:`controller_for`;
    ``progress`` called with 1 after each request.
    """
    controller = controller_for(workload, policy, catalog)
    seed, ceiling = workload.seed or 0, workload.ceiling
    if ceiling is None:
        raise ValueError(f"workload {workload.name!r} has no default ceiling")
    outcomes = []
    for r in range(requests):
        outcomes.append(run_request(controller, workload, draw_needs(workload, seed, r), ceiling))
        if progress is not None:
            progress(1)
    return outcomes
