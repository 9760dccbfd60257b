"""The proxy follows a routing policy: a call goes to the model the grant names.

With a model catalog in the config (``models:``), a routing policy may send an agent's
call to another catalog model than the one the client asked for; the proxy sends it to
the upstream serving that model, with that upstream's key. Both upstreams are local
OpenAI-protocol servers on loopback ports.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import proxy_helpers
import pytest
from proxy_helpers import (
    KEY,
    PIPELINE,
    SIGNING_KEY,
    TENANT_KEYS,
    asgi_client,
    budget_headers,
)

from apportion import MemoryStore
from apportion.catalog import Catalog, ModelInfo
from apportion.errors import SpecError
from apportion.policies.base import Decision, Observation
from apportion.serve import Gateway, create_app
from apportion.serve.config import (
    PipelineConfig,
    ServeConfig,
    TenantConfig,
    UpstreamConfig,
    hash_key,
)
from apportion.serve.proxy import proxy_routes
from apportion.spec import Agent
from apportion.testing.openai_server import OpenAIServer
from policy_helpers import FixedPolicy

CHEAP_KEY = "sk-cheap-upstream-0123456789"
CATALOG = Catalog(
    [
        ModelInfo("openai/gpt-large", 3.0, 15.0, capability={"prose": 1.0}),
        ModelInfo("openai/mini-small", 0.15, 0.6, capability={"prose": 0.9}),
    ],
    litellm=False,
)


class CheckerOnSmall(FixedPolicy):
    """Routes the checker's calls to ``openai/mini-small``; the others keep the caller's."""

    name = "checker-on-small"
    routes = True

    def route(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> Decision:
        ctx, out = self.grant(obs, agent, input_tokens, output_tokens)
        return Decision(ctx, out, "openai/mini-small" if agent.name == "checker" else None)


@pytest.fixture(autouse=True, params=["litellm", "direct"])
def sender(request: Any, monkeypatch: Any) -> str:
    monkeypatch.setitem(proxy_helpers.SENDER, "direct", request.param == "direct")
    return str(request.param)


def _app(main: OpenAIServer, cheap: OpenAIServer, tracer_provider: Any = None) -> Any:
    config = ServeConfig(
        {"team": PipelineConfig("team", PIPELINE, "<tests>", policy=CheckerOnSmall())},  # type: ignore[arg-type]
        tenants={
            name: TenantConfig(name, frozenset({hash_key(key)}))
            for name, key in TENANT_KEYS.items()
        },
        upstreams=(
            UpstreamConfig("main", prefix="openai/gpt-", api_base=main.url, api_key=KEY),
            UpstreamConfig("cheap", prefix="openai/mini-", api_base=cheap.url, api_key=CHEAP_KEY),
        ),
        signing_key=SIGNING_KEY.encode(),
        signing_key_random=False,
        models=CATALOG,
    )
    gateway = Gateway(config, store=MemoryStore())
    app = create_app(gateway, tracer_provider=tracer_provider)
    routes = proxy_routes(gateway, direct=proxy_helpers.SENDER["direct"])
    paths = {route.path for route in routes}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in paths]
    app.router.routes.extend(routes)
    return app


def test_a_routed_call_goes_to_the_upstream_of_the_model_the_grant_names() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with OpenAIServer(default="a short answer") as main, OpenAIServer(default="ok") as cheap:
        app = _app(main, cheap, provider)
        body = {
            "model": "openai/gpt-large",
            "messages": [{"role": "user", "content": "Check this."}],
        }

        async def calls() -> list[Any]:
            async with asgi_client(app) as client:
                answers = []
                for agent in ("planner", "writer", "checker"):
                    headers = budget_headers(
                        "r1", agent, ceiling=20_000 if agent == "planner" else None
                    )
                    answers.append(
                        await client.post("/v1/chat/completions", json=body, headers=headers)
                    )
                return answers

        answers = asyncio.run(calls())
        assert [a.status_code for a in answers] == [200, 200, 200]
        # LiteLLM takes the provider off the name; the OpenAI SDK sends it as named
        sent = [r["model"].removeprefix("openai/") for r in main.requests + cheap.requests]
        assert sent == ["gpt-large", "gpt-large", "mini-small"]
        assert len(cheap.requests) == 1
        assert cheap.authorizations == [f"Bearer {CHEAP_KEY}"]
        assert all(a == f"Bearer {KEY}" for a in main.authorizations)
        assert answers[2].json()["choices"][0]["message"]["content"] == "ok"
    # the span says which model answered when routing chose another one
    spans = [dict(span.attributes or {}) for span in exporter.get_finished_spans()]
    assert [a["gen_ai.request.model"] for a in spans] == ["openai/gpt-large"] * 3
    assert [a.get("gen_ai.response.model") for a in spans] == [None, None, "openai/mini-small"]


def _config(tmp_path: Path, catalog: str, upstreams: str) -> Path:
    (tmp_path / "models.yaml").write_text(catalog, encoding="utf-8")
    path = tmp_path / "serve.yaml"
    path.write_text(f"models: models.yaml\n{upstreams}", encoding="utf-8")
    return path


MODELS = """models:
  - {name: gpt-large, input_price: 3.0, output_price: 15.0, capability: {prose: 1.0}}
  - {name: mini-small, input_price: 0.15, output_price: 0.6}
"""


def test_the_config_reads_the_catalog_and_each_routable_model_needs_an_upstream(
    tmp_path: Path,
) -> None:
    served = "upstreams:\n  main: {prefix: gpt-}\n  cheap: {prefix: mini-}\n"
    config = ServeConfig.from_yaml(_config(tmp_path, MODELS, served))
    assert config.models is not None
    assert [m.name for m in config.models.routable(undeclared=True)] == ["gpt-large", "mini-small"]
    # mini-small has no table, but a policy learning capability may route to it
    missing = "upstreams:\n  main: {prefix: gpt-}\n"
    with pytest.raises(SpecError, match=r"no upstream serves model .mini-small.") as caught:
        ServeConfig.from_yaml(_config(tmp_path, MODELS, missing))
    assert caught.value.fields["key"] == "models"
    with pytest.raises(SpecError, match=r"models\.yaml") as caught:
        ServeConfig.from_yaml(_config(tmp_path, "models: [{price: 1}]\n", served))
    assert caught.value.fields["key"] == "models"
    (tmp_path / "serve.yaml").write_text("models: 3\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"model catalog file"):
        ServeConfig.from_yaml(tmp_path / "serve.yaml")
