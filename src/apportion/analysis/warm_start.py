"""Warm-starting a policy's need model from telemetry: the calls a database recorded.

:func:`warm_from_telemetry` folds every finished call of a pipeline's recorded requests,
with the request's features, into the need model of a predicting policy (``estimate``,
``elastic``, ``iterative``, ``learned``, ``routed``), as if the policy had seen them
live. Only the need model: telemetry holds no outcome scores, so no weight of the
``learned`` policy can honestly be drawn from it (its weights warm-start from a learning
run, :meth:`~apportion.policies.learned.LearnedPolicy.warm_start`).

It lives here, above policies and telemetry, because policies read no telemetry (and no
store) themselves.
"""

from __future__ import annotations

from apportion.errors import PolicyConfigError
from apportion.policies.predicting import PredictingPolicy
from apportion.spec import Pipeline
from apportion.telemetry.sql import Dataset, open_database

__all__ = ["warm_from_telemetry"]


def warm_from_telemetry(
    policy: PredictingPolicy, source: str | Dataset, *, pipeline: Pipeline
) -> dict[str, int]:
    """Fold the finished calls of ``pipeline``'s recorded requests into ``policy``'s need model.

    Each recorded request's calls per agent (begun, whatever their end) are also folded
    into the policy's call counts (how often each agent runs, how many calls it makes, and
    what ran after what, in the order the calls were granted:
    :mod:`apportion.policies.occurrence`). A call of a name the pipeline does not list
    counts on the kind that matches it.

    Args:
        policy: a predicting policy.
        source: a telemetry database URL (or a ``.db`` path), or a loaded
            :class:`~apportion.telemetry.sql.Dataset`.
        pipeline: the pipeline whose requests are read (by name) and whose model is warmed;
            calls of agents it does not have are passed over.

    Returns:
        ``{"requests": 0, "calls": N}``: no request is added to outcome statistics; ``N``
        calls were folded into the need model.

    Raises:
        PolicyConfigError: ``policy`` predicts no needs, or ``pipeline`` is no pipeline.
        DatabaseUnavailable, SchemaVersionError: the database cannot be read.
    """
    if not isinstance(policy, PredictingPolicy):
        raise PolicyConfigError(
            f"only a predicting policy has a need model to warm, not {type(policy).__name__}"
        )
    if not isinstance(pipeline, Pipeline):
        raise PolicyConfigError(
            f"pipeline must be an apportion.Pipeline, not {type(pipeline).__name__}"
        )
    if isinstance(source, str):
        with open_database(source) as db:
            source = db.load(pipeline=pipeline.name)
    names = {a.name for a in pipeline.agents}
    by_request: dict[str, list[tuple[str, int, int, bool]]] = {}
    begun: dict[str, dict[str, int]] = {}
    for call in source.calls:
        line = _line(pipeline, names, call.agent, call.kind)
        if line is None:
            continue
        counts = begun.setdefault(call.request_id, {})  # dicts keep first-call order
        counts[line] = counts.get(line, 0) + 1
        if (
            call.settled == "finish"
            and call.used_input is not None
            and call.used_output is not None
        ):
            by_request.setdefault(call.request_id, []).append(
                (line, call.used_input, call.used_output, bool(call.truncated))
            )
    model = policy.needs(pipeline)
    occurrence = policy.call_counts(pipeline)
    calls = 0
    for request_id, settled in by_request.items():
        record = source.requests.get(request_id)
        if record is None or record.pipeline != pipeline.name:
            continue
        model.observe(record.features, settled)
        calls += len(settled)
    for request_id, record in source.requests.items():
        if record.pipeline == pipeline.name:
            counts = begun.get(request_id, {})
            occurrence.observe(counts, model.row(record.features), list(counts))
    return {"requests": 0, "calls": calls}


def _line(pipeline: Pipeline, names: set[str], agent: str, kind: str | None) -> str | None:
    """The pipeline line a recorded call counts on, or ``None`` (not this pipeline's)."""
    if kind in names:
        return kind
    if agent in names:
        return agent
    found = pipeline.kind_of(agent)
    return None if found is None else found.name
