"""The few statistics the reports need, with their definitions written down.

- :func:`percentile`: linear interpolation between closest ranks (NumPy's default, the
  "type 7" of Hyndman and Fan): for sorted values ``x[0..n-1]``, the ``q``-th percentile
  is at rank ``h = (n - 1) * q / 100``, that is ``x[floor(h)] + (h - floor(h)) *
  (x[floor(h) + 1] - x[floor(h)])``.
- :func:`mean_ci`: the mean with a two-sided 95% Student-t interval, ``mean +/- t(0.975,
  n - 1) * s / sqrt(n)`` with ``s`` the sample standard deviation (``n - 1`` in the
  denominator); no interval below two values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, NamedTuple

__all__ = [
    "MeanCI",
    "mean_ci",
    "mean_ci_of_sums",
    "percentile",
    "percentile_of_counts",
    "t_quantile_975",
]

# t(0.975, df) for df = 1..30; above that the Cornish-Fisher expansion is accurate to 1e-4.
_T975: Final = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975: Final = 1.959963984540054


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside 0..100.
    """
    if not values:
        raise ValueError("the percentile of no values is undefined")
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def percentile_of_counts(counts: Sequence[tuple[float, int]], q: float) -> float:
    """:func:`percentile` of values given as ``(value, how many)`` pairs in value order.

    The same interpolation, without spelling out every value: with all counts 1 it is
    :func:`percentile` of the values.

    Raises:
        ValueError: no values, or ``q`` outside 0..100.
    """
    n = sum(count for _, count in counts)
    if n <= 0:
        raise ValueError("the percentile of no values is undefined")
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, not {q}")
    rank = (n - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    at_low = at_high = None
    seen = 0
    for value, count in counts:
        seen += count
        if at_low is None and low < seen:
            at_low = value
        if high < seen:
            at_high = value
            break
    assert at_low is not None and at_high is not None
    return at_low + (rank - low) * (at_high - at_low)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


class MeanCI(NamedTuple):
    """A mean with its 95% interval and sample size.

    Attributes:
        mean: the mean (``None`` for no values).
        low: the interval's lower end (``None`` below two values).
        high: the interval's upper end (``None`` below two values).
        n: the number of values.
    """

    mean: float | None
    low: float | None
    high: float | None
    n: int


def mean_ci(values: Sequence[float]) -> MeanCI:
    """The mean of ``values`` with a 95% Student-t interval (see the module docstring)."""
    n = len(values)
    if n == 0:
        return MeanCI(None, None, None, 0)
    mean = math.fsum(values) / n
    if n == 1:
        return MeanCI(mean, None, None, 1)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = t_quantile_975(n - 1) * math.sqrt(variance / n)
    return MeanCI(mean, mean - half, mean + half, n)


def mean_ci_of_sums(n: int, total: float, squares: float) -> MeanCI:
    """:func:`mean_ci` from the number of values, their sum and their sum of squares.

    What a database can add up (and rollups can merge); the variance is ``(squares -
    total**2 / n) / (n - 1)``, so it may differ from :func:`mean_ci`'s in the last
    digits (by rounding, about ``1e-12`` relative for scores between 0 and 1).
    """
    if n <= 0:
        return MeanCI(None, None, None, 0)
    mean = total / n
    if n == 1:
        return MeanCI(mean, None, None, 1)
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    half = t_quantile_975(n - 1) * math.sqrt(variance / n)
    return MeanCI(mean, mean - half, mean + half, n)
