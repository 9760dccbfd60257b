"""Dividing a pool of tokens among its uses by the quality each token buys.

A use of tokens (one agent's input, or its output) is a :class:`Curve`: token levels and
the expected log-quality the use reaches at each. :func:`divide` shares a pool among
curves greedily over the segments of each curve's upper concave hull, the best gain per
token first. For concave curves that is the optimum (the water-filling of a separable
concave program); for the others (an output that is worthless until complete has an
S-shaped curve) it is the optimum of their hulls, and the hull's segments are taken
whole or not at all where they jump, so a share is never spent on the flat start of an
S that it cannot get past (a segment between neighbouring points may be taken in part).

The curves :func:`input_curve` and :func:`output_curve` are the response model of the
workload spec seen from a policy: coverage raised to a weight, and the expectation over
what the output might need (samples of the need, relative to its prediction).

:func:`choose_call` decides the call about to run. A cap is spent only as far as the
answer needs it, so pricing it as :func:`divide` prices a use would hold back tokens the
agents after it get anyway when the answer is short; it weighs each ``(context, cap)``
on the whole expected outcome instead, the agents after it valued by :func:`pool_values`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

_T = TypeVar("_T")

FLOOR = -12.0
"""The log-quality of an agent that reads or writes nothing at all (a quality of ~6e-6)."""

INPUT_FRACTIONS = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
OUTPUT_RATIOS = np.array(
    [0.0, 0.25, 0.5, 0.7, 0.85, 1.0, 1.1, 1.2, 1.3, 1.45, 1.6, 1.8, 2.0, 2.4, 3.0, 4.0]
)
with np.errstate(divide="ignore"):
    _LOG_INPUT_FRACTIONS = np.log(INPUT_FRACTIONS)
_INPUT_BEYOND = np.array([1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5])
_EXTENSION_STEPS = np.array([0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0])


@dataclass(frozen=True, slots=True)
class Curve:
    """Expected log-quality of one use of tokens, by the tokens it gets.

    Attributes:
        levels: increasing token levels; the first is what the use gets at the least.
        values: the expected log-quality (at most 0) at each level.
    """

    levels: np.ndarray
    values: np.ndarray
    _hull_parts: tuple[float, float, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def hull_parts(self) -> tuple[float, float, np.ndarray]:
        """The first level and value, and the hull's segments (computed once per curve).

        Returns:
            ``(first level, first value, segments)``: ``segments`` has one row per
            segment of the upper concave hull, ``(slope, width, gain, tight)``, ``tight``
            1.0 where it joins neighbouring points (see :func:`_segments`).
        """
        parts = self._hull_parts
        if parts is None:
            points = _hull(self.levels, self.values)
            rows = [
                ((y1 - y0) / (x1 - x0), x1 - x0, y1 - y0, float(i1 - i0 == 1))
                for (x0, y0, i0), (x1, y1, i1) in itertools.pairwise(points)
            ]
            parts = (points[0][0], points[0][1], np.array(rows, dtype=float).reshape(-1, 4))
            object.__setattr__(self, "_hull_parts", parts)
        return parts


def _hull(levels: np.ndarray, values: np.ndarray) -> list[tuple[float, float, int]]:
    """The upper concave hull from the first point to the highest value.

    Returns:
        ``(level, value, index)`` per hull point, ``index`` into the curve's points.
    """
    top = int(np.argmax(values))
    points: list[tuple[float, float, int]] = []
    for i, (x, y) in enumerate(
        zip(levels[: top + 1].tolist(), values[: top + 1].tolist(), strict=True)
    ):
        if points and x <= points[-1][0]:
            if y > points[-1][1]:
                points[-1] = (points[-1][0], y, i)
            continue
        while len(points) >= 2:
            (x0, y0, _), (x1, y1, _) = points[-2], points[-1]
            if (y1 - y0) * (x - x0) <= (y - y0) * (x1 - x0):  # the middle point is under
                points.pop()
            else:
                break
        points.append((x, y, i))
    return points


def _segments(
    curves: Sequence[Curve], least_gain: float
) -> tuple[list[float], float, list[tuple[float, int, float, float, bool]]]:
    """Each curve's first level, their summed value, and the hull segments, best first."""
    hulls = [_hull(c.levels, c.values) for c in curves]
    segments = []
    for c, points in enumerate(hulls):
        for (x0, y0, i0), (x1, y1, i1) in itertools.pairwise(points):
            slope = (y1 - y0) / (x1 - x0)
            if slope > least_gain:
                segments.append((slope, c, x1 - x0, y1 - y0, i1 - i0 == 1))
    segments.sort(key=lambda s: -s[0])
    return [h[0][0] for h in hulls], sum(h[0][1] for h in hulls), segments


