"""Choosing the call about to run (``choose_call``), and the error samples behind it."""

from __future__ import annotations

import numpy as np
import pytest
import tradeoff_reference as reference
from hypothesis import given
from hypothesis import strategies as st

from apportion import Agent, Pipeline
from apportion.calls import CallRecord
from apportion.policies import tradeoff
from apportion.policies.base import Observation
from apportion.policies.learned import LearnedPolicy
from apportion.policies.needs import _with_censored
from apportion.policies.tradeoff import (
    Call,
    _factors,
    _saturation,
    choose_call,
    divide,
    input_curve,
    output_curve,
    pool_values,
)

RATIOS = np.exp(np.random.default_rng(5).normal(0.0, 0.4, 200))


def call(**changes: object) -> Call:
    base: dict[str, object] = {
        "input_need": 1000.0,
        "input_weight": 0.3,
        "kind": "prose",
        "predicted": 800.0,
        "ratios": RATIOS,
        "output_weight": 1.0,
    }
    base.update(changes)
    return Call(**base)  # type: ignore[arg-type]


def after() -> list:
    later = np.exp(np.random.default_rng(6).normal(0.0, 0.1, 50))
    return [input_curve(1500.0, 0.5), output_curve("prose", 500.0, later, 0.5)]


def expected_outcome(c: Call, ctx: int, cap: int, pool: float) -> float:
    """Monte Carlo: the need drawn from the call's ratios, the rest shared by ``divide``."""
    needs = np.maximum(RATIOS * c.predicted, 1.0)
    own_in = c.input_weight * np.log(ctx / c.input_need)
    own_out = np.log(_factors(c.kind, np.array([float(cap)]), needs, c.output_weight)[0])
    rest = [divide(after(), pool - ctx - min(n, cap))[1] for n in needs]
    return float(np.mean(np.exp(own_in + own_out + np.array(rest))))


def test_a_cap_is_priced_only_as_far_as_it_is_used() -> None:
    pool = 3600.0
    chosen = choose_call(call(), pool, after())
    assert chosen is not None
    ctx, cap = chosen
    mine = [input_curve(1000.0, 0.3), output_curve("prose", 800.0, RATIOS, 1.0)]
    got, _ = divide(mine + after(), pool)
    # divide prices the cap as if spent; the cap actually chosen is larger ...
    assert cap > got[1]
    # ... and worth more in expectation, with the need drawn as the policy believes it
    assert expected_outcome(call(), ctx, cap, pool) > expected_outcome(call(), got[0], got[1], pool)


def test_with_nothing_after_the_cap_covers_every_sampled_need() -> None:
    chosen = choose_call(call(kind="reasoning"), 100_000.0, [])
    assert chosen is not None
    ctx, cap = chosen
    assert ctx == 1000
    assert cap >= RATIOS.max() * 800


def test_a_structured_answer_after_keeps_its_room() -> None:
    fixed = np.ones(20)
    later = [output_curve("structured", 600.0, fixed, 0.1)]
    chosen = choose_call(call(), 2500.0, later)
    assert chosen is not None
    ctx, cap = chosen
    assert ctx + cap <= 2500 - 600


def test_no_cap_fits_a_pool_below_the_least() -> None:
    assert choose_call(call(least=200), 150.0, []) is None


@given(
    pool=st.integers(1, 20_000),
    need=st.integers(1, 8_000),
    predicted=st.integers(1, 5_000),
    kind=st.sampled_from(["structured", "prose", "reasoning"]),
    most=st.none() | st.integers(1, 6_000),
)
def test_a_choice_always_fits(
    pool: int, need: int, predicted: int, kind: str, most: int | None
) -> None:
    c = call(input_need=float(need), predicted=float(predicted), kind=kind, most=most)
    chosen = choose_call(c, float(pool), after())
    if pool < 2:  # one token of input and one of output do not fit
        assert chosen is None
        return
    assert chosen is not None
    ctx, cap = chosen
    assert 1 <= ctx <= need and cap >= 1 and ctx + cap <= pool
    assert most is None or cap <= most


def test_cut_calls_lengthen_the_tail() -> None:
    uncut = np.linspace(0.5, 1.5, 100)
    assert len(_with_censored(uncut[:7], np.empty(0))) == 0
    plain = _with_censored(uncut, np.empty(0))
    np.testing.assert_allclose(plain, np.quantile(uncut, (np.arange(64) + 0.5) / 64), atol=0.01)
    censored = _with_censored(uncut, np.full(30, 1.2))  # 30 calls cut at 1.2x
    assert (censored >= plain - 0.03).all()  # (four quantiles stand for each share)
    assert np.median(censored) > np.median(plain)
    beyond = _with_censored(uncut, np.array([3.0]))  # cut beyond all seen: 1.1 to 2x
    assert beyond.max() > 3.0


def test_the_need_model_learns_the_input_in_hand_not_what_was_read() -> None:
    pipe = Pipeline([Agent("a", priority="critical")])
    obs = Observation("r1", pipe, 4000, {"messages": 3})
    call = CallRecord("a", 1, 1200, 300, 500, 0.0, predicted_output=100.0)
    call.finish(300, 90, False, 1.0)
    obs.calls[1] = call
    assert LearnedPolicy._usage(obs) == [("a", 1200, 90, False)]


