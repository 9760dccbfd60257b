"""The integrations inside a child request: its calls are capped by the child's grant.

Real OpenAI SDK over HTTP to the local server, as in ``test_openai_dropin.py``; the child's
usage rolls up to its parent at close.
"""

from __future__ import annotations

import asyncio
from typing import Any

from integration_helpers import (
    FixedPolicy,
    async_openai_client,
    controller,
    openai_client,
    words,
)

from apportion import AsyncController, current_request
from apportion.testing.openai_server import Reply

QUESTION = [{"role": "user", "content": "Count for me, please."}]
MODEL = "gpt-4o-mini"


def billed(server: Any) -> int:
    return sum(p + c for p, c in server.billed)


def test_openai_and_call_inside_a_child_are_budgeted_in_the_child(server, store):
    client = openai_client(server)
    server.queue(Reply(words(5)))
    server.queue(Reply(words(5)))
    with controller(store, FixedPolicy(output=20)).request(ceiling=5_000) as req:
        with req.child("sub-agent", ceiling=1_000) as kid:
            assert current_request() is kid
            chat = kid.openai(client, agent="reasoner")
            chat.chat.completions.create(model=MODEL, messages=QUESTION)
            kid.call("triage", QUESTION, send=client.chat.completions.create, model=MODEL)
            assert kid.summary().consumed == billed(server)
            assert req.summary().consumed == 0  # not rolled up yet: the child is open
        assert req.summary().consumed == billed(server)
        assert req.summary().children[0].agents["reasoner"].calls == 1
        assert store.get(req.request_id).free == 5_000 - billed(server)


def test_async_fan_out_of_four_researchers_under_one_ceiling(server, store):
    ctl = AsyncController(controller(store).pipeline, policy=FixedPolicy(output=10), store=store)

    async def research(kid: Any) -> None:
        async with kid:
            client = kid.openai(async_openai_client(server), agent="reasoner")
            await client.chat.completions.create(model=MODEL, messages=QUESTION)

    async def main() -> None:
        async with ctl.request(ceiling=2_000) as req:
            kids = await req.fan_out(["r1", "r2", "r3", "r4"])
            assert [k.ceiling for k in kids] == [500] * 4
            await asyncio.gather(*(research(k) for k in kids))
            summary = req.summary()
            assert summary.consumed == billed(server)
            assert len(summary.children) == 4
            assert sum(c.consumed for c in summary.children) == billed(server)

    for _ in range(4):
        server.queue(Reply(words(8)))
    asyncio.run(main())