def _fill(
    first: list[float],
    value: float,
    segments: list[tuple[float, int, float, float, bool]],
    pool: float,
) -> tuple[list[int], float]:
    """The greedy share of ``pool`` over ``segments`` (see :func:`divide`)."""
    got = list(first)
    left = pool - sum(got)
    if left < 0:
        scale = max(pool, 0.0) / sum(got)
        return [int(g * scale) for g in got], value
    done: set[int] = set()
    for slope, c, width, gain, tight in segments:
        if c in done:
            continue
        if width <= left:
            got[c] += width
            value += gain
            left -= width
            continue
        done.add(c)  # this curve goes no further; the others may still fit
        if tight:  # between two neighbouring points: pro rata
            got[c] += left
            value += slope * left
            left = 0.0
            break
    return [int(g) for g in got], value


def divide(
    curves: Sequence[Curve], pool: float, *, least_gain: float = 0.0
) -> tuple[list[int], float]:
    """Share ``pool`` tokens among ``curves``, the best gain per token first.

    Args:
        curves: the uses.
        pool: tokens to share.
        least_gain: a segment buying less log-quality per token than this is not taken (a
            price on tokens).

    Returns:
        ``(tokens per curve, total expected log-quality)``. When the pool cannot cover
        every curve's first level, the first levels are scaled down in proportion.
    """
    return _fill(*_segments(curves, least_gain), pool)


def pool_values(
    curves: Sequence[Curve], pools: np.ndarray, *, least_gain: float = 0.0
) -> np.ndarray:
    """The total expected log-quality :func:`divide` reaches with each of ``pools``.

    All pools at once: the greedy order of the segments does not depend on the pool, so
    each pool takes a prefix of them (summed with ``cumsum``) up to the first that does
    not fit; only a pool stopped by a jump (a segment between points that are not
    neighbours) goes on alone with the segments after it, that curve left out, as
    :func:`_fill` does. The same sums as :func:`_fill`'s, the prefix added in another
    order (equal to rounding).
    """
    parts = [c.hull_parts() for c in curves]
    pools = np.asarray(pools, dtype=float)
    values = np.full(len(pools), sum(p[1] for p in parts))
    left = pools - sum(p[0] for p in parts)
    fits = np.flatnonzero(left >= 0)
    if not len(fits) or not parts:
        return values
    rows = np.concatenate([p[2] for p in parts])  # slope, width, gain, tight
    curve = np.repeat(np.arange(len(parts)), [len(p[2]) for p in parts])
    keep = rows[:, 0] > least_gain
    if not keep.all():
        rows, curve = rows[keep], curve[keep]
    if not len(rows):
        return values
    best = np.argsort(-rows[:, 0], kind="stable")  # as _segments sorts them
    table = np.vstack([rows[best].T, curve[best]])  # slope, width, gain, tight, curve
    _fill_many(table, left[fits], fits, values)
    return values


def _fill_many(table: np.ndarray, left: np.ndarray, where: np.ndarray, values: np.ndarray) -> None:
    """Add to ``values[where]`` what :func:`_fill` takes of the segments with ``left``.

    ``table``'s columns are the segments, best first; its rows slope, width, gain, tight
    and curve.
    """
    slope, width, gain, tight, _ = table
    taken = np.zeros(len(width) + 1)
    got = np.zeros(len(width) + 1)
    np.cumsum(width, out=taken[1:])
    np.cumsum(gain, out=got[1:])
    stop = np.searchsorted(taken[1:], left, side="right")  # segments taken whole
    values[where] += got[stop]
    rest = left - taken[stop]
    inside = stop < len(width)
    if not inside.any():
        return
    at, rest, pos = stop[inside], rest[inside], where[inside]
    part = tight[at] > 0
    values[pos[part]] += slope[at[part]] * rest[part]
    if part.all():
        return
    # a pool stopped by a jump goes on alone, as _fill does, that curve left out (only the
    # segments from the first such stop on are read)
    jumps = at[~part]
    first = int(jumps.min())
    segments = table[:, first:].T.tolist()
    for j, room, k in zip(
        (jumps - first).tolist(), rest[~part].tolist(), pos[~part].tolist(), strict=True
    ):
        done = {segments[j][4]}
        value = 0.0
        for step, size, rise, whole, c in segments[j + 1 :]:
            if c in done:
                continue
            if size <= room:
                room -= size
                value += rise
                continue
            done.add(c)
            if whole:
                value += step * room
                break
        values[k] += value