def _random_case(rng: np.random.Generator) -> tuple[Call, float, list, float]:
    kinds = ["structured", "prose", "reasoning"]
    after = []
    for _ in range(int(rng.integers(0, 10))):
        if rng.random() < 0.5:
            ratios = rng.lognormal(0, 0.4, int(rng.integers(0, 20))) if rng.random() < 0.5 else None
            after.append(
                input_curve(float(rng.uniform(1, 5000)), float(rng.uniform(0.05, 2)), ratios)
            )
        else:
            readers = [(float(rng.uniform(100, 3000)), float(rng.uniform(0.1, 1)))]
            after.append(
                output_curve(
                    kinds[int(rng.integers(3))],
                    float(rng.uniform(1, 3000)),
                    rng.lognormal(0, 0.4, 32),
                    float(rng.uniform(0.05, 2)),
                    least=int(rng.integers(1, 50)),
                    readers=readers if rng.random() < 0.3 else (),
                )
            )
    c = call(
        input_need=float(rng.integers(0, 8000)),
        input_weight=float(rng.uniform(0.05, 2)),
        kind=kinds[int(rng.integers(3))],
        predicted=float(rng.uniform(1, 4000)),
        ratios=rng.lognormal(0, 0.4, int(rng.integers(8, 64))),
        output_weight=float(rng.uniform(0.05, 2)),
        least=int(rng.integers(1, 100)),
        most=None if rng.random() < 0.6 else int(rng.integers(1, 6000)),
        readers=[(float(rng.uniform(100, 3000)), float(rng.uniform(0.1, 1)))]
        if rng.random() < 0.3
        else (),
    )
    pool = float(rng.integers(0, 30_000))
    return c, pool, after, float(rng.choice([0.0, 1e-6, 1e-4]))


def test_pool_values_are_the_greedy_fill_of_each_pool() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        _, pool, after, gain = _random_case(rng)
        grid = np.linspace(0.0, pool, 49)
        fast = pool_values(after, grid, least_gain=gain)
        slow = reference.pool_values(after, grid, least_gain=gain)
        assert np.allclose(fast, slow, rtol=1e-12, atol=1e-9)


def test_choose_call_chooses_what_the_direct_form_chooses() -> None:
    # the same choice, or one the direct form scores equal to rounding (a tie it broke
    # by the order of its sums)
    rng = np.random.default_rng(12)
    ties = 0
    for _ in range(400):
        c, pool, after, gain = _random_case(rng)
        fast = choose_call(c, pool, after, least_gain=gain)
        slow = reference.choose_call(c, pool, after, least_gain=gain)
        if fast == slow:
            continue
        assert fast is not None and slow is not None
        found = reference.scores(c, pool, after, least_gain=gain)
        assert found is not None
        ctxs, caps, score = found
        got = score[list(ctxs).index(fast[0]), list(caps).index(fast[1])]
        assert got >= score.max() * (1 - 1e-12)
        ties += 1
    assert ties < 40


def test_an_input_curve_follows_the_samples_it_is_given() -> None:
    """What is kept of a samples array is never served for another (a model's new samples)."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        ratios = rng.lognormal(0, 0.5, int(rng.integers(1, 64)))
        need, weight = float(rng.uniform(1, 5000)), float(rng.uniform(0.05, 2))
        top = max(float(ratios.max()), 1.0)
        beyond = np.array([1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5])
        listed = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
        fractions = np.unique([*listed, *beyond[top > beyond], top])
        share = np.minimum(fractions[:, None] / ratios[None, :], 1.0) ** weight
        with np.errstate(divide="ignore"):
            expected = np.maximum(np.log(share.mean(axis=1)), -12.0)
        expected[0] = -12.0
        for _ in range(2):  # made, then kept
            curve = input_curve(need, weight, ratios)
            np.testing.assert_allclose(curve.levels, fractions * need)
            np.testing.assert_allclose(curve.values, expected)


def test_with_room_for_everyone_after_the_call_decides_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool that leaves the agents after it all they take: only the call's own outcome."""

    def not_needed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the agents after the call were valued")

    monkeypatch.setattr(tradeoff, "pool_values", not_needed)
    rng = np.random.default_rng(13)
    checked = 0
    for _ in range(200):
        c, _, after, gain = _random_case(rng)
        pool = 4 * (c.input_need + 4 * c.predicted) + _saturation(after, gain) + 10_000
        fast = choose_call(c, pool, after, least_gain=gain)
        found = reference.scores(c, pool, after, least_gain=gain)
        if fast is None:  # no cap of at least the least fits (its most is below it)
            assert reference.choose_call(c, pool, after, least_gain=gain) is None
            continue
        assert found is not None
        ctxs, caps, score = found
        got = score[list(ctxs).index(fast[0]), list(caps).index(fast[1])]
        assert got >= score.max() * (1 - 1e-12)
        checked += 1
    assert checked > 150
