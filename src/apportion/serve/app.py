"""The gateway's ASGI application: :func:`create_app` (FastAPI; mountable in any ASGI app).

Routes (see ``docs/serve.md``): ``/healthz``, ``/readyz``, the budget API under
``/v1/budget/requests``, ``/openapi.json``, a self-contained ``/docs`` page, and the
OpenAI-compatible proxy's ``/v1/chat/completions`` and ``/v1/responses``
(:mod:`apportion.serve.proxy`). The :class:`~apportion.serve.gateway.Gateway` is at
``app.state.gateway``.

Every answer that is not a success is ``{"error": {"code", "message", fields...}}``
(:mod:`apportion.serve.errors_json`): bad JSON, a missing field or a wrong type is a 4xx
naming the field, never a traceback or a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from apportion.serve.deps import require_serve
from apportion.serve.docs_page import docs_html
from apportion.serve.gateway import Gateway

if TYPE_CHECKING:
    from fastapi import FastAPI

    from apportion.serve.config import ServeConfig

__all__ = ["create_app"]


def create_app(
    config_or_gateway: ServeConfig | Gateway | None = None,
    *,
    tracer_provider: Any = None,
    tracing: bool = True,
) -> FastAPI:
    """The gateway's ASGI app for a config (or a gateway already built).

    The app's lifespan starts the TTL reaper and the config file's watcher (a changed file
    is reloaded: :meth:`~apportion.serve.gateway.Gateway.watch_config`) and, at shutdown,
    waits (a bounded time) for the calls still in flight to end, then stops the reaper
    and closes the gateway's connections; mounted in another app (whose lifespan does not
    run a sub-app's), call ``app.state.gateway.start()`` yourself to reap on a timer
    (requests are reaped lazily as new ones open all the same).

    Operations (:mod:`apportion.serve.ops`): every call is logged as a JSON-ready
    ``http_request`` record and answered with ``X-Request-Id``; ``/metrics`` serves the
    Prometheus registry when ``prometheus_client`` is installed (a config without a
    ``prometheus://`` telemetry sink gets one, so the controller's metrics are there; a
    gateway passed in is used as it is); each proxied call is an OpenTelemetry span
    (``tracer_provider``, default the global one) when OpenTelemetry is installed and
    ``tracing`` is on.

    Raises:
        MissingExtra: FastAPI is not installed (``pip install "apportion[serve]"``).
    """
    require_serve()

    from apportion.serve.ops import Observed, Ops, hide_config, prometheus_available
    from apportion.serve.proxy import fast_app

    if isinstance(config_or_gateway, Gateway):
        gateway = config_or_gateway
    else:
        gateway = Gateway(_with_metrics(config_or_gateway, prometheus_available()))
        if prometheus_available():  # a reloaded config keeps the controller's metrics
            gateway.added_telemetry = ("prometheus://",)
    hide_config(gateway.config)
    ops = Ops(tracer_provider=tracer_provider, tracing=tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.start()
        watcher = asyncio.create_task(gateway.watch_config())  # each worker: a changed file
        try:
            yield
        finally:
            watcher.cancel()
            try:
                await ops.drain()  # in-flight calls end (or, cancelled, release their grants)
                await gateway.aclose()
                close = getattr(gateway.store, "close_connections", None)
                if close is not None:
                    close()
            finally:
                ops.mark_dead()

    app = fast_app(
        ops,
        gateway.config.max_body_bytes,
        title="apportion gateway",
        version=_version(),
        description=(
            "Token budgets per agent for multi-agent LLM pipelines, over HTTP. Every "
            "mutating call takes an optional `Idempotency-Key` header: a retry with the "
            "same key gets the first outcome. Errors are "
            '`{"error": {"code": ..., "message": ..., fields...}}`.'
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.ops = ops
    from apportion.serve.routes import BodyLimit, budget_routes, install_errors

    install_errors(app)
    app.add_middleware(BodyLimit, limit=gateway.config.max_body_bytes)
    budget_routes(app, gateway)
    from apportion.serve.listing import listing_routes

    listing_routes(app, gateway)
    from apportion.serve.admin import admin_routes

    admin_routes(app, gateway)
    from apportion.serve.proxy import proxy_routes

    app.router.routes.extend(proxy_routes(gateway))
    from apportion.serve.dashboard.routes import dashboard_routes
    from apportion.serve.proxy_schema import document_proxy

    document_proxy(app)  # the proxy's operations in /openapi.json
    app.router.routes.extend(dashboard_routes(gateway))  # "/" and "/dashboard/..."

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Any:
        from fastapi.responses import HTMLResponse

        return HTMLResponse(docs_html(app.openapi()))

    if ops.metrics is not None:
        from starlette.requests import Request
        from starlette.responses import Response

        from apportion.serve.ops import metrics_body

        async def metrics(request: Request) -> Response:
            """Prometheus metrics (text format), to whom the config's ``metrics`` allows."""
            client = request.client.host if request.client is not None else None
            gateway.authorize_metrics(request.headers, client)
            body, media_type = metrics_body()
            return Response(body, media_type=media_type)

        app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)

    app.add_middleware(Observed, ops=ops)  # outermost: sees every answer, errors included
    return app


def _with_metrics(config: ServeConfig | None, prometheus: bool) -> ServeConfig | None:
    """``config`` with a ``prometheus://`` telemetry sink added when it has none."""
    if not prometheus:
        return config
    import dataclasses

    from apportion.serve.config import ServeConfig
    from apportion.telemetry.urls import scheme_of

    config = config if config is not None else ServeConfig.default()
    if any(scheme_of(url) == "prometheus" for url in config.telemetry):
        return config
    return dataclasses.replace(config, telemetry=(*config.telemetry, "prometheus://"))


def _version() -> str:
    from apportion import __version__

    return __version__


CONFIG_ENV = "APPORTION_SERVE_CONFIG"
"""The variable ``apportion serve`` passes the config file's path in to each worker."""

SIGNING_ENV = "APPORTION_SERVE_SIGNING_KEY"
"""The variable that carries one signing key to every worker when the config sets none."""


def app_from_env() -> FastAPI:
    """The app for the config named by ``APPORTION_SERVE_CONFIG`` (uvicorn's factory).

    ``apportion serve --workers N`` starts each worker with this; an empty or unset
    variable means :meth:`ServeConfig.default`.
    """
    import dataclasses
    import os

    from apportion.serve.config import ServeConfig

    path = os.environ.get(CONFIG_ENV, "")
    config = ServeConfig.from_yaml(path) if path else ServeConfig.default()
    key = os.environ.get(SIGNING_ENV, "")
    if config.signing_key_random and key:
        config = dataclasses.replace(
            config, signing_key=key.encode("utf-8"), signing_key_random=False
        )
    return create_app(config)
