"""Capability per model and output kind, learned from outcome scores (``routed``).

A routing policy values running an agent on a model by the model's capability for the
agent's output kind. The catalog's declared table is the prior; outcome scores correct it.

Model. A request whose calls all ran in full (none cut, refused or wrapped up, every call
given all its input) and that was scored ``Q > 0`` is one observation: ``ln Q`` is taken
to be ``sum over its calls of w * theta[model, kind]``, where ``theta`` is the log
capability and ``w`` the call's agent weight (its priority weight over the critical one:
critical 1, standard 2/3, peripheral 1/3; a call of an agent called ``n`` times counts
``1/n`` each). That is the workload spec's response model when nothing was cut, with the
priority standing in for the influence a policy cannot see. The estimate is the posterior
mean of a Gaussian linear regression: the prior ``ln(declared)`` with standard deviation
:data:`PRIOR_SD` (a model without a table: ``ln`` of :data:`UNDECLARED_PRIOR`, standard
deviation :data:`UNDECLARED_SD`), observations with noise :data:`NOISE_SD`. Requests
where something was cut are not observed: their score mixes the capability with the cut
(whose cost the policy only estimates), and what remains needs no model of it.

Only what is observed moves: a model never run on a kind keeps its prior, and when the
same mix of models always runs together, only that mix's total is learned (the posterior
moves along the observed direction). There is no exploration: a model the prior rates
too high is tried, scored and corrected, but one it rates too low may never be chosen
for that kind, so it keeps its prior (an optimistic bonus of one or half a posterior
standard deviation was tried on ``routing`` with a wrong table and lost: a mean
quality of 0.87 and 0.82 over 300 requests instead of 0.89, the optimism on a model's
reasoning outlasting the evidence against it). The sufficient statistics (``X'X``,
``X'y``, the count) add across workers and files; :meth:`CapabilityModel.document` and
:meth:`CapabilityModel.merge` save and restore them, :meth:`CapabilityModel.share` merges
them with a store's copy (:data:`SHARED_FORMAT`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from apportion.calls import CallRecord
from apportion.errors import PolicyStateError, UnknownAgent
from apportion.policies.state import checked_document
from apportion.spec import Pipeline

PRIOR_SD = 0.15
"""Standard deviation of the prior log capability of a declared table."""
UNDECLARED_PRIOR = 0.85
"""Prior capability of a model without a declared table, for every output kind."""
UNDECLARED_SD = 0.5
"""Standard deviation of the prior log capability of a model without a table."""
NOISE_SD = 0.1
"""Standard deviation of an observed ``ln Q`` around the model's prediction."""
_FLOOR = 1e-3

Key = tuple[str, str]
"""``(model, output kind)``."""
Parts = tuple[list[Key], np.ndarray, np.ndarray, int]
"""Sufficient statistics: the keys, ``X'X``, ``X'y`` and the count of requests."""

SHARED_FORMAT = "apportion.capability"
SHARED_VERSION = 1
"""Version of the statistics shared in a store; another version is refused."""


def clean_calls(pipeline: Pipeline, calls: Iterable[CallRecord]) -> list[tuple[Key, float]]:
    """``((model, kind), weight)`` per call of a request that ran in full, else ``[]``.

    A request ran in full when it made a call, and every call finished uncut on a known
    model, with all the input it asked for, no wrap-up and no overuse.
    """
    rows: list[tuple[str, str]] = []
    for call in calls:
        if (
            not call.finished
            or call.truncated
            or call.wrap_up
            or call.overuse
            or call.model is None
            or call.input_cut
        ):
            return []
        rows.append((call.budgeted_as, call.model))
    if not rows:
        return []
    times: dict[str, int] = {}
    for agent, _ in rows:
        times[agent] = times.get(agent, 0) + 1
    found: list[tuple[Key, float]] = []
    for agent, model in rows:
        try:
            spec = pipeline[agent]
        except UnknownAgent:  # not a line of this pipeline: nothing to weigh it by
            return []
        weight = (spec.priority.rank + 1) / 3.0 / times[agent]
        found.append(((model, str(spec.output_kind)), weight))
    return found


