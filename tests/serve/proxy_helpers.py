"""Helpers of the proxy tests: a gateway of two tenants over the local upstream, clients.

The gateway's app (``create_app``) with the proxy's routes is driven in process through
``httpx.ASGITransport`` (fast), or served by uvicorn on a loopback port for the OpenAI
client; the upstream is :class:`~apportion.testing.openai_server.OpenAIServer`.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from typing import Any

import httpx

from apportion import Agent, MemoryStore, Pipeline, Policy
from apportion.serve import Gateway, Tenant, create_app
from apportion.serve.config import (
    PipelineConfig,
    ServeConfig,
    TenantConfig,
    UpstreamConfig,
    hash_key,
)
from apportion.serve.proxy import proxy_routes
from apportion.testing.openai_server import OpenAIServer

MODEL = "gpt-4o-mini"
KEY = "sk-upstream-secret-0123456789"
SIGNING_KEY = "signing-key-for-tests-0123456789"
SENDER = {"direct": False}
"""Whether the proxy apps made here send with the direct sender (else through LiteLLM)."""
TENANT_KEYS = {"acme": "key-acme-0123456789", "globex": "key-globex-0123456789"}
ACME = Tenant("acme")
PIPELINE = Pipeline(
    [
        Agent("planner", priority="critical"),
        Agent("writer", after=["planner"]),
        Agent("checker", priority="peripheral", after=["writer"]),
    ]
)


def words(count: int, prefix: str = "w") -> str:
    """``count`` distinct words: the local server counts one token per word."""
    return " ".join(f"{prefix}{i}" for i in range(count))


def gateway_for(
    server: OpenAIServer,
    policy: str | Policy = "elastic",
    *,
    store: MemoryStore | None = None,
    clock: Any = None,
    unbudgeted: str = "reject",
    max_body_bytes: int = 10 * 1024 * 1024,
    upstream_model: str | None = None,
    store_url: str = "memory://",
    telemetry: tuple[str, ...] = (),
) -> Gateway:
    """A gateway of tenants ``acme`` and ``globex`` over ``server`` (one pipeline).

    With ``store_url`` (Redis) the gateway opens the store and its idempotency records
    there, as replicas do.
    """
    entry = PipelineConfig("team", PIPELINE, "<tests>", policy=policy)  # type: ignore[arg-type]
    config = ServeConfig(
        {"team": entry},
        store=store_url,
        tenants={
            name: TenantConfig(name, frozenset({hash_key(key)}))
            for name, key in TENANT_KEYS.items()
        },
        upstreams=(
            UpstreamConfig(
                "local", prefix="gpt-", model=upstream_model, api_base=server.url, api_key=KEY
            ),
        ),
        unbudgeted=unbudgeted,  # type: ignore[arg-type]
        max_body_bytes=max_body_bytes,
        signing_key=SIGNING_KEY.encode(),
        signing_key_random=False,
        telemetry=telemetry,
    )
    options: dict[str, Any] = {} if clock is None else {"clock": clock}
    if store_url == "memory://":
        options["store"] = store if store is not None else MemoryStore()
    return Gateway(config, **options)


def proxy_app(
    server: OpenAIServer, policy: str | Policy = "elastic", **options: Any
) -> tuple[Any, Gateway]:
    """The gateway's app with the proxy's routes over ``server``, and the gateway."""
    mine = {k: options.pop(k) for k in ("pass_ttl", "direct") if k in options}
    mine.setdefault("direct", SENDER["direct"])
    if options.get("clock") is not None:
        mine["clock"] = options["clock"]
    gateway = gateway_for(server, policy, **options)
    app = create_app(gateway)
    routes = proxy_routes(gateway, **mine)  # these, with the test's clock, replace any mounted
    paths = {route.path for route in routes}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in paths]
    app.router.routes.extend(routes)
    return app, gateway


def asgi_client(app: Any, tenant: str = "acme") -> httpx.AsyncClient:
    """An httpx client of ``tenant`` calling ``app`` in process (no socket)."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"Authorization": f"Bearer {TENANT_KEYS[tenant]}"},
    )


def budget_headers(
    request_id: str, agent: str, ceiling: int | None = None, **more: str
) -> dict[str, str]:
    """The ``Apportion-*`` headers of a call."""
    headers = {"Apportion-Request": request_id, "Apportion-Agent": agent}
    if ceiling is not None:
        headers["Apportion-Ceiling"] = str(ceiling)
    headers.update({k.replace("_", "-"): v for k, v in more.items()})
    return headers


def billed(server: OpenAIServer) -> int:
    """Tokens the local server billed over all its answers."""
    return sum(p + c for p, c in server.billed)
