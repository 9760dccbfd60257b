"""The first, direct forms of :func:`choose_call` and :func:`pool_values`, kept as references.

The shipped forms compute the same quantities with fewer operations (see their
docstrings); the tests check that they choose what these would, up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from apportion.policies.tradeoff import (
    _CONTEXT_FRACTIONS,
    _POOL_POINTS,
    _SAMPLES,
    _TAIL,
    _TAIL_CHANCE,
    OUTPUT_RATIOS,
    Call,
    Curve,
    _factors,
    _fill,
    _segments,
)


def pool_values(
    curves: Sequence[Curve], pools: np.ndarray, *, least_gain: float = 0.0
) -> np.ndarray:
    """What :func:`~apportion.policies.tradeoff.divide` reaches with each pool, one by one."""
    first, value, segments = _segments(curves, least_gain)
    return np.array([_fill(first, value, segments, float(p))[1] for p in pools])


def scores(
    call: Call, pool: float, after: Sequence[Curve], *, least_gain: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(ctxs, caps, expected outcome per (ctx, cap))`` as first written (-1: no fit)."""
    most = pool if call.most is None else min(call.most, pool)
    if most < call.least or pool < 1:
        return None
    predicted = max(call.predicted, 1.0)
    spots = (np.arange(_SAMPLES) + 0.5) / _SAMPLES
    needs = np.maximum(np.quantile(call.ratios, spots) * predicted, 1.0)
    needs = np.concatenate([needs, _TAIL * float(needs.max())])
    chance = np.concatenate([np.ones(_SAMPLES), _TAIL_CHANCE])
    chance /= chance.sum()
    caps = np.unique(
        np.round(np.clip(np.concatenate([needs, OUTPUT_RATIOS * predicted]), call.least, most))
    )
    need_in = max(call.input_need, 1.0)
    ctxs = np.unique(np.clip(np.round(np.append(_CONTEXT_FRACTIONS * need_in, 1)), 1, need_in))
    own_in = call.input_weight * np.log(ctxs / need_in)
    with np.errstate(divide="ignore"):
        own_out = np.log(_factors(call.kind, caps, needs, call.output_weight, call.readers))
    used = np.minimum(needs[None, :], caps[:, None])
    grid = np.linspace(0.0, pool, _POOL_POINTS)
    later = np.interp(
        pool - ctxs[:, None, None] - used[None],
        grid,
        pool_values(after, grid, least_gain=least_gain),
    )
    total = own_in[:, None, None] + own_out[None] + later
    total -= least_gain * (ctxs[:, None, None] + used[None])
    score = np.exp(total) @ chance
    score[ctxs[:, None] + caps[None, :] > pool] = -1.0
    return ctxs, caps, score


def choose_call(
    call: Call, pool: float, after: Sequence[Curve], *, least_gain: float = 0.0
) -> tuple[int, int] | None:
    """The best ``(ctx, cap)`` of :func:`scores`, as first written."""
    found = scores(call, pool, after, least_gain=least_gain)
    if found is None:
        return None
    ctxs, caps, score = found
    if float(score.max()) < 0:
        return None
    c, k = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(ctxs[c]), int(caps[k])
