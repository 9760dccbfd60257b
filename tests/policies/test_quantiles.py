"""The need model's quantiles: NumPy's linear method, computed in one interpolation."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from apportion.policies.needs import quantiles


@given(
    st.lists(st.floats(0.01, 100.0), min_size=1, max_size=300),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=70),
)
def test_quantiles_are_numpys(values: list[float], spots: list[float]) -> None:
    data = np.array(values)
    got = quantiles(data, np.array(spots))
    assert np.allclose(got, np.quantile(data, spots), rtol=1e-12, atol=1e-12)
    assert np.allclose(quantiles(np.sort(data), spots, ordered=True), got, rtol=0, atol=0)
    assert abs(float(quantiles(data, 0.9)) - float(np.quantile(data, 0.9))) <= 1e-12 * 100
