"""The gateway's predicting policies learn through its store: replicas and reloads share it."""

from __future__ import annotations

import asyncio
import json

from proxy_helpers import PIPELINE
from proxy_helpers import gateway_for as _gateway_for

from apportion import MemoryStore
from apportion.policies import ElasticPolicy
from apportion.testing.openai_server import OpenAIServer


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
