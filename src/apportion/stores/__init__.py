"""Stores: where ledgers live. Chosen by URL (``memory://``) or passed as an object.

The registry maps a URL scheme to the module and class that implement it; a store's module
is imported only when its scheme is used, so optional clients (redis-py) are not needed
until then.
"""

from __future__ import annotations

import importlib

from apportion.errors import UnknownStore
from apportion.ledger_view import LedgerView
from apportion.redaction import redact
from apportion.stores.base import Store
from apportion.stores.fail_open import FailOpenStore
from apportion.stores.memory import MemoryStore

STORES: dict[str, str] = {
    "memory": "apportion.stores.memory:MemoryStore",
    "redis": "apportion.stores.redis:RedisStore",
    "rediss": "apportion.stores.redis:RedisStore",
    "redis+cluster": "apportion.stores.redis:RedisStore",
    "rediss+cluster": "apportion.stores.redis:RedisStore",
    "redis+sentinel": "apportion.stores.redis:RedisStore",
    "rediss+sentinel": "apportion.stores.redis:RedisStore",
}
"""URL scheme -> ``module:Class`` of the store that serves it."""


def open_store(store: str | Store) -> Store:
    """Return ``store`` itself, or a new store for a URL such as ``memory://``.

    Any scheme but ``memory`` is built by its class's ``from_url(url)``
    (``redis://host:6379/0``: :class:`~apportion.stores.redis.RedisStore`, which needs the
    ``redis`` extra).

    Raises:
        UnknownStore: the URL's scheme is not registered.
    """
    if isinstance(store, Store):
        return store
    if not isinstance(store, str) or "://" not in store:
        raise UnknownStore(redact(store) if isinstance(store, str) else store, STORES)
    scheme = store.split("://", 1)[0]
    target = STORES.get(scheme)
    if target is None:
        raise UnknownStore(redact(store), STORES)
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if scheme == "memory":
        return cls()  # type: ignore[no-any-return]
    return cls.from_url(store)  # type: ignore[no-any-return]


__all__ = ["STORES", "FailOpenStore", "LedgerView", "MemoryStore", "Store", "open_store"]
