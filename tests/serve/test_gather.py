"""gather_bounded: every result in order, never more than the limit in flight."""

from __future__ import annotations

import asyncio

import pytest

from apportion.serve.gather import gather_bounded


def test_results_come_in_order_with_at_most_the_limit_in_flight() -> None:
    flying = 0
    most = 0

    async def one(i: int) -> int:
        nonlocal flying, most
        flying += 1
        most = max(most, flying)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        flying -= 1
        return i * i

    results = asyncio.run(gather_bounded((one(i) for i in range(50)), limit=4))
    assert results == [i * i for i in range(50)]
    assert most == 4


def test_an_exception_is_a_result_when_asked_and_raised_otherwise() -> None:
    async def one(i: int) -> int:
        if i == 2:
            raise ValueError(i)
        return i

    mixed = asyncio.run(gather_bounded((one(i) for i in range(4)), return_exceptions=True))
    assert mixed[:2] == [0, 1] and mixed[3] == 3 and isinstance(mixed[2], ValueError)
    with pytest.raises(ValueError):
        asyncio.run(gather_bounded(one(i) for i in range(4)))
