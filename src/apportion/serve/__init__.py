"""``apportion serve``: the budget gateway (budget API, OpenAI-compatible proxy, tenants).

Nothing here imports FastAPI until an app is made: :func:`create_app` (needs the ``serve``
extra, ``pip install "apportion[serve]"``). The pieces:

* :mod:`~apportion.serve.config`: :class:`ServeConfig`, read from ``serve.yaml``;
* :mod:`~apportion.serve.gateway`: :class:`Gateway`, tenants, requests by id, idempotency;
* :mod:`~apportion.serve.idempotency`: the records a retried call is answered from;
* :mod:`~apportion.serve.errors_json`: errors as JSON with a stable code;
* :mod:`~apportion.serve.app`: the ASGI application;
* :mod:`~apportion.serve.ops`: JSON logs, Prometheus ``/metrics``, spans, the shutdown drain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apportion.serve.config import ServeConfig
from apportion.serve.gateway import Gateway, Tenant

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Gateway", "ServeConfig", "Tenant", "create_app"]


def create_app(
    config_or_gateway: ServeConfig | Gateway | None = None,
    *,
    tracer_provider: Any = None,
    tracing: bool = True,
) -> FastAPI:
    """The gateway's ASGI app (see :func:`apportion.serve.app.create_app`)."""
    from apportion.serve.app import create_app as make

    return make(config_or_gateway, tracer_provider=tracer_provider, tracing=tracing)
