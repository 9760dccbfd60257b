"""The Redis store's key layout: where each request's, pool's and feed's data lives.

A request's keys share its bucket's hash tag ``{bN}`` (a tree's requests, their root's),
a pool's keys the tag ``{p:NAME}``; see :mod:`apportion.stores.redis` for each key.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from apportion.errors import UnknownRequest
from apportion.ledger import CHILD_SEP
from apportion.limits import is_text


class RedisKeys:
    """The keys of a store's requests and pools, under its ``prefix`` and ``buckets``."""

    prefix: str
    """The first part of every key."""
    buckets: int
    """How many hash-tag buckets requests are spread over."""
    topology: str
    """``standalone`` (one server) or ``cluster`` (Redis Cluster: a feed per bucket)."""

    def _keys(self, request_id: str) -> tuple[str, str, str]:
        """The request's ledger, events and bucket index keys.

        Raises:
            UnknownRequest: ``request_id`` is no name a request can have.
        """
        if type(request_id) is not str or not is_text(request_id):
            raise UnknownRequest(request_id)
        root = request_id.split(CHILD_SEP, 1)[0]  # a tree's requests share its root's slot
        bucket = zlib.crc32(root.encode("utf-8", "surrogatepass")) % self.buckets
        base = f"{self.prefix}:{{b{bucket}}}:"
        return f"{base}r:{request_id}", f"{base}e:{request_id}", f"{base}open"

    def _ops_key(self, request_id: str) -> str:
        """The request's operation record (in its bucket: the same hash slot)."""
        return self._keys(request_id)[2][:-4] + "o:" + request_id

    def _own_keys(self, request_id: str) -> tuple[str, str, str, str]:
        """The request's ledger, events, index and operation record (a script's KEYS[1..4])."""
        return (*self._keys(request_id), self._ops_key(request_id))

    def _request_keys(self, request_id: str) -> tuple[str, str, str, str, str]:
        """The keys of a script on one request: its own four (:meth:`_own_keys`), the feed."""
        return (*self._own_keys(request_id), self._feed_of(request_id))

    @property
    def _feed_key(self) -> str:
        """The event feed's stream on a standalone server (one per prefix)."""
        return f"{self.prefix}:feed"

    def _feed_of(self, request_id: str) -> str:
        """The stream a request's events go to: its bucket's on a cluster (its slot)."""
        if self.topology == "cluster":
            return self._keys(request_id)[2][:-4] + "feed"
        return self._feed_key

    def _bucket_feed(self, index_key: str) -> str:
        """The stream of the bucket whose ``open`` index is ``index_key``."""
        if self.topology == "cluster":
            return index_key[:-4] + "feed"
        return self._feed_key

    @property
    def _feeds(self) -> list[str]:
        """Every stream of the feed: one, or one per bucket on a cluster."""
        if self.topology == "cluster":
            return [f"{self.prefix}:{{b{b}}}:feed" for b in range(self.buckets)]
        return [self._feed_key]

    def _marker_key(self, draw: str) -> str:
        """The key marking a pool draw void (in the bucket of the draw's request)."""
        return self._keys(draw.rsplit("#", 1)[0])[2][:-4] + "d:" + draw

    def _pool_keys(self, name: str) -> tuple[str, str]:
        """A pool's configuration and draws keys."""
        base = f"{self.prefix}:{{p:{name}}}:"
        return f"{base}pool", f"{base}draws"

    @property
    def _registry(self) -> str:
        """The set of the pools' names."""
        return f"{self.prefix}:pools"

    def _state_key(self, key: str) -> str:
        """The hash of a policy's shared state (its version and data)."""
        return f"{self.prefix}:state:{key}"

    def _declared(self, ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """The ledger, event and operation keys of requests ``ids``, by id (declared)."""
        return {rid: (*self._keys(rid)[:2], self._ops_key(rid)) for rid in ids}
