"""Learning windows, rolling curves and the recovery after a shift."""

from __future__ import annotations

import pytest

from apportion.sim.curves import learning_windows, ratio, recovery, rolling


def test_ratio_is_a_ratio_of_means() -> None:
    assert ratio([0.5, 1.0], [1.0, 1.0]) == 0.75
    assert ratio([0.0, 0.2], [0.0, 0.4]) == 0.5
    assert ratio([], []) == 0.0
    with pytest.raises(ValueError):
        ratio([1.0], [])


def test_learning_windows_clip_to_the_requests_there_are() -> None:
    values = [0.5] * 20 + [1.0] * 80
    figures = learning_windows(values, [1.0] * 100)
    assert figures["first_20"] == 0.5 and figures["first_20_size"] == 20
    assert figures["first_500"] == 0.9 and figures["first_500_size"] == 100
    assert figures["last_400"] == 0.9 and figures["last_400_size"] == 100
    long = learning_windows([0.5] * 600 + [1.0] * 400, [1.0] * 1000)
    assert long["last_400"] == 1.0 and long["first_500"] == 0.5


def test_rolling_windows() -> None:
    assert rolling([1, 1, 0, 0, 1], [1] * 5, 2) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        rolling([1], [1], 0)


def test_recovery_counts_requests_after_the_shift() -> None:
    values = [0.9] * 100 + [0.5] * 30 + [0.9] * 70
    result = recovery(values, [1.0] * 200, 100, width=20, tolerance=0.01)
    assert result["pre_shift"] == 0.9
    assert result["dip"] == 0.5
    # the first 20-request window after the shift that holds no 0.5 ends at request 50
    assert result["recovered_after"] == 50
    assert result["post_shift_last"] == 0.9


def test_recovery_that_never_comes() -> None:
    values = [0.9] * 100 + [0.6] * 100
    assert recovery(values, [1.0] * 200, 100, width=20)["recovered_after"] is None
    with pytest.raises(ValueError, match="each side"):
        recovery(values, [1.0] * 200, 10, width=20)