_PER_SAMPLES: dict[tuple[int, str], tuple[np.ndarray, Any]] = {}


def _per_samples(ratios: np.ndarray, what: str, make: Callable[[np.ndarray], _T]) -> _T:
    """``make(ratios)``, kept per samples array and ``what`` it is.

    An error model's samples are replaced, never changed in place, when it learns; what
    is made of them is kept until then (a thousand arrays at most).
    """
    key = (id(ratios), what)
    found = _PER_SAMPLES.get(key)
    if found is not None and found[0] is ratios:
        return found[1]  # type: ignore[no-any-return]
    made = make(ratios)
    if len(_PER_SAMPLES) >= 1024:
        _PER_SAMPLES.clear()
    _PER_SAMPLES[key] = (ratios, made)
    return made


def input_curve(need: float, weight: float, ratios: np.ndarray | None = None) -> Curve:
    """Reading ``ctx`` of ``need`` input tokens: ``weight * ln(ctx / need)``.

    With ``ratios`` (samples of the need over ``need``, for an agent whose input is not in
    hand yet), the log of the expected ``min(1, ctx / sampled need) ** weight``.
    """
    need = max(need, 1.0)
    if ratios is None or len(ratios) == 0:
        levels = INPUT_FRACTIONS * need
        values = np.maximum(weight * _LOG_INPUT_FRACTIONS, FLOOR)
    else:
        fractions, share = _per_samples(ratios, "input", _input_shares)
        levels = fractions * need
        with np.errstate(divide="ignore"):
            values = np.maximum(np.log((share**weight).mean(axis=1)), FLOOR)
    values[0] = FLOOR
    return Curve(levels, values)


