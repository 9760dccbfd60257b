"""Idempotency records, memory and Redis: claim, complete, replay, mismatch, expiry."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis_server import RedisServer

from apportion.errors import StoreUnavailable
from apportion.serve.idempotency import (
    IdempotencyRecords,
    MemoryRecords,
    Outcome,
    RedisRecords,
    open_records,
)


@pytest.fixture(params=["memory", "redis"])
def records(request: pytest.FixtureRequest) -> IdempotencyRecords:
    if request.param == "memory":
        return MemoryRecords()
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisRecords(f"{server.url}?prefix=i{uuid.uuid4().hex[:8]}&buckets=4")


def test_a_key_runs_once_and_replays_its_outcome(records: IdempotencyRecords) -> None:
    async def main() -> None:
        first = await records.claim("k", "fp", "finish", 60)
        assert first.state == "new"
        running = await records.claim("k", "fp", "finish", 60)
        assert (running.state, running.operation) == ("running", "finish")
        outcome = Outcome(409, b'{"error": {"code": "grant_settled"}}')
        await records.complete("k", "fp", "finish", outcome, 60)
        done = await records.claim("k", "fp", "finish", 60)
        assert (done.state, done.outcome) == ("done", outcome)
        other = await records.claim("k", "another body", "finish", 60)
        assert (other.state, other.operation) == ("mismatch", "finish")
        assert (await records.claim("k2", "fp", "begin", 60)).state == "new"
        await records.forget("k2")
        assert (await records.claim("k2", "fp", "begin", 60)).state == "new"
        await records.put_value("score:r", "0.5", 60)
        assert await records.get_value("score:r") == "0.5"
        assert await records.get_value("score:none") is None
        await records.aclose()

    asyncio.run(main())


def test_memory_records_expire_with_their_ttl() -> None:
    now = [0.0]
    records = MemoryRecords(clock=lambda: now[0])

    async def main() -> None:
        assert (await records.claim("k", "fp", "open", 10)).state == "new"
        await records.complete("k", "fp", "open", Outcome(201, b"{}"), 10)
        await records.put_value("v", "1", 10)
        now[0] = 9.9
        assert (await records.claim("k", "fp", "open", 10)).state == "done"
        now[0] = 10.0
        assert (await records.claim("k", "fp", "open", 10)).state == "new"
        assert await records.get_value("v") is None

    asyncio.run(main())


def test_an_unreachable_redis_is_store_unavailable_without_its_password() -> None:
    records = open_records("redis://:s3cret-pw@127.0.0.1:1/0")
    assert isinstance(records, RedisRecords)

    async def main() -> None:
        await records.claim("k", "fp", "open", 10)

    with pytest.raises(StoreUnavailable) as caught:
        asyncio.run(main())
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(caught.value.fields)


def test_a_lost_claim_is_dropped_only_while_it_is_still_running(
    records: IdempotencyRecords,
) -> None:
    async def main() -> None:
        assert (await records.claim("k", "fp", "begin", 60)).state == "new"
        await records.forget_claim("k", "fp", "begin")  # still running: dropped
        assert (await records.claim("k", "fp", "begin", 60)).state == "new"
        await records.complete("k", "fp", "begin", Outcome(200, b"{}"), 60)
        await records.forget_claim("k", "fp", "begin")  # completed meanwhile: kept
        done = await records.claim("k", "fp", "begin", 60)
        assert done.state == "done" and done.outcome == Outcome(200, b"{}")
        assert (await records.claim("j", "other", "finish", 60)).state == "new"
        await records.forget_claim("j", "fp", "begin")  # another call's claim: kept
        assert (await records.claim("j", "other", "finish", 60)).state == "running"
        await records.aclose()

    asyncio.run(main())
