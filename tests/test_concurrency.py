"""Many threads and asyncio tasks working the same requests at once, under every policy.

Each worker loops begin -> (extend) -> finish, with usage below or above its grant, and now
and then a release, an abandoned grant (released at close) or a refusal (BudgetExceeded,
which is fine). Checked, for every request:

* the hard cap, during the run (after every operation) and at the end;
* conservation at the end, and an independent replay of the event list reproducing the
  ledger's consumed / overflow / reserved, with the cap and conservation at every step;
* the sum of consumed equals the finish events' charged usage, and every worker's own
  count of begins, finishes, releases, extends and reported usage matches the events.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from apportion import Agent, BudgetExceeded, Controller, Grant, Pipeline
from apportion.ledger import Event

POLICIES = ["uniform", "estimate", "elastic", "iterative"]
WORKERS = 64
ITERATIONS = 30
NOW = 1_000.0
CEILING = 1_000_000  # enough for most of the work, not all: the cap is reached


def pipeline() -> Pipeline:
    return Pipeline(
        [
            Agent("plan", priority="critical", output_kind="reasoning"),
            Agent("search", priority="standard", after=["plan"]),
            Agent("critic", priority="peripheral", after=["plan"], output_kind="structured"),
            Agent("write", priority="critical", after=["search", "critic"], min_output=20),
        ]
    )


NAMES = pipeline().names


@dataclass
class Tally:
    """What the workers of one request did, by their own count."""

    begins: int = 0
    finishes: int = 0
    releases: int = 0
    abandoned: int = 0
    extends: int = 0
    refused: int = 0
    used: int = 0
    overuse_finishes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class Plan:
    """One worker's random choices for one iteration (seeded: the same every run)."""

    def __init__(self, rng: random.Random) -> None:
        self.agent = rng.choice(NAMES)
        self.input_tokens = rng.randint(0, 900)
        self.output_tokens = None if rng.random() < 0.05 else rng.randint(1, 600)
        roll = rng.random()
        self.action = "release" if roll < 0.1 else "abandon" if roll < 0.13 else "finish"
        self.extend = rng.randint(50, 400) if rng.random() < 0.2 else 0
        self.over = rng.random() < 0.25  # use more than granted
        self.fraction = rng.random()
        self.over_by = rng.randint(1, 800)

    def usage(self, grant: Grant) -> tuple[int, int]:
        """Reported usage: the whole context, and output below the grant or above it."""
        if self.over and grant.output_tokens <= 600:
            return grant.context_tokens, grant.output_tokens + self.over_by
        # an uncapped call (output_tokens=None) writes what it needs, not its whole grant
        return grant.context_tokens, int(min(grant.output_tokens, 600) * self.fraction)


def check_cap(controller: Controller, request_id: str, errors: list[str]) -> None:
    state = controller.store.get(request_id)
    consumed = state.consumed
    if consumed > state.ceiling:
        errors.append(f"{request_id}: consumed {consumed} > ceiling {state.ceiling}")


