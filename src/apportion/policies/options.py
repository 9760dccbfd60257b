"""Checking the options a policy is made with."""

from __future__ import annotations

from apportion.errors import PolicyConfigError
from apportion.limits import excerpt

__all__ = ["number_option"]


def number_option(name: str, value: object, low: float, high: float) -> float:
    """``value`` as a float when it is a number (not a bool) in ``[low, high]``.

    Raises:
        PolicyConfigError: otherwise; its fields name the option and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise PolicyConfigError(
            f"{name} must be a number between {_shown(low)} and {_shown(high)}, "
            f"not {excerpt(value)}",
            **{name: value},
        )
    return float(value)


def _shown(bound: float) -> str:
    return f"{bound:,.0f}" if bound == int(bound) else repr(bound)
