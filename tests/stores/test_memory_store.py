"""The memory store passes the store conformance suite."""

from apportion.stores import MemoryStore, Store
from apportion.testing.store_conformance import StoreConformance


class TestMemoryStore(StoreConformance):
    def make_store(self) -> Store:
        return MemoryStore()


def test_keeps_a_bounded_number_of_closed_requests() -> None:
    store = MemoryStore(keep_closed=2)
    ranks = {"a": 1}
    for i in range(4):
        store.open(f"r{i}", ranks, 10, 0.0)
        store.close(f"r{i}", 0.0)
    assert store.get("r3").status == "closed"
    assert store.get("r2").status == "closed"
    import pytest

    from apportion.errors import UnknownRequest

    with pytest.raises(UnknownRequest):
        store.get("r0")
