"""The gateway's operations: JSON logs, Prometheus ``/metrics``, spans, a graceful drain.

:class:`Observed` is an ASGI middleware around the whole app. For every HTTP call it

* gives the call an id (the caller's ``X-Request-Id`` when it sends a sane one, else a
  new one) and answers it in ``X-Request-Id``;
* writes one log line, event ``http_request``, through the ``apportion.serve`` logger:
  ``request_id``, ``method``, ``path``, ``route``, ``status``, ``latency_ms``, and when
  known ``tenant``, ``agent``, ``apportion_request`` (the budget's request id),
  ``apportion_status``, ``granted``, ``used`` (no header, key or body is ever logged);
* counts it in Prometheus metrics (when ``prometheus_client`` is installed):
  ``apportion_http_requests_total{route,method,status}``,
  ``apportion_http_request_duration_seconds{route}`` and ``apportion_http_in_flight``;
* makes an OpenTelemetry span per proxied call (when OpenTelemetry is installed:
  extra ``otel``), ``chat {model}``, with the GenAI semantic conventions
  (``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.agent.name``,
  ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``, and
  ``gen_ai.response.model`` when a routing policy sent the call to another model; the
  log line's ``routed_model``) and the budget's
  (``apportion.request.id``, ``apportion.tenant``, ``apportion.call.status``,
  ``apportion.grant.tokens``, ``apportion.used_tokens``), parented on the caller's W3C
  ``traceparent`` when it sends one (on the global tracer provider, once the application
  has set one: no span is begun before, which costs nothing);
* counts the calls in flight, so that a shutdown waits for them (:meth:`Ops.drain`).

:class:`JsonFormatter` writes every log record as one JSON object per line (``time``,
``level``, ``logger``, ``event`` and the record's fields); :func:`log_config` is the
``logging.config`` dict ``apportion serve`` hands uvicorn (its access log is off: the
``http_request`` lines replace it).

``/metrics`` (:func:`metrics_body`) serves the default Prometheus registry: the HTTP
metrics above and, through the ``prometheus://`` telemetry sink the app adds, the
controller's metrics (``apportion_calls_total``, ``apportion_grants_total`` ...: see
:mod:`apportion.telemetry.prometheus`), which count a request's calls when it closes.
With ``PROMETHEUS_MULTIPROC_DIR`` set (``apportion serve --workers N`` sets it), every
worker writes its figures there and ``/metrics`` sums them over the workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from apportion.redaction import HIDDEN

__all__ = [
    "LOGGER",
    "REQUEST_ID",
    "JsonFormatter",
    "Observed",
    "Ops",
    "hide",
    "hide_config",
    "log_config",
    "metrics_body",
    "note",
]

LOGGER: Final = "apportion.serve"
"""The logger of the gateway's own lines (``http_request``, ``gateway_starting`` ...)."""

REQUEST_ID: Final = "X-Request-Id"
"""The header that carries a call's id (the caller's, or one the gateway makes)."""

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

PROXY_PATHS: Final = frozenset({"/v1/chat/completions", "/v1/responses"})

DRAIN_SECONDS: Final = 10.0
"""How long a shutdown waits, at most, for the calls still in flight to end."""

_URL_PASSWORD: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")
_secrets: set[str] = set()


def hide(*secrets: str | None) -> None:
    """Never write these strings (keys, passwords) in a log line: ``***`` instead."""
    _secrets.update(s for s in secrets if s and len(s) >= 4)


def hidden(text: str) -> str:
    """``text`` with URL passwords and every secret given to :func:`hide` as ``***``."""
    text = _URL_PASSWORD.sub(rf"\1{HIDDEN}@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, HIDDEN)
    return text


def hide_config(config: Any) -> None:
    """:func:`hide` the secrets of a :class:`~apportion.serve.config.ServeConfig`."""
    from urllib.parse import urlsplit

    key = config.signing_key
    try:
        password = urlsplit(config.store).password
    except ValueError:
        password = None
    hide(
        *(u.api_key for u in config.upstreams),
        key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
        password,
    )


_SANE_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SHOWN: Final = 128  # longest header value written to a log line


@dataclass
class Note:
    """What a handler tells the middleware about its call (see :func:`note`)."""

    tenant: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error_code: str | None = None
    call_status: str | None = None
    """A stream's settled status (its headers, sent first, said ``open``)."""
    granted: int | None = None
    used: int | None = None
    routed_model: str | None = None
    """The model a routing policy sent the call to instead of ``model``."""


_NOTE: ContextVar[Note | None] = ContextVar("apportion_serve_note", default=None)


def note(**fields: Any) -> None:
    """Tell the middleware about the current call (``tenant``, ``model``, token counts).

    Does nothing outside a call the middleware watches.
    """
    current = _NOTE.get()
    if current is not None:
        for name, value in fields.items():
            setattr(current, name, value)


# ---------------------------------------------------------------------- logs


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON: ``time``, ``level``, ``logger``, ``event``, fields.

    ``event`` is the record's message; a record logged with ``extra={"fields": {...}}``
    carries those fields too. An exception is written as ``error`` (its type and message)
    and ``traceback``. Any URL's password, and every secret given to :func:`hide` (the
    gateway's upstream keys, signing key and store URL's password), is written ``***``.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON object (no newline inside)."""
        stamp = datetime.fromtimestamp(record.created, UTC)
        data: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            data["error"] = f"{type(error).__name__}: {error}"
            data["traceback"] = "".join(traceback.format_exception(error))
        return hidden(json.dumps(data, default=str, ensure_ascii=False))


def log_config(level: str = "info") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of ``apportion serve``: JSON lines on stderr.

    uvicorn's loggers, the gateway's (``apportion.serve``), warnings and the root logger
    all write through :class:`JsonFormatter` at ``level``.
    """
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": ["json"], "level": upper, "propagate": False},
            LOGGER: {"handlers": ["json"], "level": upper, "propagate": False},
            "py.warnings": {"handlers": ["json"], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["json"], "level": "WARNING"},
    }


