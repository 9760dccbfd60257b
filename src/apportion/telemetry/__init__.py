"""Usage telemetry: every grant, extension, settlement, release, expiry and request close.

Choose where it goes with ``Controller(..., telemetry=...)``: a URL, a sink object, or a
list of them (:func:`open_sinks`):

- ``sqlite:///apportion.db`` (``sqlite://`` alone means ``apportion.db``; a plain
  ``*.db`` path works too): :class:`SQLSink`, extra ``sql``;
- ``postgresql://user:password@host:5432/db``: :class:`SQLSink`, extra ``postgres``;
- ``otel://``: :class:`OTelSink` on the global tracer provider, extra ``otel``;
- ``prometheus://`` (the default registry) or ``prometheus://HOST:PORT`` (and serve it
  there): :class:`PrometheusSink`, extra ``prometheus``.

A sink object is anything with ``write(batch)`` taking a sequence of
:class:`RequestUsage` (and optionally ``close()``); subclass :class:`Sink` to say so. A sink
that also has ``write_rollouts(batch)`` (the SQL sink) receives the decisions of
progressive rollouts as :class:`RolloutRecord` (:func:`emit_rollout`); the others never see
them. A policy gets them through the decision log of the policy contract
(:class:`~apportion.policies.base.DecisionLog`): a controller with telemetry hands its
policy a :class:`DecisionRecorder` over its sinks, and :func:`decision_log` makes one from
a URL for a rollout of its own (``Rollout(..., telemetry=decision_log(URL))``).

When a request closes, the controller calls :func:`emit`, which queues the closed request
for every sink; the sink's worker thread (one per sink, started on first use) turns it
into a :class:`RequestUsage` (one :class:`CallUsage` per grant, plus the ledger's events)
and writes it with others in batches, so the caller's thread does no more than queue it.
``emit`` never blocks on a sink and never raises. A sink that cannot be reached keeps its
records and is tried again; one that refuses records loses only those (see
:mod:`apportion.telemetry.channel`). A record that never reaches its sink (refused, or the
oldest dropped when the sink fell behind by more than its buffer holds) is counted, in
records, by the sink's channel (``controller.sinks``: ``dropped``, split into
``dropped_failed`` and ``dropped_full``), named in a :class:`TelemetryWarning`, said
again at exit, served by the gateway's ``/metrics``
(``apportion_telemetry_dropped_total``) and written to the SQL database, whose report
says it. :func:`flush` waits until everything queued is written (or given up on); it also
runs at interpreter exit.

Nothing here imports SQLAlchemy, OpenTelemetry or prometheus-client until a sink that
needs it is made; a missing one raises :class:`~apportion.errors.MissingExtra` naming the
extra to install.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from apportion.errors import (
    DatabaseUnavailable,
    InvalidArgument,
    SchemaVersionError,
    UnknownSink,
)
from apportion.policies.base import Policy
from apportion.policies.rollout import Rollout, RolloutEvent
from apportion.redaction import redact, scrub
from apportion.telemetry.base import Sink
from apportion.telemetry.channel import Channel, TelemetryWarning, flush_all
from apportion.telemetry.records import (
    SCHEMA_VERSION,
    CallUsage,
    PendingUsage,
    RequestUsage,
    RolloutRecord,
    usage_from,
)
from apportion.telemetry.urls import scheme_of

if TYPE_CHECKING:
    from apportion.telemetry.otel import OTelSink
    from apportion.telemetry.prometheus import PrometheusSink
    from apportion.telemetry.sql import SQLSink

__all__ = [
    "SCHEMA_VERSION",
    "SINKS",
    "CallUsage",
    "DatabaseUnavailable",
    "DecisionRecorder",
    "OTelSink",
    "PrometheusSink",
    "RequestUsage",
    "RolloutRecord",
    "SQLSink",
    "SchemaVersionError",
    "Sink",
    "TelemetryWarning",
    "UnknownSink",
    "decision_log",
    "emit",
    "emit_rollout",
    "flush",
    "open_sinks",
    "usage_from",
]


def _sql(url: str) -> Any:
    from apportion.telemetry.sql import SQLSink

    return SQLSink(url)


def _otel(url: str) -> Any:
    from apportion.telemetry.otel import OTelSink

    rest = url.split("://", 1)[1]
    if rest.strip("/"):
        raise UnknownSink(
            redact(url), SINKS, "otel:// takes no host or path: it uses the global provider"
        )
    return OTelSink()


def _prometheus(url: str) -> Any:
    from apportion.telemetry.prometheus import PrometheusSink

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnknownSink(redact(url), SINKS, scrub(str(exc), url)) from None
    if parts.path.strip("/"):
        raise UnknownSink(redact(url), SINKS, "prometheus:// takes no path")
    try:
        port = parts.port
    except ValueError as exc:
        raise UnknownSink(redact(url), SINKS, scrub(str(exc), url)) from None
    if port is None:
        if parts.hostname:
            raise UnknownSink(redact(url), SINKS, "give a port to serve on: prometheus://HOST:PORT")
        return PrometheusSink()
    return PrometheusSink(port=port, addr=parts.hostname or "0.0.0.0")


SINKS: Final[dict[str, Callable[[str], Any]]] = {
    "sqlite": _sql,
    "postgresql": _sql,
    "postgres": _sql,
    "otel": _otel,
    "prometheus": _prometheus,
}
"""Sink factories by URL scheme (the part before ``+driver``)."""

_LAZY: Final = {
    "SQLSink": "apportion.telemetry.sql",
    "OTelSink": "apportion.telemetry.otel",
    "PrometheusSink": "apportion.telemetry.prometheus",
}

_channels: dict[int, tuple[Any, Channel]] = {}
_channels_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def _channel(sink: Any) -> Channel:
    """The one channel of ``sink`` (shared by every controller that uses the object)."""
    if isinstance(sink, Channel):
        return sink
    with _channels_lock:
        found = _channels.get(id(sink))
        if found is not None and found[0] is sink:
            return found[1]
        channel = Channel(sink)
        _channels[id(sink)] = (sink, channel)
        return channel


def open_sink(target: Any) -> Channel:
    """The channel of one sink given as a URL or an object (see :func:`open_sinks`)."""
    if isinstance(target, str):
        scheme = scheme_of(target)
        factory = SINKS.get(scheme or "")
        if factory is None:
            reason = "" if scheme else "not a URL"
            raise UnknownSink(redact(target), SINKS, reason)
        return _channel(factory(target))
    if isinstance(target, Channel) or callable(getattr(target, "write", None)):
        return _channel(target)
    raise InvalidArgument(
        "telemetry",
        target,
        "telemetry is a URL, a sink object (with a write(batch) method) or a list of them",
    )


def open_sinks(telemetry: Any) -> list[Any]:
    """Open the sinks a controller's ``telemetry=`` names.

    Nothing is connected and no thread is started here: a sink connects on its first
    write, in its worker thread.

    Args:
        telemetry: ``None``; a URL (see the module docstring); a sink object; or a list
            (or tuple) of them.

    Returns:
        One channel per sink, to pass to :func:`emit`.

    Raises:
        UnknownSink: a URL's scheme has no sink.
        MissingExtra: a sink's library is not installed (names the extra).
        TypeError: ``telemetry`` is none of the above.
    """
    if telemetry is None:
        return []
    if isinstance(telemetry, list | tuple):
        return [open_sink(item) for item in telemetry]
    return [open_sink(telemetry)]


def emit(
    sinks: Sequence[Any], obs: Any, events: Sequence[Any], *, parent_local: bool = False
) -> None:
    """Queue a closed request's usage for every sink; never raises, never waits on a sink.

    Args:
        sinks: what :func:`open_sinks` returned (sink objects are accepted too).
        obs: the request's :class:`~apportion.policies.base.Observation`, final state.
        events: the ledger's events of the request.
        parent_local: the request is a child whose parent's record will be sent from
            this process too (see :attr:`RequestUsage.parent_local`).
    """
    if not sinks:
        return
    if not hasattr(obs, "request_id"):
        warnings.warn(
            f"telemetry: {type(obs).__name__} is not a request's observation: not recorded",
            TelemetryWarning,
            stacklevel=2,
        )
        return
    record = PendingUsage(obs, events, _trace_context(), parent_local)  # built by the worker
    for sink in sinks:
        try:
            (sink if type(sink) is Channel else _channel(sink)).submit(record)
        except Exception as exc:
            warnings.warn(
                f"telemetry sink {sink!r} skipped: {exc!r}", TelemetryWarning, stacklevel=2
            )


def emit_rollout(sinks: Sequence[Any], record: RolloutRecord) -> None:
    """Queue a rollout decision for every sink that writes them (``write_rollouts``).

    Sinks without ``write_rollouts`` (OpenTelemetry, Prometheus, most custom sinks) are
    passed over. Never raises, never waits on a sink.
    """
    for sink in sinks:
        try:
            channel = _channel(sink)
            if callable(getattr(channel.sink, "write_rollouts", None)):
                channel.submit(record)
        except Exception as exc:
            warnings.warn(
                f"telemetry sink {sink!r} skipped: {exc!r}", TelemetryWarning, stacklevel=2
            )


class DecisionRecorder:
    """A policy's decision log over telemetry sinks (:class:`~apportion.policies.base.DecisionLog`).

    A rollout's decisions go to the sinks that write rollouts (:func:`emit_rollout`); a
    policy's other decisions have no table yet and are passed over. Never raises, never
    waits on a sink.

    Args:
        sinks: what :func:`open_sinks` returned (sink objects are accepted too).
    """

    def __init__(self, sinks: Sequence[Any]) -> None:
        self.sinks = list(sinks)

    def record(self, policy: Policy, decision: object) -> None:
        """Queue ``decision``, made by ``policy``, for the sinks that keep its kind."""
        if not (isinstance(policy, Rollout) and isinstance(decision, RolloutEvent)):
            return
        try:
            record = RolloutRecord.of(policy, decision)
        except Exception as exc:
            warnings.warn(
                f"telemetry: a decision of rollout {getattr(policy, 'label', '?')!r} not "
                f"recorded: {exc!r}",
                TelemetryWarning,
                stacklevel=2,
            )
            return
        emit_rollout(self.sinks, record)


def decision_log(telemetry: Any) -> DecisionRecorder:
    """A decision log writing to ``telemetry``: a URL, a sink object or a list of them.

    Raises:
        UnknownSink, MissingExtra, TypeError: as :func:`open_sinks`.
    """
    return DecisionRecorder(open_sinks(telemetry))


def flush(timeout: float | None = None) -> bool:
    """Wait until every sink has written what it was given.

    Args:
        timeout: seconds to wait at most (``None``: no limit).

    Returns:
        Whether everything was written (or given up on after a failure) in time.
    """
    return flush_all(timeout)


def _trace_context() -> Any:
    """The current OpenTelemetry span context, if OpenTelemetry is in use and one is set."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        context = trace.get_current_span().get_span_context()
    except Exception:
        return None
    return context if getattr(context, "is_valid", False) else None