def _input_shares(ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An input curve's fractions of the need, and the share each reads of each sample.

    They depend on the samples alone (:func:`input_curve` raises them to a weight).
    """
    top = max(float(np.max(ratios)), 1.0)
    fractions = np.unique(
        np.concatenate([INPUT_FRACTIONS, _INPUT_BEYOND[top > _INPUT_BEYOND], [top]])
    )
    share = np.minimum(fractions[:, None] / np.maximum(ratios[None, :], 1e-9), 1.0)
    return fractions, share


def output_curve(
    kind: str,
    predicted: float,
    ratios: np.ndarray,
    weight: float,
    *,
    least: int = 1,
    most: int | None = None,
    readers: Sequence[tuple[float, float]] = (),
) -> Curve:
    """Writing up to a cap, when the need is ``predicted`` times one of ``ratios``.

    ``structured``: the chance the need fits (a cut answer does not parse: quality 0,
    whatever the weight). ``prose``: the expected ``min(1, cap / need) ** weight``.
    ``reasoning``: 1 when it fits, else ``(cap / need / 2) ** weight``. Caps are kept
    within ``[least, most]``. ``readers`` are the agents that read this answer, as
    ``(input need, input weight)``: what a cut leaves out is missing from their input
    too, and costs them ``(1 - missing / input need) ** input weight``.
    """
    predicted = max(predicted, 1.0)
    caps = np.clip(OUTPUT_RATIOS * predicted, least, most if most is not None else math.inf)
    caps[0] = least
    needs = np.maximum(ratios * predicted, 1.0)
    return Curve(caps, _log_mean(_factors(kind, caps, needs, weight, readers)))


def extension_curve(
    kind: str,
    written: int,
    predicted: float,
    ratios: np.ndarray,
    weight: float,
    *,
    most: int | None = None,
    readers: Sequence[tuple[float, float]] = (),
) -> Curve:
    """Writing ``extra`` more tokens after ``written`` were cut off.

    ``readers``: as for :func:`output_curve`.

    The need is drawn from the samples above ``written``; when none are (the need model
    has never seen so long an answer), from ``written`` times 1.1 to 2.
    """
    needs = np.maximum(ratios * max(predicted, 1.0), 1.0)
    needs = needs[needs > written]
    if len(needs) < 4:
        needs = written * np.array([1.1, 1.25, 1.5, 2.0])
    extra = np.unique(np.round(_EXTENSION_STEPS * float(np.max(needs) - written)))
    if most is not None:
        extra = np.unique(np.minimum(extra, max(most, 0)))
    return Curve(extra, _log_mean(_factors(kind, written + extra, needs, weight, readers)))


def _factors(
    kind: str,
    caps: np.ndarray,
    needs: np.ndarray,
    weight: float,
    readers: Sequence[tuple[float, float]] = (),
) -> np.ndarray:
    """The quality factor of each cap (rows) for each need (columns)."""
    fits = needs[None, :] <= caps[:, None]
    if kind == "structured":
        factor = fits.astype(float)
    else:
        share = np.minimum(caps[:, None] / needs[None, :], 1.0)
        if kind == "reasoning":
            share = np.where(fits, 1.0, share / 2)
        factor = share**weight
    if readers and kind != "structured":  # a cut record is worth 0 to its readers too
        cut = ~fits
        if cut.any():  # where nothing is missing, the readers' factors are 1
            missing = (needs[None, :] - caps[:, None])[cut]
            for need_in, reader_weight in readers:
                factor[cut] *= np.maximum(1 - missing / max(need_in, 1.0), 1e-6) ** reader_weight
    return factor


def _log_mean(factors: np.ndarray) -> np.ndarray:
    """``ln E[q]`` of each row of quality factors (at least :data:`FLOOR`)."""
    with np.errstate(divide="ignore"):
        result: np.ndarray = np.maximum(np.log(factors.mean(axis=1)), FLOOR)
        return result


@dataclass(frozen=True, slots=True)
class Call:
    """The call about to run, as :func:`choose_call` weighs it.

    Attributes:
        input_need: the input in hand (tokens).
        input_weight: what cutting the input costs (``weight * ln coverage``).
        kind: the output's kind.
        predicted: the predicted output.
        ratios: samples of the need over its prediction.
        output_weight: what cutting the output costs.
        least: the least cap.
        most: the greatest cap (``None``: the pool).
        readers: ``(input need, input weight)`` of the agents that read the answer.
    """

    input_need: float
    input_weight: float
    kind: str
    predicted: float
    ratios: np.ndarray
    output_weight: float
    least: int = 1
    most: int | None = None
    readers: Sequence[tuple[float, float]] = ()


_SAMPLES = 48
_CONTEXT_FRACTIONS = np.linspace(0.05, 1.0, 20)
_POOL_POINTS = 49
_TAIL = np.array([1.3, 1.8])
_TAIL_CHANCE = np.array([0.5, 0.5])


_CHANCE = np.concatenate([np.ones(_SAMPLES), _TAIL_CHANCE])
_CHANCE /= _CHANCE.sum()
_GRID_STEPS = np.arange(_POOL_POINTS, dtype=float)
_SPOTS = (np.arange(_SAMPLES) + 0.5) / _SAMPLES


def _quantiles(ratios: np.ndarray) -> np.ndarray:
    """``_SAMPLES`` quantiles of ``ratios``, kept per array (:func:`_per_samples`)."""
    found: np.ndarray = _per_samples(ratios, "quantiles", lambda r: np.quantile(r, _SPOTS))
    return found


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (``np.unique`` of a 1-d array without NaN, for less)."""
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _saturation(curves: Sequence[Curve], least_gain: float) -> float:
    """The least pool in which :func:`divide` gives every curve all it would take."""
    if not curves:
        return 0.0
    parts = [c.hull_parts() for c in curves]
    rows = np.concatenate([p[2] for p in parts])
    return sum(p[0] for p in parts) + float(rows[rows[:, 0] > least_gain, 1].sum())


def leaves_enough(call: Call, pool: float, takes: float) -> bool:
    """Whether every choice :func:`choose_call` weighs leaves at least ``takes`` of ``pool``.

    ``takes``: what the agents after the call would take at most (:func:`_saturation` of
    their curves, or more). Then they are valued the same whatever the call takes, on
    :func:`choose_call`'s grid of pools too (from its first point at or above ``takes``,
    with room for rounding), and only the call's own outcome decides. The call takes at
    most its whole input and its longest sampled need or its largest cap.
    """
    step = pool / (_POOL_POINTS - 1)
    if not math.isfinite(takes) or step <= 0:
        return False
    predicted = max(call.predicted, 1.0)
    longest = float(_TAIL[-1]) * max(float(_quantiles(call.ratios)[-1]) * predicted, 1.0)
    most = pool if call.most is None else min(call.most, pool)
    cap = min(max(longest, float(OUTPUT_RATIOS[-1]) * predicted, call.least), most)
    left = pool - max(call.input_need, 1.0) - max(longest, cap) - 1.0  # 1: rounding
    return left >= math.ceil((takes * (1 + 1e-9) + 1.0) / step) * step


def _contexts(call: Call, need_in: float, least_gain: float) -> tuple[np.ndarray, np.ndarray]:
    """The contexts :func:`choose_call` weighs, and each one's own term in its outcome."""
    ctxs = _distinct(np.clip(np.round(np.append(_CONTEXT_FRACTIONS * need_in, 1)), 1, need_in))
    return ctxs, call.input_weight * np.log(ctxs / need_in) - least_gain * ctxs


def choose_call(
    call: Call, pool: float, after: Sequence[Curve], *, least_gain: float = 0.0
) -> tuple[int, int] | None:
    """The ``(ctx, cap)`` of the call about to run with the best expected outcome.

    A cap is spent only as far as the answer needs: what it leaves, the agents after it
    get. So the cap is not priced as if spent (as :func:`divide` prices every use): for
    each ``(ctx, cap)`` on a grid, the expected outcome is the mean, over the sampled
    needs ``n``, of ``exp(own input + own output at min(n, cap) + V(pool - ctx -
    min(n, cap)) - least_gain * (ctx + min(n, cap)))``, ``V`` being what :func:`divide`
    makes of a pool over ``after``. Two needs longer than any seen (1.3 and 1.8 times
    the longest sample, half a sample's chance each) stand for the tail the samples
    miss: without them every cap past the longest sample would tie. When every choice
    leaves the agents after it all they would take (:func:`leaves_enough`), ``V`` is the
    same for each and is not worked out: the call's own outcome decides, as it would (an
    exact tie may fall the other way: on 21 workloads and ceilings, 300 requests each,
    ``learned``'s quality was the same to four places).

    Returns:
        ``(ctx, cap)``, or ``None`` when no cap of at least ``call.least`` fits the pool.
    """
    most = pool if call.most is None else min(call.most, pool)
    if most < call.least or pool < 1:
        return None
    predicted = max(call.predicted, 1.0)
    needs = np.maximum(_quantiles(call.ratios) * predicted, 1.0)
    needs = np.concatenate([needs, _TAIL * float(needs.max())])
    chance = _CHANCE
    caps = _distinct(
        np.round(np.clip(np.concatenate([needs, OUTPUT_RATIOS * predicted]), call.least, most))
    )
    need_in = max(call.input_need, 1.0)
    factors = _factors(call.kind, caps, needs, call.output_weight, call.readers)
    fits = needs[None, :] <= caps[:, None]
    short = np.where(fits, 0.0, factors) @ chance  # each cap's answers cut at it
    if leaves_enough(call, pool, _saturation(after, least_gain)):
        # every (ctx, cap) leaves the agents after it all they would take, and none
        # reaches past the pool: they add the same to each, so the call's own outcome
        # decides, its context's part and its cap's apart (the rest is not worked out)
        own_cap = (np.exp(-least_gain * needs) * chance) @ (fits * factors).T
        own_cap += np.exp(-least_gain * caps) * short
        cap = int(caps[int(np.argmax(own_cap))])
        if call.input_weight > 0 and least_gain * need_in <= call.input_weight:
            # w * ln(ctx / need) - least_gain * ctx grows up to the whole input: the
            # largest context weighed
            return int(min(float(round(need_in)), need_in)), cap
        ctxs, own_ctx = _contexts(call, need_in, least_gain)
        return int(ctxs[int(np.argmax(own_ctx))]), cap
    ctxs, own_ctx = _contexts(call, need_in, least_gain)
    grid = _GRID_STEPS * (pool / (_POOL_POINTS - 1))  # np.linspace(0, pool, _POOL_POINTS)
    grid[-1] = pool
    values = pool_values(after, grid, least_gain=least_gain)
    room = pool - ctxs
    # what a call uses is its need when the cap covers it, else its cap: the agents after
    # it are valued once per (ctx, need) and per (ctx, cap), not per (ctx, cap, need)
    by_need = np.interp(room[:, None] - needs[None, :], grid, values)
    by_cap = np.interp(room[:, None] - caps[None, :], grid, values)
    covered = (np.exp(by_need - least_gain * needs[None, :]) * chance) @ (fits * factors).T
    score = covered + np.exp(by_cap - least_gain * caps[None, :]) * short[None, :]
    score *= np.exp(own_ctx)[:, None]
    score[ctxs[:, None] + caps[None, :] > pool] = -1.0
    if float(score.max()) < 0:
        return None
    c, k = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(ctxs[c]), int(caps[k])
