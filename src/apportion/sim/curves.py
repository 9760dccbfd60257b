"""Quality-over-oracle curves of a policy that learns, and its recovery after a shift.

Every figure here is a ratio of means over a window of requests: the policy's mean
quality over the oracle's mean quality on the same requests (as ``quality_vs_oracle`` of
the bench), never a mean of per-request ratios (a request the oracle itself scores near 0
would weigh without bound).

- :func:`learning_windows`: the first 20, the first 500 and the last 400 requests (the
  windows of issue 21), each clipped to the requests there are and reported with its size.
- :func:`rolling`: the curve as consecutive windows of ``width`` requests.
- :func:`recovery`: after a shift at request ``at``, how many requests until the rolling
  mean (over post-shift requests only, so no window mixes the two traffics) is back
  within ``tolerance`` of its level over the ``width`` requests before the shift.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["LEARNING_WINDOWS", "learning_windows", "ratio", "recovery", "rolling"]

LEARNING_WINDOWS: Final[dict[str, tuple[str, int]]] = {
    "first_20": ("first", 20),
    "first_500": ("first", 500),
    "last_400": ("last", 400),
}
"""Window name -> (which end, size in requests)."""


def ratio(values: Sequence[float], best: Sequence[float]) -> float:
    """Mean of ``values`` over mean of ``best`` (0 when empty or when ``best`` sums to 0).

    Raises:
        ValueError: the two differ in length.
    """
    if len(values) != len(best):
        raise ValueError(f"{len(values)} qualities but {len(best)} oracle qualities")
    if not values:
        return 0.0
    reference = statistics.fmean(best)
    return round(statistics.fmean(values) / reference, 4) if reference else 0.0


def learning_windows(values: Sequence[float], best: Sequence[float]) -> dict[str, Any]:
    """Quality over the oracle's on each of :data:`LEARNING_WINDOWS`, with window sizes."""
    count = len(values)
    figures: dict[str, Any] = {"requests": count}
    for name, (end, size) in LEARNING_WINDOWS.items():
        size = min(size, count)
        window = slice(0, size) if end == "first" else slice(count - size, count)
        figures[name] = ratio(values[window], best[window])
        figures[f"{name}_size"] = size
    return figures


def rolling(values: Sequence[float], best: Sequence[float], width: int) -> list[float]:
    """Quality over the oracle's on consecutive windows of ``width`` requests (last may be short).

    Raises:
        ValueError: ``width`` is below 1, or the sequences differ in length.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if len(values) != len(best):
        raise ValueError(f"{len(values)} qualities but {len(best)} oracle qualities")
    return [
        ratio(values[start : start + width], best[start : start + width])
        for start in range(0, len(values), width)
    ]


def recovery(
    values: Sequence[float],
    best: Sequence[float],
    at: int,
    *,
    width: int = 50,
    tolerance: float = 0.02,
) -> dict[str, Any]:
    """How a policy's quality over the oracle's recovers after a shift at request ``at``.

    Args:
        values: the policy's quality per request.
        best: the oracle's quality per request.
        at: the first request of the new traffic.
        width: the rolling window, in requests.
        tolerance: how close to the pre-shift level counts as recovered.

    Returns:
        ``pre_shift`` (the level over the ``width`` requests before ``at``), ``dip`` (the
        lowest post-shift window), ``recovered_after`` (requests after the shift until the
        first window ending there is within ``tolerance`` of ``pre_shift``: at least
        ``width``; ``None`` if never), ``post_shift_last`` (the last ``width`` requests),
        ``width`` and ``tolerance``.

    Raises:
        ValueError: ``at`` leaves fewer than ``width`` requests on either side.
    """
    count = len(values)
    if len(best) != count:
        raise ValueError(f"{count} qualities but {len(best)} oracle qualities")
    if width < 1 or at < width or count - at < width:
        raise ValueError(f"a shift at {at} of {count} requests needs {width} requests on each side")
    pre = ratio(values[at - width : at], best[at - width : at])
    windows = [
        (end - at, ratio(values[end - width : end], best[end - width : end]))
        for end in range(at + width, count + 1)
    ]
    recovered = next((n for n, level in windows if level >= pre - tolerance), None)
    return {
        "pre_shift": pre,
        "dip": min(level for _, level in windows),
        "recovered_after": recovered,
        "post_shift_last": windows[-1][1],
        "width": width,
        "tolerance": tolerance,
    }
