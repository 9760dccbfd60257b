"""Budget tokens (``apportion.serve.passes``): signed, narrow-only, single use, expiring."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion import InvalidArgument
from apportion.serve.idempotency import MemoryRecords
from apportion.serve.passes import (
    CLAIM_SKEW,
    BudgetTokenExpired,
    BudgetTokenInvalid,
    BudgetTokenReplayed,
    BudgetTokenWidened,
    claim_nonce,
    issue,
    narrowed,
    verify,
)

KEY = "k" * 32
NOW = 1_800_000_000.0


def token(**overrides: object) -> str:
    args: dict[str, object] = {
        "request_id": "run-1",
        "tenant": "acme",
        "tokens": 500,
        "usd": 0.25,
        "now": NOW,
        "ttl": 60.0,
    }
    args.update(overrides)
    return issue(KEY, **args)  # type: ignore[arg-type]


def repacked(text: str, **changes: object) -> str:
    """The token with its payload changed and its signature kept (a forgery)."""
    version, payload, signature = text.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(changes)
    raw = json.dumps(body, separators=(",", ":")).encode()
    forged = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{version}.{forged}.{signature}"


def test_a_token_carries_what_it_was_issued_with():
    budget = verify(KEY, token(), now=NOW + 59.9, tenant="acme")
    assert (budget.request_id, budget.tenant, budget.tokens, budget.usd) == (
        "run-1",
        "acme",
        500,
        0.25,
    )
    assert budget.expires_at == NOW + 60
    assert budget.child_name == f"pass-{budget.nonce}"
    assert verify(KEY, token(), now=NOW).nonce != budget.nonce  # a fresh nonce each time


@pytest.mark.parametrize(
    "changes",
    [{"tok": 5_000}, {"exp": NOW + 10**6}, {"ten": "other"}, {"req": "run-2"}, {"non": "ab"}],
)
def test_a_changed_payload_is_refused(changes):
    with pytest.raises(BudgetTokenInvalid) as caught:
        verify(KEY, repacked(token(), **changes), now=NOW, tenant="acme")
    assert type(caught.value) is BudgetTokenInvalid
    assert caught.value.code == "budget_token_invalid"
    assert caught.value.header == "Apportion-Budget-Token"


def test_a_changed_signature_or_another_key_is_refused():
    text = token()
    version, payload, signature = text.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for bad in (f"{version}.{payload}.{flipped}", issue("z" * 32, **_args())):
        with pytest.raises(BudgetTokenInvalid, match="signature"):
            verify(KEY, bad, now=NOW)


def _args() -> dict[str, object]:
    return {"request_id": "run-1", "tenant": "acme", "tokens": 5, "usd": None, "now": NOW}


def test_another_tenants_token_is_refused():
    with pytest.raises(BudgetTokenInvalid, match="another tenant"):
        verify(KEY, token(), now=NOW, tenant="globex")


def test_a_token_past_its_expiry_is_refused():
    with pytest.raises(BudgetTokenExpired) as caught:
        verify(KEY, token(), now=NOW + 60, tenant="acme")
    assert caught.value.code == "budget_token_expired"
    assert (caught.value.expires_at, caught.value.now) == (NOW + 60, NOW + 60)


@given(st.text(max_size=300) | st.binary(max_size=50) | st.none() | st.integers())
def test_anything_else_is_refused_cleanly(value):
    with pytest.raises(BudgetTokenInvalid) as caught:
        verify(KEY, value, now=NOW)
    assert KEY not in str(caught.value)


def test_a_token_narrows_never_widens():
    budget = verify(KEY, token(tokens=500), now=NOW)
    assert narrowed(budget, None) == 500
    assert narrowed(budget, 120) == 120
    with pytest.raises(BudgetTokenWidened) as caught:
        narrowed(budget, 501)
    assert (caught.value.requested, caught.value.available) == (501, 500)
    with pytest.raises(BudgetTokenInvalid, match="no tokens"):
        narrowed(verify(KEY, token(tokens=0), now=NOW), None)


def test_a_nonce_is_claimed_once_and_remembered_past_the_tokens_expiry():
    clock = [0.0]
    records = MemoryRecords(clock=lambda: clock[0])
    budget = verify(KEY, token(ttl=60.0), now=NOW)
    asyncio.run(claim_nonce(records, budget, "run-1::pass-x", NOW))
    for _ in range(2):
        with pytest.raises(BudgetTokenReplayed) as caught:
            asyncio.run(claim_nonce(records, budget, "run-1::pass-y", NOW + 1))
        assert caught.value.code == "budget_token_replayed"
        clock[0] += 60 + CLAIM_SKEW - 1  # still remembered until expiry and the skew
    other = verify(KEY, token(), now=NOW)
    asyncio.run(claim_nonce(records, other, "run-1::pass-z", NOW))  # another nonce: fine


@pytest.mark.parametrize("key", ["short", b"", None, 42])
def test_a_weak_or_missing_key_is_refused_without_quoting_it(key):
    with pytest.raises(InvalidArgument) as caught:
        issue(key, **_args())  # type: ignore[arg-type]
    assert caught.value.argument == "signing_key"
    assert "short" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"), [("tokens", -1), ("tokens", 1.5), ("usd", float("nan")), ("ttl", 0)]
)
def test_bad_issue_arguments_are_refused(name, value):
    with pytest.raises(InvalidArgument) as caught:
        issue(KEY, **{**_args(), name: value})  # type: ignore[arg-type]
    assert caught.value.argument == name
