"""Agent kinds on the Redis store (a real server): members are budgeted on their kind's line."""

from __future__ import annotations

from redis_server import RedisServer

from apportion import Agent, AgentKind, Controller, Pipeline
from apportion.stores.redis import RedisStore


def test_members_of_a_kind_on_redis(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    store._client.flushdb()
    pipeline = Pipeline(
        [Agent("lead", "critical")],
        name="team",
        kinds=[AgentKind("expert", "expert:*", after=["lead"])],
    )
    controller = Controller(pipeline, policy="elastic", store=store)
    with controller.request(ceiling=6_000) as req:
        grant = req.begin("lead", input_tokens=500)
        req.finish(grant, input_tokens=500, output_tokens=100)
        for name in ("expert:ada", "expert:bob"):
            grant = req.begin(name, input_tokens=400)
            assert grant.agent == name
            grown = req.extend(grant, 10)
            req.finish(grown or grant, input_tokens=400, output_tokens=50)
        grant = req.begin("expert:cy", input_tokens=400)
        req.release(grant)
        summary = req.summary()
    assert summary.agents["expert"].calls == 3
    assert summary.agents["expert"].consumed == 900
    assert summary.members == dict.fromkeys(("expert:ada", "expert:bob", "expert:cy"), "expert")
    assert summary.consumed + summary.reserved + summary.free == summary.ceiling
    assert {e.agent for e in store.events(req.request_id)} == {None, "lead", "expert"}
