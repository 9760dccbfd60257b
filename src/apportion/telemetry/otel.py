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
span carries ``apportion.request.{id,ceiling,consumed,overflow,status,outcome}`` and
``apportion.pipeline``. ``apportion ingest`` reads such spans back (OTLP JSON), as well as
spans of other GenAI instrumentations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apportion.errors import MissingExtra
from apportion.ledger import Event
from apportion.telemetry.base import Sink
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.version import __version__

__all__ = ["OTelSink"]

_NS = 1_000_000_000


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

    def _get_tracer(self) -> Any:
        if self._tracer is None:
            from opentelemetry import trace

            self._tracer = trace.get_tracer(
                "apportion", __version__, tracer_provider=self.tracer_provider
            )
        return self._tracer

    def write(self, batch: Sequence[RequestUsage]) -> None:
        """Turn each record into a request span and one child span per grant."""
        tracer = self._get_tracer()
        for record in batch:
            self._request(tracer, record)

    def close(self) -> None:
        """Nothing to release: the tracer provider belongs to the application."""

    def _request(self, tracer: Any, record: RequestUsage) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

        parent = None
        if record.trace_context is not None:
            parent = trace.set_span_in_context(NonRecordingSpan(record.trace_context))
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