# ---------------------------------------------------------------------- metrics


def prometheus_available() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


_HTTP_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_http_metrics: dict[int, tuple[Any, Any, Any]] = {}


def _http(registry: Any) -> tuple[Any, Any, Any]:
    """The HTTP metric families in ``registry`` (made once per registry)."""
    found = _http_metrics.get(id(registry))
    if found is not None:
        return found
    from prometheus_client import Counter, Gauge, Histogram

    kw: dict[str, Any] = {"namespace": "apportion", "registry": registry}
    made = (
        Counter("http_requests", "HTTP calls answered.", ("route", "method", "status"), **kw),
        Histogram(
            "http_request_duration_seconds",
            "Seconds from a call's arrival to its answer's end.",
            ("route",),
            buckets=_HTTP_BUCKETS,
            **kw,
        ),
        Gauge("http_in_flight", "HTTP calls being answered.", multiprocess_mode="livesum", **kw),
    )
    _http_metrics[id(registry)] = made
    return made


def metrics_body() -> tuple[bytes, str]:
    """What ``/metrics`` answers: the exposition text and its content type.

    The default registry, or, with ``PROMETHEUS_MULTIPROC_DIR`` set, the sum over every
    process that wrote there.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry
    from prometheus_client import generate_latest as latest

    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return latest(registry), CONTENT_TYPE_LATEST
    return latest(REGISTRY), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------- the middleware


class Ops:
    """The operations state of one app: its logger, metrics, tracer and calls in flight.

    Args:
        tracer_provider: the OpenTelemetry provider of the proxy's spans (default: the
            global one); unused when OpenTelemetry is not installed.
        tracing: ``False``: make no spans.
    """

    def __init__(self, *, tracer_provider: Any = None, tracing: bool = True) -> None:
        self.log = logging.getLogger(LOGGER)
        self.in_flight = 0
        self.metrics: tuple[Any, Any, Any] | None = None
        if prometheus_available():
            from prometheus_client import REGISTRY

            self.metrics = _http(REGISTRY)
        self.tracer: Any = None
        self._global: Callable[[], bool] | None = None
        if tracing:
            try:
                from opentelemetry import trace
            except ImportError:
                pass
            else:
                from apportion.version import __version__

                self.tracer = trace.get_tracer(
                    "apportion.serve", __version__, tracer_provider=tracer_provider
                )
                if tracer_provider is None:  # the global one: none until the app sets one
                    from opentelemetry.trace import ProxyTracerProvider

                    def global_set() -> bool:
                        return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider)

                    self._global = global_set

    def tracing(self) -> bool:
        """Whether to make spans now (the global provider: once the application set one)."""
        return self.tracer is not None and (self._global is None or self._global())

    async def drain(self, bound: float = DRAIN_SECONDS) -> int:
        """Wait until no call is in flight, for at most ``bound`` seconds; those left."""
        polls = max(1, int(bound / 0.05))
        for _ in range(polls):
            if self.in_flight <= 0:
                break
            await asyncio.sleep(0.05)
        return self.in_flight

    def mark_dead(self) -> None:
        """In multiprocess mode, drop this process's live gauges (at its shutdown)."""
        if self.metrics is not None and os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


