"""Bounds on what apportion reads, and how much of a bad value an error shows.

Input files come from anywhere: every loader refuses what is out of these bounds with an
:class:`~apportion.errors.ApportionError` instead of running out of time, memory or range,
and quotes a wrong value with :func:`excerpt`, so an error stays one short line whatever
the file held.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "EXCERPT",
    "MAX_DEPTH",
    "MAX_INTEGER",
    "MAX_TOKENS",
    "excerpt",
    "is_text",
    "listing",
    "printable",
]

MAX_TOKENS = 10**12
"""Largest token count accepted anywhere (a trillion tokens); anything above is an error."""

MAX_INTEGER = 2**63 - 1
"""Largest magnitude of an integer in an input file (what a 64-bit column holds)."""

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings in an input file."""

EXCERPT = 40
"""Most characters of an input value an error message quotes."""


def printable(text: str) -> str:
    r"""``text`` with lone surrogates (undecodable bytes, bad escapes) as ``\udcxx``.

    Such text cannot be written to a UTF-8 terminal or database; the escape can.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """``repr(value)``, cut to about ``limit`` characters with an ellipsis, printable; never raises.

    Strings keep their quotes, so the reader sees where the value starts; a cut one shows
    how long it was.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        digits = value.bit_length() * 30103 // 100000  # log10(2): no str() of a huge int
        return f"{'-' if value < 0 else ''}an integer of about {digits:,} digits"
    if isinstance(value, str) and len(value) > limit:
        return printable(repr(value[:limit]))[:-1] + f"...' ({len(value):,} characters)"
    try:
        text = printable(repr(value))
    except Exception:  # a broken __repr__ must not break the error that quotes it
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def listing(names: Iterable[object], limit: int = 5) -> str:
    """``a, b, c``: at most ``limit`` names (each an excerpt), then how many more."""
    items = list(names)
    shown = [
        printable(n) if isinstance(n, str) and len(n) <= EXCERPT else excerpt(n)
        for n in items[:limit]
    ]
    more = len(items) - limit
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (no lone surrogate): storable anywhere."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
