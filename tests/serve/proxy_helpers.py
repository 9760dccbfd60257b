"""Helpers of the proxy tests: a one-tenant host over a controller, an ASGI client, scripts.

:class:`OneTenant` is the smallest real host of :class:`apportion.serve.proxy.Proxy`: one
tenant, every caller admitted, requests opened and attached through an
:class:`~apportion.AsyncController` on a real store, so the proxy's own logic is tested
fast over ``httpx.ASGITransport``; the gateway's tests drive the same proxy with tenants
and keys over a real server.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Mapping
from typing import Any

import httpx

from apportion import Agent, AsyncController, MemoryStore, Pipeline, Policy
from apportion.serve.forward import Upstream
from apportion.serve.proxy import Proxy, proxy_routes
from apportion.testing.openai_server import OpenAIServer

MODEL = "gpt-4o-mini"
KEY = "sk-upstream-secret-0123456789"
SIGNING_KEY = "signing-key-for-tests-0123456789"
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


class OneTenant:
    """A proxy host of one tenant (``acme``) over ``controller``."""

    def __init__(self, controller: AsyncController) -> None:
        self.controller = controller

    async def authenticate(self, headers: Mapping[str, str]) -> str:
        return "acme"

    async def open(
        self,
        tenant: Any,
        pipeline: str | None,
        ceiling: int,
        *,
        request_id: str | None,
        ceiling_usd: float | None,
        parent: str | None,
    ) -> Any:
        if parent is not None:
            kid = (await self.controller.aattach(parent)).child(str(request_id), ceiling=ceiling)
            return await kid.open()
        req = self.controller.arequest(ceiling, request_id=request_id, ceiling_usd=ceiling_usd)
        return await req.open()

    async def request(self, tenant: Any, request_id: str) -> Any:
        return await self.controller.aattach(request_id)

    def visible_id(self, tenant: Any, request: Any) -> str:
        return str(request.request_id)

    def tenant_name(self, tenant: Any) -> str:
        return str(tenant)


def proxy_app(
    server: OpenAIServer,
    policy: str | Policy = "elastic",
    *,
    store: MemoryStore | None = None,
    clock: Any = None,
    **options: Any,
) -> tuple[Any, Proxy]:
    """A Starlette app of the proxy over ``server`` (one tenant), and the proxy."""
    from starlette.applications import Starlette

    store = MemoryStore() if store is None else store
    controller = AsyncController(PIPELINE, policy, store)
    upstream = Upstream(api_base=server.url, api_key=KEY)
    options.setdefault("signing_key", SIGNING_KEY)
    if clock is not None:
        options["clock"] = clock
    proxy = Proxy(OneTenant(controller), [upstream], store=store, **options)
    return Starlette(routes=proxy_routes(proxy)), proxy


def asgi_client(app: Any) -> httpx.AsyncClient:
    """An httpx client calling ``app`` in process (no socket)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


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
