"""Telemetry as Prometheus metrics, per pipeline and agent.

Metrics (``apportion_`` prefix; labels ``pipeline`` and ``agent`` unless said; the calls of an
agent kind's members count under the kind's name, so a team drawn per run adds no series):

- ``apportion_grants_total`` (counter): grants begun;
- ``apportion_calls_total{status}`` (counter): calls by how they ended (the
  :mod:`apportion.calls` statuses: ``completed``, ``wrapped_up``, ``cut``, and ``late``,
  ``released``, ``expired``, ``closed`` for grants settled otherwise; ``unknown`` when a
  record carries none), and begins refused (no grant made) as ``refused``: only
  ``completed`` is a success;
- ``apportion_granted_tokens_total{kind}`` (counter): tokens granted, extensions
  included; ``kind`` is ``context`` or ``output``;
- ``apportion_consumed_tokens_total{kind}`` (counter): tokens used; ``kind`` is
  ``input`` or ``output``;
- ``apportion_utilization`` (histogram): per finished call, tokens used / tokens granted;
- ``apportion_ceiling_hits_total`` (counter): calls that hit their budget (output
  truncated or input cut);
- ``apportion_extensions_total`` (counter): extensions granted;
- ``apportion_released_total{how}`` (counter): grants settled without usage; ``how`` is
  ``release``, ``expire`` or ``close``;
- ``apportion_overuse_tokens_total`` (counter): tokens used beyond the grant;
- ``apportion_requests_total{pipeline,status}`` (counter): closed requests by status;
- ``apportion_telemetry_dropped_total{sink,reason}`` (counter): records that never
  reached a telemetry sink of this process (any sink, not only this one): ``full`` (the
  oldest, dropped past its buffer's bound while the sink was down or slow), ``failed``
  (refused by the sink), ``discarded``.

A child request (``req.child``, ``fan_out``) counts as a request of its own, and its calls
under their agents, once: its usage folded back into its parent is not counted again (the
counters add up calls, not requests' ``consumed``). Trees, having unbounded names, get no
label: the SQL sink and the report show them.

The metrics live in a registry (the default one unless told): expose them with
``prometheus_client``'s own means (``start_http_server``, the WSGI/ASGI apps), or give the
sink a port (``prometheus://0.0.0.0:9464``): it then serves them itself, from the first
write on.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from apportion.calls import REFUSED
from apportion.errors import InvalidArgument, MissingExtra
from apportion.telemetry.base import Sink
from apportion.telemetry.records import RequestUsage

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

__all__ = ["UTILIZATION_BUCKETS", "PrometheusSink"]

UTILIZATION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)
"""Bucket bounds of the utilization histogram (above 1: over-use)."""

_LABELS = ("pipeline", "agent")


class _Metrics(NamedTuple):
    grants: Any
    calls: Any
    granted: Any
    consumed: Any
    utilization: Any
    ceiling_hits: Any
    extensions: Any
    released: Any
    overuse: Any
    requests: Any
    dropped: Any


_families: dict[tuple[int, str], _Metrics] = {}
_families_lock = threading.Lock()


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MissingExtra("prometheus-client", "prometheus") from None


def _metrics(registry: Any, namespace: str) -> _Metrics:
    """The metric families of ``namespace`` in ``registry``, made once per registry."""
    from prometheus_client import Counter, Histogram

    key = (id(registry), namespace)
    with _families_lock:
        found = _families.get(key)
        if found is not None:
            return found
        kw: dict[str, Any] = {"namespace": namespace, "registry": registry}
        metrics = _Metrics(
            grants=Counter("grants", "Grants begun.", _LABELS, **kw),
            calls=Counter(
                "calls",
                "Calls by how they ended (refused: a begin refused, no grant made).",
                (*_LABELS, "status"),
                **kw,
            ),
            granted=Counter(
                "granted_tokens", "Tokens granted (extensions included).", (*_LABELS, "kind"), **kw
            ),
            consumed=Counter("consumed_tokens", "Tokens used.", (*_LABELS, "kind"), **kw),
            utilization=Histogram(
                "utilization",
                "Per finished call: tokens used / tokens granted.",
                _LABELS,
                buckets=UTILIZATION_BUCKETS,
                **kw,
            ),
            ceiling_hits=Counter(
                "ceiling_hits", "Calls that hit their budget (output or input cut).", _LABELS, **kw
            ),
            extensions=Counter("extensions", "Extensions granted.", _LABELS, **kw),
            released=Counter("released", "Grants settled without usage.", (*_LABELS, "how"), **kw),
            overuse=Counter("overuse_tokens", "Tokens used beyond the grant.", _LABELS, **kw),
            requests=Counter("requests", "Closed requests.", ("pipeline", "status"), **kw),
            dropped=Counter(
                "telemetry_dropped",
                "Telemetry records that never reached a sink, by sink and reason.",
                ("sink", "reason"),
                **kw,
            ),
        )
        from apportion.telemetry.channel import observe_drops

        dropped = metrics.dropped
        observe_drops(lambda sink, reason, n: dropped.labels(sink, reason).inc(n))
        _families[key] = metrics
        return metrics


class PrometheusSink(Sink):
    """Counts usage records into Prometheus metrics (see the module docstring).

    Args:
        registry: the ``CollectorRegistry`` (default: ``prometheus_client.REGISTRY``).
        namespace: the metric name prefix.
        port: serve the registry over HTTP on this port, from the first write on
            (``None``: do not serve; expose the registry yourself).
        addr: the address to serve on.

    Raises:
        MissingExtra: prometheus-client is not installed (extra ``prometheus``).
    """

    name = "prometheus"

    def __init__(
        self,
        registry: Any = None,
        *,
        namespace: str = "apportion",
        port: int | None = None,
        addr: str = "0.0.0.0",
    ) -> None:
        _require_prometheus()
        if type(namespace) is not str or not _METRIC_NAME.fullmatch(namespace):
            raise InvalidArgument(
                "namespace", namespace, "a metric name prefix: [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if port is not None and (type(port) is not int or not 0 <= port <= 65535):
            raise InvalidArgument("port", port, "a TCP port number (0 to 65535) or None")
        if type(addr) is not str or not addr or not addr.isascii():
            raise InvalidArgument("addr", addr, "an address to serve on, such as 0.0.0.0")
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        self.registry = registry
        self.namespace = namespace
        self.port = port
        self.addr = addr
        self._server: Any = None
        self.metrics = _metrics(registry, namespace)

    def write(self, batch: Sequence[RequestUsage]) -> None:
        """Count a batch of records."""
        if self.port is not None and self._server is None:
            from prometheus_client import start_http_server

            self._server = start_http_server(self.port, self.addr, registry=self.registry)
        m = self.metrics
        for record in batch:
            pipeline = record.pipeline
            m.requests.labels(pipeline, record.status).inc()
            for name, begins in record.refused.items():
                agent = record.refused_kinds.get(name, name)
                m.calls.labels(pipeline, agent, REFUSED).inc(begins)
            for call in record.calls:
                agent = call.kind or call.agent  # a kind's members on one series: bounded labels
                m.grants.labels(pipeline, agent).inc()
                m.calls.labels(pipeline, agent, call.status or "unknown").inc()
                if call.granted_context is not None:
                    m.granted.labels(pipeline, agent, "context").inc(call.granted_context)
                if call.granted_output is not None:
                    m.granted.labels(pipeline, agent, "output").inc(call.granted_output)
                if call.extensions:
                    m.extensions.labels(pipeline, agent).inc(call.extensions)
                if call.overuse:
                    m.overuse.labels(pipeline, agent).inc(call.overuse)
                if call.settled != "finish":
                    m.released.labels(pipeline, agent, call.settled).inc()
                    continue
                if call.used_input is not None:
                    m.consumed.labels(pipeline, agent, "input").inc(call.used_input)
                if call.used_output is not None:
                    m.consumed.labels(pipeline, agent, "output").inc(call.used_output)
                granted, used = call.granted, call.used
                if granted and used is not None:
                    m.utilization.labels(pipeline, agent).observe(used / granted)
                if call.ceiling_hit:
                    m.ceiling_hits.labels(pipeline, agent).inc()

    def close(self) -> None:
        """Stop the HTTP server, if the sink started one."""
        server = self._server
        if server is not None and isinstance(server, tuple):
            server[0].shutdown()
        self._server = None
