"""Sharing learned state through a store: the compare-and-set loop both sharers use."""

from __future__ import annotations

import pytest

from apportion import ApportionError, MemoryStore, StateVersionError
from apportion.policies import LearnedPolicy
from apportion.policies.sharing import ATTEMPTS, SharedState, compare_and_set


class _Busy:
    """A store another worker always writes to first."""

    def __init__(self, data: bytes = b"{}") -> None:
        self.reads = 0
        self.data = data

    def get_state(self, key: str) -> tuple[int, bytes] | None:
        self.reads += 1
        return (self.reads, self.data)

    def put_state(self, key: str, data: bytes, expected_version: int) -> int | None:
        return None


def test_a_merge_reads_again_until_it_wins() -> None:
    store: SharedState = MemoryStore()
    assert compare_and_set(store, "k", lambda data: (b"one", data)) is None
    seen = compare_and_set(store, "k", lambda data: (b"two", data))
    assert seen == b"one" and store.get_state("k") == (2, b"two")


def test_endless_contention_is_an_error_with_fields() -> None:
    busy = _Busy()
    with pytest.raises(ApportionError) as info:
        compare_and_set(busy, "learned", lambda data: (b"x", None))
    assert info.value.fields == {"key": "learned", "attempts": ATTEMPTS}
    assert busy.reads == ATTEMPTS


def test_a_learned_policy_shares_through_any_store_with_state() -> None:
    """The policy needs only ``get_state``/``put_state`` (the protocol), not a Store."""
    empty = LearnedPolicy().state()
    policy = LearnedPolicy(store=_Busy(empty), sync_every=1)
    with pytest.raises(ApportionError, match="contention"):
        policy.sync()
    wrong = LearnedPolicy(store=_Busy(b"{}"), sync_every=1)
    with pytest.raises(StateVersionError) as info:  # the error says where the state was
        wrong.sync()
    assert info.value.path == "store:learned"
