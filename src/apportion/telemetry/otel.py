"""Telemetry as OpenTelemetry spans, with the GenAI semantic conventions.

Each closed request becomes one span ``apportion.request {pipeline}`` (from its opening to
its closing), parented on the span that was current when the request closed (if any),
with one child span per grant: ``chat {model}`` (``chat`` when the model is unknown), from
the grant's begin to its settlement. Times are the controller's clock, which must be
seconds since the epoch (the default) for the spans to make sense to a tracing backend.

Attributes of a call span:

- GenAI conventions: ``gen_ai.operation.name`` (``chat``), ``gen_ai.agent.name``,
  ``gen_ai.request.model``, ``gen_ai.request.max_tokens`` (the output granted),
  ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
  ``gen_ai.response.finish_reasons``: each only when known;
- the grant: ``apportion.request.id``, ``apportion.pipeline``, ``apportion.grant.id``,
  ``apportion.grant.context_tokens``, ``apportion.grant.output_tokens``,
  ``apportion.grant.extensions``, ``apportion.grant.settled``, ``apportion.agent.priority``,
  ``apportion.agent.kind`` (the agent kind of a name not listed in the pipeline),
  ``apportion.truncated``, ``apportion.input_cut``, ``apportion.dropped_tokens``,
  ``apportion.overuse``, ``apportion.ceiling_hit``, ``apportion.cost_usd``,
  ``apportion.usage_estimated``, ``apportion.call.status`` (``completed``, ``wrapped_up``,
  ``cut`` ...), ``apportion.schema_version``.

Extensions, releases and expiries are span events (``apportion.extend`` ...). The request
span carries ``apportion.request.{id,ceiling,consumed,overflow,status,outcome}``,
``apportion.pipeline`` and, in a request tree, ``apportion.request.{parent_id,root_id,
depth}``.

A child request's span (``req.child``, ``fan_out``) is nested under its parent's request
span, in the parent's trace. A child closes before its parent, so the sink keeps a child's
record until its parent's arrives (when the parent runs in this process:
:attr:`~apportion.telemetry.records.RequestUsage.parent_local`), then writes the parent's
span and its children's under it. A child of a request another process runs
(``controller.attach(...).child``) is written at once, under its parent's span only when
this sink wrote that span already (it remembers the latest :data:`REMEMBERED`). At most
:data:`MAX_WAITING` children wait: beyond that, and when the sink closes, the children
that waited longest are written unnested (parented on the span current when they closed),
their ``apportion.request.parent_id`` still naming the parent.

``apportion ingest`` reads such spans back (OTLP JSON), trees included, as well as spans of
other GenAI instrumentations.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from apportion.errors import MissingExtra
from apportion.ledger import Event
from apportion.telemetry.base import Sink
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.version import __version__

__all__ = ["MAX_WAITING", "REMEMBERED", "OTelSink"]

_NS = 1_000_000_000

MAX_WAITING: Final = 1_000
"""Child records a sink keeps at most while their parents' records have not arrived."""

REMEMBERED: Final = 10_000
"""Request spans a sink remembers, to nest children that arrive after their parent."""


def _require_otel() -> None:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise MissingExtra("opentelemetry-sdk", "otel") from None


