"""The hidden response model, formula by formula."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.sim import (
    OUTPUT_KINDS,
    OutputKind,
    agent_quality,
    available_input,
    output_quality,
)
from apportion.sim import request_quality as request_q


def test_output_quality_per_kind() -> None:
    assert output_quality("structured", 100, 100) == 1.0
    assert output_quality("structured", 99, 100) == 0.0
    assert output_quality("prose", 60, 100) == pytest.approx(0.6)
    assert output_quality("prose", 100, 100) == 1.0
    assert output_quality("reasoning", 60, 100) == pytest.approx(0.3)
    assert output_quality("reasoning", 99, 100) == pytest.approx(0.495)
    assert output_quality("reasoning", 100, 100) == 1.0
    for kind in OUTPUT_KINDS:
        assert output_quality(kind, 500, 100) == 1.0  # y is capped at 1
        assert output_quality(kind, 0, 100) == 0.0


def test_agent_quality_input_coverage() -> None:
    assert agent_quality("prose", 50, 200, 10, 10, 1.0) == pytest.approx(0.25)
    assert agent_quality("prose", 50, 200, 10, 10, 0.5) == pytest.approx(0.5)
    assert agent_quality("prose", 400, 200, 10, 10, 2.0) == 1.0  # x is capped at 1
    assert agent_quality("prose", 0, 200, 10, 10, 0.0) == 1.0  # 0 ** 0 = 1
    assert agent_quality("prose", 0, 200, 10, 10, 0.3) == 0.0
    assert agent_quality("reasoning", 50, 200, 5, 10, 1.0) == pytest.approx(0.25 * 0.25)
    assert agent_quality("structured", 200, 200, 9, 10, 1.0) == 0.0
    assert agent_quality("structured", 100, 200, 10, 10, 1.0, capability=0.9) == pytest.approx(0.45)


def test_request_quality() -> None:
    assert request_q([0.5, 0.8], [1.0, 2.0]) == pytest.approx(0.5 * 0.64)
    assert request_q([0.0, 0.8], [0.0, 1.0]) == pytest.approx(0.8)  # influence 0: factor 1
    assert request_q([0.0, 0.8], [0.5, 1.0]) == 0.0
    assert request_q([], []) == 1.0
    with pytest.raises(ValueError):
        request_q([0.5], [1.0, 1.0])


def test_available_input() -> None:
    assert available_input(1000) == 1000
    assert available_input(1000, [0, 0]) == 1000
    assert available_input(1000, [100, 50]) == 850
    assert available_input(100, [300]) == 0  # never negative
    with pytest.raises(ValueError):
        available_input(100, [-1])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        output_quality("poetry", 1, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        output_quality("prose", 1, 0)
    with pytest.raises(ValueError):
        agent_quality("prose", 1, 0, 1, 1, 1.0)


@given(
    kind=st.sampled_from(OUTPUT_KINDS),
    need_in=st.integers(1, 500),
    need_out=st.integers(1, 500),
    ctx=st.integers(0, 600),
    out=st.integers(0, 600),
    beta=st.floats(0, 3),
    more=st.integers(0, 50),
)
def test_quality_is_bounded_and_monotone(
    kind: OutputKind, need_in: int, need_out: int, ctx: int, out: int, beta: float, more: int
) -> None:
    q = agent_quality(kind, ctx, need_in, out, need_out, beta)
    assert 0.0 <= q <= 1.0
    assert agent_quality(kind, ctx + more, need_in, out, need_out, beta) >= q
    assert agent_quality(kind, ctx, need_in, out + more, need_out, beta) >= q
    if ctx >= need_in and out >= need_out:
        assert q == 1.0
