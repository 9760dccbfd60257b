"""The pure ledger, used directly (the store conformance suite covers it through stores)."""

import math

import numpy as np
import pytest

from apportion.errors import BudgetExceeded, InvalidCeiling, InvalidTokenCount, UnknownAgent
from apportion.ledger import MAX_TOKENS, Event, Ledger, check_ceiling, check_tokens

RANKS = {"a": 2, "b": 0}


def test_check_tokens_accepts_integral_types() -> None:
    assert check_tokens("x", 5) == 5
    assert check_tokens("x", np.int64(7)) == 7
    assert type(check_tokens("x", np.int64(7))) is int
    assert check_tokens("x", MAX_TOKENS) == MAX_TOKENS


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "negative"),
        (float("nan"), "NaN"),
        (2.0, "integers"),
        (True, "integers"),
        (MAX_TOKENS + 1, "limit"),
        ("3", "integers"),
        (np.float64(3), "integers"),
    ],
)
def test_check_tokens_refuses(value: object, reason: str) -> None:
    with pytest.raises(InvalidTokenCount, match=reason) as info:
        check_tokens("input_tokens", value)
    assert info.value.field == "input_tokens"


@pytest.mark.parametrize("value", [0, -1, 1.5, math.nan, None])
def test_check_ceiling(value: object) -> None:
    with pytest.raises(InvalidCeiling) as info:
        check_ceiling(value)
    assert info.value.field == "ceiling"


def test_events_record_every_operation() -> None:
    ledger = Ledger("r", RANKS, 100, 1.0, allocation={"a": 60, "b": 40}, reserve={"a": 50})
    grant = ledger.begin("a", 20, 10, 2.0, 5.0)
    grant = ledger.extend(grant, 5, 3.0, 5.0, context_tokens=2)
    ledger.finish(grant, 22, 15, 4.0, truncated=True)
    other = ledger.begin("b", 1, 1, 5.0, 5.0)
    ledger.release(other, 6.0, reason="api error")
    late = ledger.begin("b", 1, 1, 7.0, 1.0)
    ledger.close(9.0, status="closed", outcome=0.5)
    assert ledger.events == [
        Event("open", 1.0, None, 0, 100, 0),
        Event("begin", 2.0, "a", 1, 20, 10, asked=20),
        Event("extend", 3.0, "a", 1, 2, 5),
        Event("finish", 4.0, "a", 1, 22, 15, True, 0),
        Event("begin", 5.0, "b", 2, 1, 1, asked=1),
        Event("release", 6.0, "b", 2, 1, 1, note="api error"),
        Event("begin", 7.0, "b", 3, 1, 1, asked=1),
        Event("expire", 9.0, "b", late.grant_id, 1, 1, note="lease expired"),
        Event("close", 9.0, None, 0, 0, 0, note="closed"),
    ]
    assert ledger.truncated_calls["a"] == 1 and ledger.outcome == 0.5
    assert ledger.to_dict()["agents"]["a"]["consumed"] == 37


def test_open_validates_plan_and_reservations() -> None:
    with pytest.raises(UnknownAgent):
        Ledger("r", RANKS, 100, 0.0, reserve={"zz": 1})
    with pytest.raises(InvalidTokenCount):
        Ledger("r", RANKS, 100, 0.0, allocation={"a": -3})
    with pytest.raises(BudgetExceeded):
        Ledger("r", RANKS, 100, 0.0, reserve={"a": 101})


def test_close_rejects_bad_status_and_outcome() -> None:
    ledger = Ledger("r", RANKS, 100, 0.0)
    with pytest.raises(ValueError, match="status"):
        ledger.close(0.0, status="open")
    with pytest.raises(ValueError, match="outcome"):
        ledger.close(0.0, outcome=math.inf)
    assert ledger.status == "open"


def test_available_for_unknown_agent() -> None:
    with pytest.raises(UnknownAgent):
        Ledger("r", RANKS, 100, 0.0).available_for("zz")


def _fields(ledger: Ledger) -> dict[str, object]:
    """What a store keeps of a ledger: every public attribute but its events."""
    skip = {"events", "_next_lease", "_settled"}
    return {name: getattr(ledger, name) for name in Ledger.__slots__ if name not in skip}


def test_restore_gives_the_same_ledger_from_its_fields() -> None:
    live = Ledger("r", RANKS, 1_000, 0.0, allocation={"a": 600}, reserve={"a": 100})
    early = live.begin("a", 100, 50, 0.0, 5.0, model="m", prices=(2, 3))
    live.begin("b", 10, 10, 1.0, 50.0)
    restored = Ledger.restore(**_fields(live))  # type: ignore[arg-type]
    assert restored.to_dict() == live.to_dict() and restored.events == []
    assert restored.grants == live.grants and restored.grant_cost(early.grant_id) == 350
    assert restored.available_for("b") == live.available_for("b")
    # the next lease end is derived from the grants: a later operation expires the early one
    restored.begin("b", 1, 1, 6.0, 5.0)
    assert restored.settled_by(early.grant_id) == "expire" and restored.reserved == 22
    events = [Event("open", 0.0, None, 0, 1_000, 0, False, 0, "", 0)]
    assert Ledger.restore(**_fields(live), events=events).events == events  # type: ignore[arg-type]