class CapabilityModel:
    """Log capability per ``(model, kind)``: a prior table corrected by outcome scores.

    Thread-safe; shared by the requests of a policy. See the module docstring.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: list[Key] = []
        self._index: dict[Key, int] = {}
        self._xtx = np.zeros((0, 0))
        self._xty = np.zeros(0)
        self._n = 0
        self._cache: dict[tuple[Key, ...], tuple[int, dict[Key, float]]] = {}
        self._base: Parts | None = None  # what the store held at the last merge
        self.unshared = 0
        """Requests observed since the last merge with a store."""

    @property
    def observed(self) -> int:
        """How many requests were observed."""
        return self._n

    def _grow(self, keys: Iterable[Key]) -> None:
        """Give the keys not known yet rows of zeros (under the lock)."""
        if any(k not in self._index for k in keys):
            self._adopt(padded(self._parts(), keys))

    def observe(self, rows: Sequence[tuple[Key, float]], outcome: float) -> bool:
        """Fold one request (its :func:`clean_calls`) scored ``outcome`` in; ``False`` if not.

        A request with no rows or a score of 0 (its log is not finite) is not observed.
        """
        if not rows or not outcome > 0:
            return False
        y = math.log(min(1.0, outcome))
        with self._lock:
            self._grow([key for key, _ in rows])
            x = np.zeros(len(self._keys))
            for key, weight in rows:
                x[self._index[key]] += weight
            self._xtx += np.outer(x, x)
            self._xty += x * y
            self._n += 1
            self.unshared += 1
            self._cache.clear()
        return True

    def capabilities(self, priors: Mapping[Key, tuple[float, float]]) -> dict[Key, float]:
        """The posterior capability of each key of ``priors`` (``key: (prior, sd)``).

        Keys observed but not in ``priors`` take the undeclared prior. Cached until the
        next observation.
        """
        order = tuple(sorted(priors))
        with self._lock:
            cached = self._cache.get(order)
            if cached is not None and cached[0] == self._n:
                return cached[1]
            keys, xtx, xty, n = padded(self._parts(), order)
        size = len(keys)
        mu = np.empty(size)
        precision = np.empty(size)
        for i, key in enumerate(keys):
            prior, sd = priors.get(key, (UNDECLARED_PRIOR, UNDECLARED_SD))
            mu[i] = math.log(max(prior, _FLOOR))
            precision[i] = 1.0 / (sd * sd)
        noise = 1.0 / (NOISE_SD * NOISE_SD)
        matrix = np.diag(precision) + xtx * noise
        theta = np.linalg.solve(matrix, precision * mu + xty * noise)
        index = {key: i for i, key in enumerate(keys)}
        found = {key: min(1.0, math.exp(min(0.0, theta[index[key]]))) for key in order}
        with self._lock:
            self._cache[order] = (n, found)
        return found

    def document(self) -> dict[str, Any]:
        """The sufficient statistics, JSON-able (``keys``, ``xtx``, ``xty``, ``requests``)."""
        with self._lock:
            return document_of(self._parts())

    def _parts(self) -> Parts:
        return list(self._keys), self._xtx.copy(), self._xty.copy(), self._n

    @staticmethod
    def parse(document: Any, where: str) -> Parts:
        """Check a :meth:`document`; return its parts.

        Raises:
            PolicyStateError: a field is malformed (``where`` names the file).
        """

        def fail(problem: str) -> PolicyStateError:
            return PolicyStateError(f"capability: {problem}", path=where)

        if not isinstance(document, Mapping):
            raise fail("expected a mapping of keys, xtx, xty and requests")
        keys = document.get("keys")
        if not isinstance(keys, list) or not all(
            isinstance(k, list) and len(k) == 2 and all(isinstance(p, str) for p in k) for k in keys
        ):
            raise fail("keys: expected a list of [model, output kind] pairs")
        pairs = [(str(m), str(k)) for m, k in keys]
        if len(set(pairs)) != len(pairs):
            raise fail("keys: a [model, output kind] pair is repeated")
        requests = document.get("requests")
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 0:
            raise fail("requests: expected a count")
        try:
            xtx = np.array(document.get("xtx"), dtype=float).reshape(len(pairs), len(pairs))
            xty = np.array(document.get("xty"), dtype=float).reshape(len(pairs))
        except (TypeError, ValueError):
            raise fail(f"xtx and xty: expected a {len(pairs)}-square matrix and vector") from None
        if not (np.isfinite(xtx).all() and np.isfinite(xty).all()):
            raise fail("xtx and xty: expected finite numbers")
        return pairs, xtx, xty, requests

    def merge(self, parts: Parts) -> None:
        """Add parsed statistics (:meth:`parse`) to what is known."""
        with self._lock:
            self._adopt(added(self._parts(), parts))

    def _adopt(self, parts: Parts) -> None:
        """Take ``parts`` as the whole statistics (under the lock)."""
        self._keys, self._index = list(parts[0]), {k: i for i, k in enumerate(parts[0])}
        self._xtx, self._xty, self._n = parts[1].copy(), parts[2].copy(), parts[3]
        self._cache.clear()

    def share(self, exchange: Callable[[Parts], Parts]) -> None:
        """Merge with a store: ``exchange(delta)`` returns the merged statistics, adopted.

        Under this model's lock, so nothing observed meanwhile is lost: what was observed
        since the last merge (all of it, the first time) is handed to ``exchange``, which
        adds it to the store's copy; the sum becomes this model's statistics. If
        ``exchange`` raises, nothing changes.
        """
        with self._lock:
            mine = self._parts()
            delta = mine if self._base is None else added(mine, self._base, -1.0)
            merged = exchange(delta)
            self._adopt(merged)
            self._base = merged
            self.unshared = 0


def added(a: Parts, b: Parts, sign: float = 1.0) -> Parts:
    """``a + sign * b``, over the union of their keys (``a``'s first, in order)."""
    known = set(a[0])
    keys = list(a[0]) + [k for k in b[0] if k not in known]
    index = {k: i for i, k in enumerate(keys)}
    xtx = np.zeros((len(keys), len(keys)))
    xty = np.zeros(len(keys))
    for (found, matrix, vector, _), weight in ((a, 1.0), (b, sign)):
        at = [index[k] for k in found]
        xtx[np.ix_(at, at)] += weight * matrix
        xty[at] += weight * vector
    return keys, xtx, xty, a[3] + round(sign * b[3])


def padded(parts: Parts, keys: Iterable[Key]) -> Parts:
    """``parts`` with rows of zeros for the ``keys`` it lacks (appended in order)."""
    known = set(parts[0])
    missing = [k for k in dict.fromkeys(keys) if k not in known]
    size = len(missing)
    return added(parts, (missing, np.zeros((size, size)), np.zeros(size), 0))


def document_of(parts: Parts) -> dict[str, Any]:
    """Statistics as a JSON-able document (what :meth:`CapabilityModel.parse` reads)."""
    keys, xtx, xty, requests = parts
    return {
        "keys": [list(k) for k in keys],
        "xtx": xtx.tolist(),
        "xty": xty.tolist(),
        "requests": requests,
    }


def encode_shared(parts: Parts) -> bytes:
    """Statistics as the store's document (:data:`SHARED_FORMAT`, :data:`SHARED_VERSION`)."""
    document = {"format": SHARED_FORMAT, "version": SHARED_VERSION, **document_of(parts)}
    return json.dumps(document, separators=(",", ":")).encode()


def decode_shared(data: bytes, where: str) -> Parts:
    """The statistics a store holds, checked.

    Raises:
        PolicyStateError: not JSON, another format or version, or a malformed field.
    """
    document = checked_document(
        data, SHARED_FORMAT, SHARED_VERSION, "shared capability statistics", where
    )
    return CapabilityModel.parse(document, where)
