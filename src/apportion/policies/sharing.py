"""Sharing what a policy learned with other workers, through a store, by compare-and-set.

A policy given ``store=`` needs only two of the store's operations, declared here as
:class:`SharedState` so that policies know nothing else of stores (every
:class:`~apportion.stores.base.Store` that keeps policy state has them: memory, Redis).
:func:`compare_and_set` is the merge loop both sharers use: the need models of the
predicting policies (:mod:`apportion.policies.state`) and the learned policy's outcome
statistics (:mod:`apportion.policies.learned_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from apportion.errors import ApportionError

__all__ = ["ATTEMPTS", "SharedState", "compare_and_set"]

T = TypeVar("T")

ATTEMPTS = 64
"""Reads and writes tried before a merge gives up (other workers kept writing first)."""


class SharedState(Protocol):
    """Where workers keep a policy's shared state: versioned documents under keys."""

    def get_state(self, key: str) -> tuple[int, bytes] | None:
        """The state under ``key``: ``(version, data)``, or ``None`` when never written."""
        ...

    def put_state(self, key: str, data: bytes, expected_version: int) -> int | None:
        """Write ``data`` if the version is still ``expected_version`` (0: absent).

        Returns the new version, or ``None`` when another writer got there first (nothing
        is written).
        """
        ...


def compare_and_set(
    store: SharedState, key: str, update: Callable[[bytes | None], tuple[bytes, T]]
) -> T:
    """Read the state under ``key``, write ``update(data)``'s document if nobody wrote since.

    ``update`` gets the stored data (``None`` when there is none) and returns the document
    to write and a result; when another worker wrote in between, the state is read again
    and ``update`` called again, so it must not change anything itself.

    Returns:
        The result of the ``update`` whose document was written.

    Raises:
        ApportionError: :data:`ATTEMPTS` writes in a row lost to other writers (fields
            ``key``, ``attempts``); whatever ``update`` raises, unchanged.
    """
    for _ in range(ATTEMPTS):
        got = store.get_state(key)
        version, data = (0, None) if got is None else got
        document, result = update(data)
        if store.put_state(key, document, version) is not None:
            return result
    raise ApportionError(
        f"could not merge the shared state {key!r}: too much contention",
        key=key,
        attempts=ATTEMPTS,
    )
