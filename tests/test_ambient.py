"""The ambient request and agent: ``with controller.request(...)`` makes the request current.

Sync blocks, asyncio tasks (each sees its own), threads (a new thread does not inherit it;
:func:`apportion.carry` carries it), nesting (the outer one comes back), closing (a closed
request is no longer current), and the ambient agent (``with req.agent(...)``).
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import apportion
from apportion import (
    Agent,
    ApportionError,
    AsyncController,
    Controller,
    NoOpenRequest,
    Pipeline,
    UnbudgetedCall,
    UnknownAgent,
    carry,
    current_agent,
    current_request,
)
from apportion.ambient import name_agent, resolve_agent, resolve_request
from apportion.errors import InvalidArgument


def controller(cls: type[Controller] = Controller) -> Controller:
    pipeline = Pipeline([Agent("triage"), Agent("reasoner", after=["triage"])])
    return cls(pipeline, policy="uniform")


def test_no_request_open_says_how_to_open_one() -> None:
    with pytest.raises(NoOpenRequest) as caught:
        current_request()
    assert isinstance(caught.value, ApportionError)
    assert "with controller.request(" in str(caught.value)
    assert "async with controller.arequest(" in str(caught.value)
    assert current_request(default=None) is None
    assert current_agent() is None


def test_with_block_makes_the_request_current_and_restores_on_exit() -> None:
    ctl = controller()
    with ctl.request(1000) as req:
        assert current_request() is req
    assert current_request(default=None) is None


def test_an_error_in_the_block_still_restores() -> None:
    ctl = controller()
    with pytest.raises(KeyError), ctl.request(1000):
        raise KeyError("boom")
    assert current_request(default=None) is None


def test_nested_requests_restore_the_outer_one() -> None:
    ctl = controller()
    with ctl.request(1000) as outer:
        with ctl.request(500) as inner:
            assert current_request() is inner
        assert current_request() is outer
    assert current_request(default=None) is None


def test_a_request_closed_inside_its_block_is_no_longer_current() -> None:
    ctl = controller()
    with ctl.request(1000) as req:
        req.close()
        with pytest.raises(NoOpenRequest) as caught:
            current_request()
        assert req.request_id in str(caught.value)
        assert current_request(default=None) is None
    # a request opened by hand (no ``with``) is not made current
    manual = ctl.request(1000).open()
    assert current_request(default=None) is None
    manual.close()


def test_async_requests_in_gathered_tasks_each_see_their_own() -> None:
    ctl = controller(AsyncController)
    seen: dict[str, Any] = {}
    both_open = asyncio.Event()
    entered = 0

    async def run(name: str) -> Any:
        nonlocal entered
        async with ctl.request(1000) as req:
            entered += 1
            if entered == 2:
                both_open.set()
            await both_open.wait()  # both requests are open at once here
            seen[name] = current_request()

            async def inner() -> Any:  # a task made inside the block inherits it
                return current_request()

            assert await asyncio.create_task(inner()) is req
            return req

    async def main() -> tuple[Any, Any]:
        first, second = await asyncio.gather(run("a"), run("b"))
        assert current_request(default=None) is None
        return first, second

    first, second = asyncio.run(main())
    assert first is not second
    assert seen == {"a": first, "b": second}


def test_a_new_thread_does_not_inherit_it_and_carry_does() -> None:
    ctl = controller()
    found: list[Any] = []
    with ctl.request(1000) as req, req.agent("reasoner"):
        thread = threading.Thread(target=lambda: found.append(current_request(default=None)))
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1) as pool:
            plain = pool.submit(current_request, default=None).result()
            carried = pool.submit(carry(current_request)).result()
            agent = pool.submit(carry(current_agent)).result()
            mapped = list(pool.map(carry(lambda n: (n, current_request())), [1, 2]))
        thread = threading.Thread(target=carry(lambda: found.append(current_request())))
        thread.start()
        thread.join()
    assert found == [None, req]
    assert plain is None
    assert carried is req
    assert agent == "reasoner"
    assert mapped == [(1, req), (2, req)]


def test_carry_takes_the_context_when_wrapped_not_when_run() -> None:
    ctl = controller()
    with ctl.request(1000) as req:
        wrapped = carry(current_request)
        with ctl.request(500) as inner:
            assert current_request() is inner
            assert wrapped() is req  # the context of the wrapping, not of the run
    with pytest.raises(NoOpenRequest) as caught:
        wrapped()  # its request has closed since: no longer current, even there
    assert caught.value.request_id == req.request_id
    with pytest.raises(apportion.InvalidArgument):
        carry("not a function")  # type: ignore[arg-type]


def test_one_carried_function_runs_in_several_threads_at_once() -> None:
    ctl = controller()
    barrier = threading.Barrier(2, timeout=60)  # a guard against a hang, not a measure

    def work(agent: str) -> tuple[Any, str | None]:
        barrier.wait()  # both runs are inside the carried context at the same time
        with current_request().agent(agent):
            barrier.wait()
            return current_request(), current_agent()

    with ctl.request(1000) as req, ThreadPoolExecutor(2) as pool:
        results = list(pool.map(carry(work), ["triage", "reasoner"]))
    assert results == [(req, "triage"), (req, "reasoner")]


def test_the_ambient_agent() -> None:
    ctl = controller()
    with ctl.request(1000) as req:
        assert current_agent() is None
        with req.agent("triage"):
            assert current_agent() == "triage"
            with req.agent("reasoner"):
                assert current_agent() == "reasoner"
            assert current_agent() == "triage"
        assert current_agent() is None
        with pytest.raises(UnknownAgent):
            req.agent("nobody")
        assert current_agent() is None


def test_the_agent_block_makes_its_request_current_too() -> None:
    ctl = controller()
    with ctl.request(1000) as outer, ctl.request(500) as inner:
        with outer.agent("reasoner"):
            assert current_request() is outer
        assert current_request() is inner


def test_ambient_agent_in_async_tasks() -> None:
    ctl = controller(AsyncController)

    async def run(agent: str) -> tuple[Any, Any]:
        await asyncio.sleep(0)
        return current_agent(), current_request()

    async def main() -> None:
        async with ctl.request(1000) as req:
            with req.agent("triage"):
                first = asyncio.create_task(run("triage"))
            with req.agent("reasoner"):
                second = asyncio.create_task(run("reasoner"))
            assert await first == ("triage", req)
            assert await second == ("reasoner", req)

    asyncio.run(main())


def test_resolve_request_for_adapters() -> None:
    ctl = controller()
    with ctl.request(1000) as req:
        assert resolve_request() is req
        other = ctl.request(10)
        assert resolve_request(other) is other  # one passed explicitly wins
    with pytest.raises(NoOpenRequest):
        resolve_request()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_request(outside="pass", what="chat.completions.create") is None
    assert [w.category for w in caught] == [UnbudgetedCall]
    assert "chat.completions.create" in str(caught[0].message)
    assert "not budgeted" in str(caught[0].message)
    with pytest.raises(apportion.InvalidArgument):
        resolve_request(outside="maybe")


def test_resolve_agent_for_adapters() -> None:
    ctl = controller()
    with pytest.raises(apportion.InvalidArgument, match=r"with req\.agent\(name\)"):
        resolve_agent()
    with ctl.request(1000) as req, req.agent("triage"):
        assert resolve_agent() == "triage"
        assert resolve_agent("reasoner") == "reasoner"  # one passed explicitly wins


def test_name_agent_holds_to_the_end_of_the_task_and_not_beyond() -> None:
    async def turn(name: str) -> str | None:
        name_agent(name)  # as a framework hook does before a model call
        await asyncio.sleep(0)
        return current_agent()

    async def main() -> tuple[list[str | None], str | None]:
        seen = await asyncio.gather(turn("triage"), turn("reasoner"))
        return list(seen), current_agent()

    assert asyncio.run(main()) == (["triage", "reasoner"], None)
    token = name_agent("formatter")
    assert current_agent() == "formatter"
    token.var.reset(token)
    assert current_agent() is None
    with pytest.raises(InvalidArgument):
        name_agent("")
