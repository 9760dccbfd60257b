"""The gateway's policies: named with options, learning through its store (replicas, reloads)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from proxy_helpers import PIPELINE
from proxy_helpers import gateway_for as _gateway_for

from apportion import MemoryStore
from apportion.errors import SpecError
from apportion.policies import ElasticPolicy, RoutedPolicy
from apportion.serve import Gateway
from apportion.serve.config import ServeConfig
from apportion.testing.openai_server import OpenAIServer
from conftest import write_config


def gateway_for(store: MemoryStore, policy: str = "elastic"):  # type: ignore[no-untyped-def]
    with OpenAIServer() as server:  # the upstream is not called here
        return _gateway_for(server, policy, store=store)


async def _requests(gateway, count: int) -> None:  # type: ignore[no-untyped-def]
    controller = gateway.controllers["team"]
    for _ in range(count):
        async with controller.request(20_000) as req:
            for agent in PIPELINE.agents:
                grant = await req.begin(agent.name, 400)
                await req.finish(grant, input_tokens=400, output_tokens=120)


def test_replicas_of_one_store_learn_the_needs_together() -> None:
    store = MemoryStore()
    first = gateway_for(store)
    policy = first.controllers["team"].policy
    assert isinstance(policy, ElasticPolicy) and policy.store is store
    asyncio.run(_requests(first, 40))  # a merge every 32 learned requests
    shared = store.get_state("elastic.needs")
    assert shared is not None
    document = json.loads(shared[1])["pipelines"][PIPELINE.name]  # the pipeline's need model
    assert document["agents"] == list(PIPELINE.names)
    second = gateway_for(store)  # another replica (or this one, reloaded)
    later = second.controllers["team"].policy
    assert later is not policy and later.store is store
    # it starts from what the first learned, not from nothing
    assert json.loads(json.dumps(later.needs(PIPELINE).document())) == document


def test_a_policy_that_learns_nothing_is_given_no_store() -> None:
    gateway = gateway_for(MemoryStore(), "uniform")
    assert gateway.controllers["team"].policy.name == "uniform"
    assert not hasattr(gateway.controllers["team"].policy, "store")


ROUTING = Path(__file__).resolve().parents[2] / "examples" / "workloads" / "routing.yaml"


def test_a_pipeline_names_its_policy_with_options(tmp_path: Path) -> None:
    extra = f"pipelines:\n  support:\n    workload: {ROUTING}\n"
    path = write_config(tmp_path, extra=extra + "    policy: {name: routed, cost_weight: 1.0}\n")
    store = MemoryStore()
    gateway = Gateway(ServeConfig.from_yaml(path), store=store)
    policy = gateway.controllers["support"].policy
    assert isinstance(policy, RoutedPolicy)
    assert policy.cost_weight == 1.0 and policy.store is store
    for bad, said in (
        ("{name: routed, cost_weigth: 1.0}", "routed takes no option 'cost_weigth'"),
        ("{name: routed, cost_weight: -1}", "cost_weight must be a number"),
        ("{name: routed, store: x}", "store is not an option here"),
        ("{cost_weight: 1}", "a policy's name"),
        ("{name: nothing}", "nothing"),
    ):
        write_config(tmp_path, extra=extra + f"    policy: {bad}\n")
        with pytest.raises(SpecError, match=re.escape(said)) as caught:
            ServeConfig.from_yaml(path)
        assert caught.value.fields["key"] == "pipelines.support.policy"