def sync_worker(
    controller: Controller,
    req: Any,
    tally: Tally,
    seed: int,
    barrier: threading.Barrier,
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    try:
        barrier.wait(timeout=30)
        for _ in range(ITERATIONS):
            plan = Plan(rng)
            try:
                grant = req.begin(plan.agent, plan.input_tokens, plan.output_tokens)
            except BudgetExceeded as exc:
                assert exc.agent == plan.agent
                tally.add(refused=1)
                continue
            tally.add(begins=1)
            check_cap(controller, req.request_id, errors)
            time.sleep(0)  # let other threads run while the grant is open
            if plan.extend:
                grown = req.extend(grant, plan.extend)
                if grown is not None:
                    assert grown.grant_id == grant.grant_id
                    # the policy may grant part of what was asked, never more
                    assert grant.output_tokens < grown.output_tokens
                    assert grown.output_tokens <= grant.output_tokens + plan.extend
                    assert grown.context_tokens == grant.context_tokens
                    grant = grown
                    tally.add(extends=1)
            if plan.action == "release":
                req.release(grant)
                tally.add(releases=1)
            elif plan.action == "abandon":
                tally.add(abandoned=1)  # left open: released when the request closes
            else:
                used_in, used_out = plan.usage(grant)
                req.finish(grant, input_tokens=used_in, output_tokens=used_out, truncated=plan.over)
                tally.add(
                    finishes=1,
                    used=used_in + used_out,
                    overuse_finishes=int(used_in + used_out > grant.total),
                )
            check_cap(controller, req.request_id, errors)
    except BaseException as exc:
        errors.append(f"worker {seed}: {exc!r}")


async def async_worker(
    controller: Controller, req: Any, tally: Tally, seed: int, errors: list[str]
) -> None:
    rng = random.Random(seed)
    try:
        for _ in range(ITERATIONS):
            plan = Plan(rng)
            try:
                grant = await req.begin(plan.agent, plan.input_tokens, plan.output_tokens)
            except BudgetExceeded as exc:
                assert exc.agent == plan.agent
                tally.add(refused=1)
                await asyncio.sleep(0)
                continue
            tally.add(begins=1)
            check_cap(controller, req.request_id, errors)
            await asyncio.sleep(0)  # other tasks run while the grant is open
            if plan.extend:
                grown = await req.extend(grant, plan.extend)
                if grown is not None:
                    assert grown.grant_id == grant.grant_id
                    assert grant.output_tokens < grown.output_tokens
                    assert grown.output_tokens <= grant.output_tokens + plan.extend
                    grant = grown
                    tally.add(extends=1)
                await asyncio.sleep(0)
            if plan.action == "release":
                await req.release(grant)
                tally.add(releases=1)
            elif plan.action == "abandon":
                tally.add(abandoned=1)
            else:
                used_in, used_out = plan.usage(grant)
                await req.finish(
                    grant, input_tokens=used_in, output_tokens=used_out, truncated=plan.over
                )
                tally.add(
                    finishes=1,
                    used=used_in + used_out,
                    overuse_finishes=int(used_in + used_out > grant.total),
                )
            check_cap(controller, req.request_id, errors)
    except BaseException as exc:
        errors.append(f"task {seed}: {exc!r}")


def replay(events: list[Event], ceiling: int) -> dict[str, int]:
    """Recompute the ledger from its events alone, checking the invariants at every step."""
    assert events[0].kind == "open" and events[0].context_tokens == ceiling
    open_grants: dict[int, int] = {}
    reserved = consumed = overflow = most_open = 0
    for event in events[1:]:
        if event.kind in ("begin", "extend"):
            total = event.context_tokens + event.output_tokens
            if event.kind == "begin":
                assert event.grant_id not in open_grants
                open_grants[event.grant_id] = 0
            open_grants[event.grant_id] += total
            reserved += total
            most_open = max(most_open, len(open_grants))
        elif event.kind == "finish":
            granted = open_grants.pop(event.grant_id)
            reserved -= granted
            used = event.context_tokens + event.output_tokens
            assert event.overuse == max(0, used - granted)
            charge = min(used, ceiling - reserved - consumed)
            overflow += used - charge
            consumed += charge
        elif event.kind in ("release", "expire"):
            total = event.context_tokens + event.output_tokens
            assert open_grants.pop(event.grant_id) == total
            reserved -= total
        elif event.kind == "close":
            assert event is events[-1]
        else:  # pragma: no cover
            raise AssertionError(f"unexpected event {event}")
        assert reserved >= 0 and 0 <= consumed <= ceiling, event
        assert ceiling - reserved - consumed >= 0, event  # free never negative
    return {
        "consumed": consumed,
        "overflow": overflow,
        "reserved": reserved,
        "open": len(open_grants),
        "most_open": most_open,
    }


def check_request(controller: Controller, request_id: str, tally: Tally) -> None:
    state = controller.store.get(request_id)
    events = controller.store.events(request_id)
    ceiling = state.ceiling
    assert state.status == "closed"
    assert 0 <= state.consumed <= ceiling
    assert state.free >= 0 and state.reserved == 0 and state.grants == {}
    assert state.free + state.reserved + state.consumed == ceiling
    assert state.consumed == sum(state.consumed_by.values())
    assert all(v == 0 for v in state.reserved_by.values())

    again = replay(events, ceiling)
    most_open = again.pop("most_open")
    assert again == {
        "consumed": state.consumed,
        "overflow": state.overflow,
        "reserved": 0,
        "open": 0,
    }
    assert most_open >= 2  # the workers really overlapped

    finishes = [e for e in events if e.kind == "finish"]
    reported = sum(e.context_tokens + e.output_tokens for e in finishes)
    assert reported == tally.used
    assert state.consumed + state.overflow == reported  # consumed == charged usage
    assert sum(e.overuse for e in finishes) == sum(state.overuse_by.values())
    assert sum(1 for e in finishes if e.overuse) == tally.overuse_finishes

    kinds = Counter(e.kind for e in events)
    assert kinds["begin"] == tally.begins == sum(state.calls.values())
    assert kinds["finish"] == tally.finishes
    assert kinds["extend"] == tally.extends
    assert kinds["expire"] == 0
    released = Counter(e.note for e in events if e.kind == "release")
    assert released["release"] == tally.releases
    assert released["closed"] == tally.abandoned
    assert tally.begins == tally.finishes + tally.releases + tally.abandoned
    assert tally.begins > 0 and tally.finishes > 0


def make_controller(policy: str) -> Controller:
    return Controller(pipeline(), policy=policy, clock=lambda: NOW)


@pytest.mark.parametrize("policy", POLICIES)
def test_threads_share_one_request(policy: str) -> None:
    controller = make_controller(policy)
    tally = Tally()
    errors: list[str] = []
    barrier = threading.Barrier(WORKERS)
    ceiling = CEILING
    with controller.request(ceiling, features={"messages": 12}) as req:
        threads = [
            threading.Thread(target=sync_worker, args=(controller, req, tally, i, barrier, errors))
            for i in range(WORKERS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    check_request(controller, req.request_id, tally)
    assert tally.refused > 0  # the ceiling was reached: the cap was exercised


@pytest.mark.parametrize("policy", POLICIES)
def test_tasks_share_one_request(policy: str) -> None:
    controller = make_controller(policy)
    tally = Tally()
    errors: list[str] = []

    async def main() -> str:
        async with controller.arequest(CEILING, features={"messages": 12}) as req:
            await asyncio.gather(
                *(async_worker(controller, req, tally, i, errors) for i in range(WORKERS))
            )
        return req.request_id

    request_id = asyncio.run(main())
    assert errors == []
    check_request(controller, request_id, tally)
    assert tally.refused > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_threads_and_tasks_on_several_requests_at_once(policy: str) -> None:
    """8 sync requests shared by 64 threads, 8 async ones by 64 tasks, all at once."""
    controller = make_controller(policy)
    n_requests = 8
    errors: list[str] = []
    barrier = threading.Barrier(WORKERS + 1)  # the threads and the event loop's thread
    ceilings = [40_000 * (k + 1) for k in range(n_requests)]  # the small run dry

    sync_reqs = [
        controller.request(c, features={"messages": k}).open() for k, c in enumerate(ceilings)
    ]
    sync_tallies = [Tally() for _ in sync_reqs]
    async_ids: list[str] = []
    async_tallies = [Tally() for _ in range(n_requests)]

    async def tasks() -> None:
        reqs = [await controller.arequest(c).open() for c in ceilings]
        async_ids.extend(r.request_id for r in reqs)
        barrier.wait(timeout=30)
        await asyncio.gather(
            *(
                async_worker(
                    controller,
                    reqs[i % n_requests],
                    async_tallies[i % n_requests],
                    1000 + i,
                    errors,
                )
                for i in range(WORKERS)
            )
        )
        for r in reqs:
            await r.close()

    def loop_thread() -> None:
        try:
            asyncio.run(tasks())
        except BaseException as exc:
            errors.append(f"event loop: {exc!r}")

    threads = [
        threading.Thread(
            target=sync_worker,
            args=(
                controller,
                sync_reqs[i % n_requests],
                sync_tallies[i % n_requests],
                i,
                barrier,
                errors,
            ),
        )
        for i in range(WORKERS)
    ]
    threads.append(threading.Thread(target=loop_thread))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for r in sync_reqs:
        r.close()
    assert errors == []
    for r, tally in zip(sync_reqs, sync_tallies, strict=True):
        check_request(controller, r.request_id, tally)
    for rid, tally in zip(async_ids, async_tallies, strict=True):
        check_request(controller, rid, tally)
    # the small requests ran dry: the cap was exercised
    assert sync_tallies[0].refused > 0 and async_tallies[0].refused > 0


def _race_once(controller: Controller, names: tuple[str, ...]) -> list[BaseException]:
    failures: list[BaseException] = []
    with controller.request(1_000_000) as req:
        barrier = threading.Barrier(len(names))

        def go(agent: str) -> None:
            barrier.wait(timeout=30)
            try:
                req.begin(agent, 10, 10)
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=go, args=(name,)) for name in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        if not failures:
            assert sum(controller.store.get(req.request_id).calls.values()) == len(names)
    return failures


def test_first_begins_race_with_the_reservations() -> None:
    """The first calls of many reserved (critical) agents and some others begin at once."""
    agents = [Agent(f"critical{i}", priority="critical") for i in range(12)]
    agents += [Agent(f"peripheral{i}", priority="peripheral") for i in range(4)]
    controller = Controller(Pipeline(agents), policy="elastic", clock=lambda: NOW)
    names = controller.pipeline.names
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(150):
            failures = _race_once(controller, names)
            if failures:
                raise failures[0]
    finally:
        sys.setswitchinterval(switch)