def _shown(value: str | None) -> str | None:
    return None if value is None else value[:_SHOWN]


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class Observed:
    """ASGI middleware: call ids, ``http_request`` log lines, metrics, spans, in-flight."""

    def __init__(self, app: Callable[..., Awaitable[None]], ops: Ops) -> None:
        self.app = app
        self.ops = ops

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Watch one HTTP call (anything else passes through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ops = self.ops
        started = time.perf_counter()
        headers = _headers(scope.get("headers", ()))
        given = headers.get("x-request-id")
        call_id = given if given is not None and _SANE_ID.match(given) else uuid.uuid4().hex
        path: str = scope.get("path", "")
        answer: dict[str, Any] = {"status": 500, "headers": {}}
        id_header = (b"x-request-id", call_id.encode("ascii"))

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["headers"] = _headers(message.get("headers", ()))
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        span = self._span(headers) if path in PROXY_PATHS and ops.tracing() else None
        current = Note()
        token = _NOTE.set(current)
        ops.in_flight += 1
        if ops.metrics is not None:
            ops.metrics[2].inc()
        error: BaseException | None = None
        try:
            if span is None:
                await self.app(scope, receive, sending)
            else:
                from opentelemetry import trace

                with trace.use_span(span, end_on_exit=False):
                    await self.app(scope, receive, sending)
        except BaseException as exc:
            error = exc
            raise
        finally:
            ops.in_flight -= 1
            _NOTE.reset(token)
            self._done(scope, headers, call_id, answer, current, started, span, error)

    def _span(self, headers: dict[str, str]) -> Any:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat"}
        agent = headers.get("apportion-agent")
        if agent is not None:
            attributes["gen_ai.agent.name"] = _shown(agent)
        parent = propagate.extract(headers) if "traceparent" in headers else None
        return self.ops.tracer.start_span(
            "chat", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    def _done(
        self,
        scope: Any,
        headers: dict[str, str],
        call_id: str,
        answer: dict[str, Any],
        current: Note,
        started: float,
        span: Any,
        error: BaseException | None,
    ) -> None:
        ops = self.ops
        seconds = time.perf_counter() - started
        status = int(answer["status"])
        out: dict[str, str] = answer["headers"]
        route_obj = scope.get("route")
        route = getattr(route_obj, "path", None)
        if route is None:  # the proxy's plain routes do not say: their paths are fixed
            route = scope.get("path") if scope.get("path") in PROXY_PATHS else "other"
        state = scope.get("state") or {}
        tenant = current.tenant
        if tenant is None:
            who = state.get("tenant") if isinstance(state, dict) else None
            tenant = getattr(who, "name", None)
        budget = out.get("apportion-request") or headers.get("apportion-request")
        if budget is None:
            budget = (scope.get("path_params") or {}).get("request_id")
        fields: dict[str, Any] = {
            "request_id": call_id,
            "method": scope.get("method"),
            "path": _shown(scope.get("path")),
            "route": route,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
        }
        extra = {
            "tenant": tenant,
            "agent": _shown(headers.get("apportion-agent")),
            "apportion_request": _shown(budget),
            "apportion_status": current.call_status or out.get("apportion-status"),
            "granted": _first(current.granted, _int(out.get("apportion-granted"))),
            "used": _first(current.used, _int(out.get("apportion-used"))),
            "model": _shown(current.model),
            "routed_model": _shown(current.routed_model),
            "error_code": current.error_code,
        }
        fields.update({k: v for k, v in extra.items() if v is not None})
        if error is not None:
            fields["error"] = type(error).__name__
        level = logging.ERROR if status >= 500 else logging.INFO
        if ops.log.isEnabledFor(level):
            ops.log.log(level, "http_request", extra={"fields": fields})
        if ops.metrics is not None:
            requests, duration, flying = ops.metrics
            requests.labels(route, scope.get("method", ""), str(status)).inc()
            duration.labels(route).observe(seconds)
            flying.dec()
        if span is not None:
            self._end_span(span, fields, current, error)

    @staticmethod
    def _end_span(span: Any, fields: dict[str, Any], current: Note, error: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        if current.model is not None:
            span.update_name(f"chat {current.model}")
            span.set_attribute("gen_ai.request.model", current.model)
        if current.routed_model is not None:  # the model that answered, chosen by routing
            span.set_attribute("gen_ai.response.model", current.routed_model)
        shown = {
            "gen_ai.usage.input_tokens": current.input_tokens,
            "gen_ai.usage.output_tokens": current.output_tokens,
            "apportion.request.id": fields.get("apportion_request"),
            "apportion.tenant": fields.get("tenant"),
            "apportion.call.status": fields.get("apportion_status"),
            "apportion.grant.tokens": fields.get("granted"),
            "apportion.used_tokens": fields.get("used"),
            "http.response.status_code": fields["status"],
            "apportion.http.request_id": fields["request_id"],
        }
        for name, value in shown.items():
            if value is not None:
                span.set_attribute(name, value)
        status = fields["status"]
        if error is not None or status >= 400:
            kind = type(error).__name__ if error is not None else str(status)
            span.set_attribute("error.type", fields.get("error_code") or kind)
            span.set_status(Status(StatusCode.ERROR, kind))
        span.end()