class OTelSink(Sink):
    """Writes usage records as OpenTelemetry spans (see the module docstring).

    Args:
        tracer_provider: the provider to create spans with (default: the global one, set
            with ``opentelemetry.trace.set_tracer_provider``).

    Raises:
        MissingExtra: OpenTelemetry is not installed (extra ``otel``).
    """

    name = "otel"

    def __init__(self, tracer_provider: Any = None) -> None:
        _require_otel()
        self.tracer_provider = tracer_provider
        self._tracer: Any = None
        self._spans: OrderedDict[str, Any] = OrderedDict()  # request id: its span context
        self._waiting: OrderedDict[str, list[RequestUsage]] = OrderedDict()  # by parent id
        self._held = 0

    def _get_tracer(self) -> Any:
        if self._tracer is None:
            from opentelemetry import trace

            self._tracer = trace.get_tracer(
                "apportion", __version__, tracer_provider=self.tracer_provider
            )
        return self._tracer

    def write(self, batch: Sequence[RequestUsage]) -> None:
        """Turn each record into a request span and one child span per grant.

        A child whose parent's record is still to come waits for it (module docstring).
        """
        tracer = self._get_tracer()
        for record in batch:
            parent = self._spans.get(record.parent_id) if record.parent_id else None
            if record.parent_id and parent is None and record.parent_local:
                self._waiting.setdefault(record.parent_id, []).append(record)
                self._held += 1
                while self._held > MAX_WAITING:
                    self._release_oldest(tracer)
                continue
            self._tree(tracer, record, parent)

    def close(self) -> None:
        """Write the children still waiting for their parents, unnested.

        The tracer provider belongs to the application: it is left open.
        """
        if self._waiting:
            tracer = self._get_tracer()
            while self._waiting:
                self._release_oldest(tracer)

    def _release_oldest(self, tracer: Any) -> None:
        """Write the children that have waited longest for one parent, unnested."""
        _, kids = self._waiting.popitem(last=False)
        self._held -= len(kids)
        for kid in kids:
            self._tree(tracer, kid, None)

    def _tree(self, tracer: Any, record: RequestUsage, parent: Any) -> None:
        """Write a request's spans, then those of its children that waited for it."""
        context = self._request(tracer, record, parent)
        self._spans[record.request_id] = context
        self._spans.move_to_end(record.request_id)
        while len(self._spans) > REMEMBERED:
            self._spans.popitem(last=False)
        kids = self._waiting.pop(record.request_id, [])
        self._held -= len(kids)
        for kid in kids:
            self._tree(tracer, kid, context)

    def _request(self, tracer: Any, record: RequestUsage, parent_span: Any = None) -> Any:
        """Write one request's span and its calls' spans; its span context.

        ``parent_span``: the span context of its parent request's span, if written.
        """
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

        parent = None
        above = parent_span if parent_span is not None else record.trace_context
        if above is not None:
            parent = trace.set_span_in_context(NonRecordingSpan(above))
        times = [t for c in record.calls for t in (c.began_at, c.at) if t is not None]
        start = record.opened_at if record.opened_at is not None else min(times, default=None)
        end = record.closed_at if record.closed_at is not None else max(times, default=start)
        attributes: dict[str, Any] = {
            "apportion.request.id": record.request_id,
            "apportion.pipeline": record.pipeline,
            "apportion.request.consumed": record.consumed,
            "apportion.request.overflow": record.overflow,
            "apportion.request.status": record.status,
            "apportion.schema_version": record.schema_version,
        }
        if record.ceiling is not None:
            attributes["apportion.request.ceiling"] = record.ceiling
        if record.outcome is not None:
            attributes["apportion.request.outcome"] = record.outcome
        if record.parent_id is not None:
            attributes["apportion.request.parent_id"] = record.parent_id
        if record.root_id is not None:
            attributes["apportion.request.root_id"] = record.root_id
            attributes["apportion.request.depth"] = record.depth
        span = tracer.start_span(
            f"apportion.request {record.pipeline}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(start),
        )
        if record.status != "closed":
            span.set_status(Status(StatusCode.ERROR, f"request {record.status}"))
        inside = trace.set_span_in_context(span)
        events: dict[int, list[Event]] = {}
        for event in record.events:
            if event.kind in ("extend", "release", "expire"):
                events.setdefault(event.grant_id, []).append(event)
        for call in record.calls:
            child = tracer.start_span(
                f"chat {call.model}" if call.model else "chat",
                context=inside,
                kind=SpanKind.CLIENT,
                attributes=_call_attributes(record, call),
                start_time=_ns(call.began_at if call.began_at is not None else start),
            )
            for event in events.get(call.grant_id, ()):
                child.add_event(
                    f"apportion.{event.kind}",
                    {
                        "apportion.context_tokens": event.context_tokens,
                        "apportion.output_tokens": event.output_tokens,
                        "apportion.note": event.note,
                    },
                    timestamp=_ns(event.at),
                )
            child.end(end_time=_ns(call.at if call.at is not None else end))
        span.end(end_time=_ns(end))
        return span.get_span_context()


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * _NS)


def _call_attributes(record: RequestUsage, call: CallUsage) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.agent.name": call.agent,
        "apportion.request.id": record.request_id,
        "apportion.pipeline": record.pipeline,
        "apportion.grant.id": call.grant_id,
        "apportion.grant.extensions": call.extensions,
        "apportion.grant.settled": call.settled,
        "apportion.overuse": call.overuse,
        "apportion.ceiling_hit": call.ceiling_hit,
        "apportion.schema_version": record.schema_version,
    }
    optional = {
        "gen_ai.request.model": call.model,
        "gen_ai.request.max_tokens": call.granted_output,
        "gen_ai.usage.input_tokens": call.used_input,
        "gen_ai.usage.output_tokens": call.used_output,
        "gen_ai.response.finish_reasons": [call.finish_reason] if call.finish_reason else None,
        "apportion.grant.context_tokens": call.granted_context,
        "apportion.grant.output_tokens": call.granted_output,
        "apportion.agent.priority": call.priority,
        "apportion.agent.kind": call.kind,
        "apportion.truncated": call.truncated,
        "apportion.input_cut": call.input_cut,
        "apportion.dropped_tokens": call.dropped_tokens,
        "apportion.cost_usd": call.cost_usd,
        "apportion.usage_estimated": call.estimated,
        "apportion.call.status": call.status,
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes
