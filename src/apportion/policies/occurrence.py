"""How often each agent runs in a request, learned from the requests seen.

A pipeline names its agents (and agent kinds) up front, but a request need not run them
all: an optional agent runs in some requests only, a reviewer in a loop is called 33
times, a kind's members (``expert:*``) come and go with the team of the day. A policy that
holds back budget for every agent still to run, once each, starves the agents that do run
for agents that never will, and gives a looping agent's first call what its later calls
need.

:class:`CallCounts` keeps, per pipeline line (an agent, or a kind: every member's calls
count on its kind's line), how many calls each past request made (0 when it did not run):
its distribution, not only its mean. From it, :meth:`CallCounts.remaining` is the
expected number of calls still to come from a line that has made ``done`` calls so far,
``E[n - done | n >= done]``, and :meth:`CallCounts.chance` the probability that a line
runs at all. How the policies use them: :mod:`apportion.policies.predicting`, "Agents
that may not run". Counts may be drawn per request from the request's features (the number of
sub-questions sets the fan-out): then, once a line has enough requests, the expectation
comes from a ridge regression of its count on the features (after the first call, the
fitted count times the errors of past requests, given the calls made so far), blended
with the distribution as the need models blend a prior (see
:mod:`apportion.policies.needs`). What ran after what is learned too: per line, the calls
every other line made in the requests where it had not begun before that line's first
call (:meth:`CallCounts.remaining_after`), so that an agent seen only before the one now
running is no longer expected. And whether a line's calls came in a row
(:meth:`CallCounts.in_a_row`, as a tool loop's turns do): its own later calls are then
held back for, as many as they weigh beside the call in hand
(:meth:`CallCounts.own_remaining`).

A prior, not a switch: before any history every line counts as one request with one
call, so a new pipeline is budgeted exactly as if each agent ran once, and the history
takes over as it comes. With a history of one call per request for every line (a plain
pipeline), ``remaining`` is exactly 1 before a line's first call and 0 after it: the
policies then do exactly what they did before this module existed.

Thread-safe: one lock around every update and read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from apportion.spec import Pipeline

PRIOR_REQUESTS = 1
"""How many requests (of one call each) the prior counts for, per line."""
FEATURES_AFTER = 32
"""Requests of a line after which its count is also predicted from the request's features."""
_RIDGE = 1e-3
_ROWS_KEPT = 4096
_MAX_COUNT = 100_000
_LEAST_FIT = 0.5
_STEPS_KEPT = 1 << 18  # numbers in the kept steps of what ran after what (2 MB per array)
_T = TypeVar("_T")
_N = TypeVar("_N", float, np.ndarray)


class CallCounts:
    """Per pipeline line, the distribution of calls per request (see the module docstring).

    Args:
        lines: the pipeline's lines (agents and kinds), in execution order.
    """

    __slots__ = (
        "_after_calls",
        "_after_requests",
        "_fits",
        "_histograms",
        "_index",
        "_lock",
        "_memo",
        "_order_steps",
        "_ratios",
        "_requests",
        "_rows",
        "_version",
        "lines",
    )

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = tuple(lines)
        self._histograms: dict[str, dict[int, int]] = {line: {} for line in self.lines}
        self._requests = 0
        self._rows: list[tuple[tuple[float, ...], tuple[int, ...]]] = []
        self._fits: dict[str, tuple[float, ...]] = {}
        self._ratios: dict[str, np.ndarray] = {}
        self._index = {line: k for k, line in enumerate(self.lines)}
        # what ran after what (remaining_after): [first line, line] -> requests, calls; on
        # the diagonal (a line is never counted after itself), whether its calls came in a
        # row (in_a_row): [line, line] -> requests with several calls, of them apart
        self._after_requests = np.zeros((len(self.lines),) * 2, dtype=np.int64)
        self._after_calls = np.zeros((len(self.lines),) * 2, dtype=np.int64)
        self._lock = threading.Lock()
        self._memo: dict[tuple[object, ...], object] = {}  # answers since the last update
        self._order_steps: dict[
            tuple[tuple[int, ...], tuple[int, ...]], tuple[np.ndarray, ...]
        ] = {}
        self._version = 0  # updates so far

    @property
    def requests(self) -> int:
        """Requests observed."""
        return self._requests

    @property
    def version(self) -> int:
        """How many times the counts changed (a memo of what they give is good until then)."""
        return self._version

    def document(self) -> dict[str, dict[str, int]]:
        """The histograms, JSON-ready: per line, calls per request (as text) to requests."""
        with self._lock:
            return {
                line: {str(n): c for n, c in sorted(h.items())}
                for line, h in self._histograms.items()
            }

    def document_after(self) -> dict[str, dict[str, list[int]]]:
        """What ran after what, JSON-ready: ``{first: {line: [requests, calls]}}``.

        See :meth:`remaining_after`. A line after itself is whether its calls came in a
        row (:meth:`in_a_row`): ``[requests with more than one call, of them apart]``.
        """
        with self._lock:
            found: dict[str, dict[str, list[int]]] = {}
            for i, j in zip(*np.nonzero(self._after_requests | self._after_calls), strict=True):
                found.setdefault(self.lines[i], {})[self.lines[j]] = [
                    int(self._after_requests[i, j]),
                    int(self._after_calls[i, j]),
                ]
            return found

    def restore_after(self, document: Mapping[str, Mapping[str, Sequence[int]]]) -> None:
        """Add saved :meth:`document_after` counts (checked by :func:`parse_after`)."""
        with self._lock:
            self._forget()
            index = self._index
            for y, row in document.items():
                i = index.get(y)
                if i is None:
                    continue
                for x, (requests, calls) in row.items():
                    j = index.get(x)
                    if j is not None:
                        self._after_requests[i, j] += int(requests)
                        self._after_calls[i, j] += int(calls)

    def restore(self, document: Mapping[str, Mapping[str, int]]) -> None:
        """Add saved histograms (:meth:`document`; checked by :func:`parse_document`)."""
        with self._lock:
            self._forget()
            for line, histogram in document.items():
                mine = self._histograms.get(line)
                if mine is None:
                    continue  # an agent this pipeline no longer has
                for n, c in histogram.items():
                    mine[int(n)] = mine.get(int(n), 0) + c
            self._requests = max((sum(h.values()) for h in self._histograms.values()), default=0)

    def observe(
        self,
        counts: Mapping[str, int],
        row: Iterable[float] | None = None,
        order: Sequence[str] | None = None,
    ) -> None:
        """Record one request: calls per line (a line absent made none).

        Args:
            counts: calls per line in the request.
            row: the request's features as the need model's regression row, if the
                count should also be learned from features.
            order: the lines of the request's calls, in the order they began, if known
                (for :meth:`remaining_after`, and :meth:`in_a_row`; a line named at its
                first call only counts for the former).
        """
        with self._lock:
            # every line once, as in every request seen before (fixed): no answer changes,
            # and the answers kept stay (a plain pipeline's policies need not work them out
            # again). Not the first request: the prior answers some questions otherwise.
            plain = self._requests > 0 and self._memo.get(("fixed",)) is True
            if not plain or any(counts.get(line, 0) != 1 for line in self.lines):
                self._forget()
            self._requests += 1
            for line in self.lines:
                n = min(_MAX_COUNT, max(0, int(counts.get(line, 0))))
                histogram = self._histograms[line]
                histogram[n] = histogram.get(n, 0) + 1
            if order is not None:
                self._observe_order(counts, order)
                if any(n > 1 for n in counts.values()):  # only a line calling again can
                    self._observe_apart(order)
            if row is not None:
                x = tuple(float(v) for v in row)
                self._rows.append((x, tuple(int(counts.get(line, 0)) for line in self.lines)))
                if len(self._rows) > _ROWS_KEPT:
                    del self._rows[: len(self._rows) - _ROWS_KEPT]
                if self._requests >= FEATURES_AFTER and _due(self._requests):
                    self._refit()

    def _observe_order(self, counts: Mapping[str, int], order: Sequence[str]) -> None:
        """Per line that called, the calls of every line not begun before it (under the lock)."""
        first: dict[int, None] = {}  # the lines in the order of their first calls
        for y in order:
            i = self._index.get(y)
            if i is not None:
                first.setdefault(i)
        if not first:
            return
        key = (
            tuple(first),
            tuple(min(_MAX_COUNT, max(0, int(counts.get(x, 0)))) for x in self.lines),
        )
        steps = self._order_steps.get(key)
        if steps is None:  # the same order and counts add the same (a plain pipeline's always)
            rows = list(first)
            begun_at = np.full(len(self.lines), len(rows))
            begun_at[rows] = np.arange(len(rows))
            later = np.zeros_like(self._after_requests)
            later[rows] = begun_at[None, :] > np.arange(len(rows))[:, None]  # not begun yet
            steps = (later, later * np.array(key[1], dtype=np.int64))
            if (len(self._order_steps) + 1) * len(self.lines) ** 2 > _STEPS_KEPT:
                self._order_steps.clear()
            self._order_steps[key] = steps
        self._after_requests += steps[0]
        self._after_calls += steps[1]

    def _observe_apart(self, order: Sequence[str]) -> None:
        """Per line that called more than once, whether its calls were apart (under the lock)."""
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        calls: dict[int, int] = {}
        for k, y in enumerate(order):
            i = self._index.get(y)
            if i is not None:
                first.setdefault(i, k)
                last[i] = k
                calls[i] = calls.get(i, 0) + 1
        for i, n in calls.items():
            if n > 1:
                self._after_requests[i, i] += 1
                self._after_calls[i, i] += last[i] - first[i] + 1 > n

    def in_a_row(self, line: str) -> bool:
        """Whether ``line`` was seen calling more than once, and its calls came in a row.

        As an agent's turns of a tool loop do, or the retries of one answer: in at most a
        tenth of the requests in which it called more than once did another line call
        between its first call and its last.
        """
        i = self._index.get(line)
        return i is not None and bool(self.in_a_row_all()[i])

    def in_a_row_all(self) -> np.ndarray:
        """:meth:`in_a_row` of every line, in :attr:`lines` order (memo)."""
        found = self._memo.get(("in_a_row",))
        if not isinstance(found, np.ndarray):
            version = self._version
            with self._lock:
                several = np.diagonal(self._after_requests).copy()
                apart = np.diagonal(self._after_calls).copy()
            found = (several > 0) & (apart * 10 <= several)
            self._keep(("in_a_row",), found, version)
        return found

    def remaining_after(self, line: str, last: str, row: Iterable[float] | None = None) -> float:
        """Expected calls of ``line``, not begun yet, now that ``last`` has begun.

        Learned from the requests in which ``last`` began before ``line`` did (or
        ``line`` never ran): the calls ``line`` made in them, with :meth:`remaining`
        (before any call) as a prior counting for :data:`PRIOR_REQUESTS` request. An
        optional agent listed before the agents now running, and seen to run only before
        them, is no longer expected: a translator that did not run before the answer is
        written will not run after it.
        """
        if row is not None and type(row) is not tuple:
            row = tuple(row)
        key = ("after", line, last, row)
        found = self._memo.get(key)
        if found is not None:
            return found  # type: ignore[return-value]
        version = self._version
        prior = self.remaining(line, 0, row)
        i, j = self._index.get(last), self._index.get(line)
        if i is None or j is None:
            return self._keep(key, prior, version)
        with self._lock:
            requests = int(self._after_requests[i, j])
            calls = int(self._after_calls[i, j])
        value = _after(requests, calls, prior) if requests or calls else prior
        return self._keep(key, value, version)

    def remaining_after_all(
        self, last: str | None, row: tuple[float, ...] | None = None
    ) -> np.ndarray:
        """:meth:`remaining_after` of every line (in :attr:`lines` order), at once.

        With ``last`` ``None`` (or not a line), :meth:`remaining` before any call. Kept
        until the counts change.
        """
        key = ("after_all", last, row)
        found = self._memo.get(key)
        if isinstance(found, np.ndarray):
            return found
        version = self._version
        prior_key = ("prior_all", row)
        prior = self._memo.get(prior_key)
        if not isinstance(prior, np.ndarray):
            prior = np.array([self.remaining(x, 0, row) for x in self.lines], dtype=float)
            self._keep(prior_key, prior, version)
        i = None if last is None else self._index.get(last)
        if i is None:
            return prior
        with self._lock:
            requests = self._after_requests[i].copy()
            calls = self._after_calls[i].copy()
        value = np.where((requests > 0) | (calls > 0), _after(requests, calls, prior), prior)
        return self._keep(key, value, version)

    def moving(self) -> np.ndarray:
        """Per line (in :attr:`lines` order), whether it is not :meth:`once` (memo)."""
        found = self._memo.get(("moving",))
        if not isinstance(found, np.ndarray):
            version = self._version
            found = np.array([not self.once(x) for x in self.lines], dtype=bool)
            self._keep(("moving",), found, version)
        return found

    def fixed(self) -> bool:
        """Whether every line is :meth:`once` and was seen once after every other (memo).

        Then :meth:`remaining` and :meth:`remaining_after` are exactly 1 for a line that
        has not called yet, whatever ran before it: the single-call rule.
        """
        found = self._memo.get(("fixed",))
        if found is None:
            version = self._version
            with self._lock:
                consistent = bool((self._after_calls == self._after_requests).all())
            found = consistent and not self.moving().any()
            self._keep(("fixed",), found, version)
        return bool(found)

    def _keep(self, key: tuple[object, ...], value: _T, version: int) -> _T:
        """Keep an answer until the next update (not one computed across an update)."""
        with self._lock:
            if self._version == version and len(self._memo) < 65_536:
                self._memo[key] = value
        return value

    def _forget(self) -> None:
        """Drop the answers kept: the counts change (under the lock)."""
        self._version += 1
        self._memo.clear()

    def _refit(self) -> None:
        """Fit each line's count on the features (under the lock)."""
        width = len(self._rows[-1][0])
        rows = [(x, n) for x, n in self._rows if len(x) == width]
        x = np.asarray([r[0] for r in rows], dtype=float)
        y = np.asarray([r[1] for r in rows], dtype=float)
        gram = x.T @ x + _RIDGE * np.eye(width)
        try:
            solved = np.linalg.solve(gram, x.T @ y)
        except np.linalg.LinAlgError:  # pragma: no cover (the ridge keeps it invertible)
            return
        self._fits = {line: tuple(solved[:, k].tolist()) for k, line in enumerate(self.lines)}
        fitted = np.maximum(x @ solved, _LEAST_FIT)
        self._ratios = {line: y[:, k] / fitted[:, k] for k, line in enumerate(self.lines)}

    def once(self, line: str) -> bool:
        """Whether ``line`` made exactly one call in every request seen (or none was seen)."""
        found = self._memo.get(("once", line))
        if found is not None:
            return found  # type: ignore[return-value]
        with self._lock:
            histogram = self._histograms.get(line, {})
            once = not histogram or set(histogram) == {1}
            self._memo["once", line] = once
            return once

    def at_most_once(self, line: str) -> bool:
        """Whether requests were seen and ``line`` made at most one call in each."""
        with self._lock:
            histogram = self._histograms.get(line, {})
            return bool(histogram) and max(histogram) <= 1

    def at_most_once_all(self) -> tuple[bool, ...]:
        """:meth:`at_most_once` of every line, in :attr:`lines` order (memo)."""
        found = self._memo.get(("at_most_once",))
        if not isinstance(found, tuple):
            version = self._version
            found = tuple(self.at_most_once(x) for x in self.lines)
            self._keep(("at_most_once",), found, version)
        return found

    def chance(self, line: str) -> float:
        """Probability that ``line`` makes at least one call in a request."""
        with self._lock:
            histogram = self._histograms.get(line, {})
            total = PRIOR_REQUESTS + sum(histogram.values())
            ran = PRIOR_REQUESTS + sum(c for n, c in histogram.items() if n >= 1)
        return ran / total

    def remaining(self, line: str, done: int, row: Iterable[float] | None = None) -> float:
        """Expected calls still to come from ``line`` after ``done`` calls this request.

        ``E[n - done | n >= done]`` over the history and the prior; 0 when no request
        seen made more than ``done`` calls. With ``row`` (the request's features) and a
        fit of the line's count on them, the expectation before the first call blends
        in the fitted count. Kept until the counts change.
        """
        return self._kept(line, done, row)

    def per_request(self, line: str, row: Iterable[float] | None = None) -> float:
        """Calls ``line`` makes in a request like this one, as expected before it begins.

        What a request's calls of the line are taken to be where it is a yardstick rather
        than what is still to come: the calls a reader's predicted input already counts
        the answers of, and how many calls share the line's weight. The same figure as
        :meth:`remaining` before any call (a subclass may tell the calls to come apart).
        """
        return self._kept(line, 0, row)

    def own_remaining(self, line: str, done: int, row: Iterable[float] | None = None) -> float:
        """:meth:`remaining` as ``line``'s call in hand weighs its own later calls.

        A line's calls share its weight (its quality is the mean of its calls'), so in a
        request of ``n`` calls each weighs ``1 / n``: after ``done`` calls, those still to
        come count ``E[(n - done) / n] / E[1 / n]`` over the requests with ``n >= done``,
        as many as they are worth beside the call in hand. Fewer than ``E[n - done]``
        where long loops are rare but long: holding back for the mean loop leaves the
        short ones (most of them) their budget unspent. Before any call, as
        :meth:`remaining`.
        """
        return self._kept(line, done, row, True)

    def _kept(self, line: str, done: int, row: Iterable[float] | None, own: bool = False) -> float:
        """:meth:`remaining` (``own``: :meth:`own_remaining`), kept until the counts change."""
        if row is not None and type(row) is not tuple:
            row = tuple(row)
        key = ("remaining", line, done, row, own)
        found = self._memo.get(key)
        if found is not None:
            return found  # type: ignore[return-value]
        version = self._version
        return self._keep(key, self._remaining(line, done, row, own), version)

    def _remaining(
        self, line: str, done: int, row: tuple[float, ...] | None, own: bool = False
    ) -> float:
        """:meth:`remaining` (``own``: :meth:`own_remaining`), computed."""
        with self._lock:
            histogram = self._histograms.get(line, {})
            weight = 0.0
            total = 0.0
            for n, c in histogram.items():
                if n >= done:
                    share = 1.0 / max(n, 1) if own and done >= 1 else 1.0
                    weight += c * share
                    total += (n - done) * c * share
            if done <= 1:  # the prior: one request of one call
                weight += PRIOR_REQUESTS
                total += (1 - done) * PRIOR_REQUESTS
            varies = len(histogram) > 1  # a constant count needs no features
            fit = self._fits.get(line) if row is not None and varies else None
            ratios = self._ratios.get(line)
            seen = self._requests
        mean = total / weight if weight else 0.0
        values = tuple(row) if fit is not None and row is not None else ()
        if fit is None or len(values) != len(fit):
            return mean
        fitted = max(0.0, float(sum(w * v for w, v in zip(fit, values, strict=True))))
        if done == 0 or ratios is None:
            predicted = fitted
        else:  # E[n - done | n >= done], n the fitted count times a past request's error
            counts = max(fitted, _LEAST_FIT) * ratios
            counts = counts[counts >= done]
            if not len(counts):
                return mean
            if own and done >= 1:
                predicted = float(((counts - done) / counts).mean() / (1 / counts).mean())
            else:
                predicted = float(counts.mean()) - done
        trust = seen / (seen + FEATURES_AFTER)
        return (1 - trust) * mean + trust * predicted


ALIKE_AT_LEAST = 8
"""Listed agents alike in every declared respect are one team when at least this many."""


def teams(pipeline: Pipeline) -> dict[str, tuple[str, ...]]:
    """Listed agents that a pipeline declares alike, per agent: its team (itself included).

    A pool of names listed one by one (``expert:000`` ... ``expert:119``, the way a team
    was declared before agent kinds) is a kind in all but name: each member runs in a few
    requests, too few to learn it alone. Agents are alike when every field a policy
    sees is the same (priority, ``after``, output kind, model, output bounds, estimator,
    typical sizes) and the same agents read them; at least :data:`ALIKE_AT_LEAST` of
    them (a handful of alike agents, four searchers, keep their own lines). Agents in
    no team are absent.
    """
    readers: dict[str, list[str]] = {a.name: [] for a in pipeline.agents}
    for b in pipeline.agents:
        for u in b.after:
            if u in readers:
                readers[u].append(b.name)
    groups: dict[tuple[object, ...], list[str]] = {}
    for a in pipeline.agents:
        key = (
            a.priority,
            a.after,
            a.output_kind,
            a.model,
            a.min_output,
            a.max_output,
            id(a.estimator) if a.estimator is not None else None,
            a.typical_input,
            a.typical_output,
            tuple(readers[a.name]),
        )
        groups.setdefault(key, []).append(a.name)
    found: dict[str, tuple[str, ...]] = {}
    for names in groups.values():
        if len(names) >= ALIKE_AT_LEAST:
            team = tuple(names)
            found.update(dict.fromkeys(team, team))
    return found


def parse_document(entry: object) -> dict[str, dict[str, int]] | None:
    """A saved :meth:`CallCounts.document`, checked; ``None`` when it is malformed."""
    if not isinstance(entry, Mapping):
        return None
    parsed: dict[str, dict[str, int]] = {}
    for line, histogram in entry.items():
        if not isinstance(line, str) or not isinstance(histogram, Mapping):
            return None
        clean: dict[str, int] = {}
        for n, c in histogram.items():
            if not (isinstance(n, str) and n.isdigit() and int(n) <= _MAX_COUNT):
                return None
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                return None
            clean[n] = c
        parsed[line] = clean
    return parsed


def parse_after(entry: object) -> dict[str, dict[str, list[int]]] | None:
    """A saved :meth:`CallCounts.document_after`, checked; ``None`` when it is malformed."""
    if not isinstance(entry, Mapping):
        return None
    parsed: dict[str, dict[str, list[int]]] = {}
    for y, row in entry.items():
        if not isinstance(y, str) or not isinstance(row, Mapping):
            return None
        clean: dict[str, list[int]] = {}
        for x, pair in row.items():
            if (
                not isinstance(x, str)
                or not isinstance(pair, list)
                or len(pair) != 2
                or any(type(v) is not int or v < 0 for v in pair)
            ):
                return None
            clean[x] = [pair[0], pair[1]]
        parsed[y] = clean
    return parsed


def _due(n: int) -> bool:
    """Refit at 32, 64, 128, ... requests, then every 1024."""
    return n == FEATURES_AFTER or (n & (n - 1) == 0) or n % 1024 == 0


def counts_of(state_calls: Mapping[str, int], refused: Iterable[str]) -> dict[str, int]:
    """Calls per line of a closed request: begun grants plus refused begins."""
    counts = dict(state_calls)
    for line in refused:
        counts[line] = counts.get(line, 0) + 1
    return counts


def _after(requests: _N, calls: _N, prior: _N) -> _N:
    """Calls expected of a line once another began, ``prior`` counting for requests.

    ``calls`` over ``requests`` seen, with ``prior`` as :data:`PRIOR_REQUESTS` more
    (numbers, or arrays of them).
    """
    return (calls + PRIOR_REQUESTS * prior) / (requests + PRIOR_REQUESTS)  # type: ignore[no-any-return]


def weighted(need: float, times: float) -> int:
    """``need`` for ``times`` calls, rounded (exactly ``need`` for one call)."""
    if times == 1.0:
        if type(need) is int:
            return need
        if float(need).is_integer():
            return int(need)
    return round(need * times)


__all__ = [
    "ALIKE_AT_LEAST",
    "FEATURES_AFTER",
    "PRIOR_REQUESTS",
    "CallCounts",
    "counts_of",
    "parse_after",
    "parse_document",
    "teams",
    "weighted",
]
