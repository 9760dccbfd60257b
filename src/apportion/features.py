"""A request's features: what is known of it up front, and how a store keeps them.

The features given when a request opens (``Controller.request(ceiling, features)``) reach
every plan the policy makes for it, in the process that opened it and through every other
handle (a worker's ``attach``, the gateway's calls, each on a handle of its own): the
store keeps them with the request, as the note of its ``open`` event, a JSON object
(:func:`features_note`), and :meth:`Store.features <apportion.stores.base.Store.features>`
reads them back (:func:`features_from`).

A store keeps what JSON holds exactly: names (strings) to numbers, strings, booleans or
null (integers within 64 bits). The controller hands it those (:func:`storable`); any
other value (a list, an object) stays with the process that opened the request.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from apportion.errors import InvalidArgument
from apportion.limits import MAX_INTEGER, excerpt, is_text

MAX_FEATURES_TEXT = 65_536
"""Most characters of a request's features as a store keeps them (JSON text)."""

Scalar = str | int | float | bool | None

_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def check_request_features(features: object) -> dict[str, Any]:
    """Return a request's features as a new dict (``{}`` for ``None``).

    Raises:
        InvalidArgument: not a mapping, a name that is not a string, a float that is not
            finite.
    """
    if features is None:
        return {}
    if not isinstance(features, Mapping):
        raise InvalidArgument("features", features, "a mapping of feature names to values")
    for key, value in features.items():
        if type(key) is not str:
            raise InvalidArgument("features", key, "feature names are strings")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"features[{excerpt(key)}]", value, "features must be finite")
    return dict(features)


def _scalar(value: object) -> tuple[bool, Scalar]:
    """Whether ``value`` is a feature a store keeps, and it as JSON holds it."""
    if value is None or type(value) in (str, bool):
        return True, value  # type: ignore[return-value]
    if type(value) is int:
        return -MAX_INTEGER <= value <= MAX_INTEGER, value
    if type(value) is float:
        return math.isfinite(value), value
    if isinstance(value, str):
        return True, str(value)
    try:
        if isinstance(value, numbers.Integral):
            return _scalar(int(value))
        if isinstance(value, numbers.Real):
            return _scalar(float(value))
    except (ArithmeticError, TypeError, ValueError):  # a number no float holds
        pass
    return False, None


def storable(features: Mapping[str, Any]) -> dict[str, Scalar]:
    """The features of a request a store keeps (checked ones: :func:`check_request_features`).

    Numbers of other types (``numpy.int64``, ``fractions.Fraction``) become ``int`` or
    ``float``. Left out: a value that is no scalar, a name or string that is not valid
    text, and the features past :data:`MAX_FEATURES_TEXT` as JSON, in their order.
    """
    kept: dict[str, Scalar] = {}
    room = MAX_FEATURES_TEXT - 2  # the braces
    for key, value in features.items():
        ok, plain = _scalar(value)
        if ok and is_text(key) and (type(plain) is not str or is_text(plain)):
            room -= len(_encode({key: plain})) - 1  # its pair and a comma
            if room < -1:  # the last pair takes no comma
                break
            kept[key] = plain
    return kept


def features_note(features: object) -> str:
    """The note of a request's ``open`` event that keeps ``features`` (``""`` for none).

    Raises:
        InvalidArgument: not a mapping of names to numbers, strings, booleans or null
            (finite, within 64 bits, valid text), or longer than :data:`MAX_FEATURES_TEXT` as JSON.
    """
    if features is None:
        return ""
    if not isinstance(features, Mapping):
        raise InvalidArgument("features", features, "a mapping of feature names to values")
    if not features:
        return ""
    for key, value in features.items():
        if type(key) is not str or not is_text(key):
            raise InvalidArgument("features", key, "feature names are strings of valid text")
        ok, plain = _scalar(value)
        if not ok or plain is not value or (type(value) is str and not is_text(value)):
            reason = "a stored feature is a finite number, a string, a boolean or null"
            raise InvalidArgument(f"features[{excerpt(key)}]", value, reason)
    text = _encode(dict(features))
    if len(text) > MAX_FEATURES_TEXT:
        reason = f"longer than {MAX_FEATURES_TEXT:,} characters as JSON ({len(text):,})"
        raise InvalidArgument("features", f"{len(features)} features", reason)
    return text


def features_from(events: Sequence[Any]) -> dict[str, Any]:
    """The features a request opened with, from its events (its ``open`` event comes first).

    ``{}`` when it opened without any, or its events do not start with its ``open``.
    """
    if not events or events[0].kind != "open" or not events[0].note:
        return {}
    try:
        kept = json.loads(events[0].note)
    except ValueError:
        return {}
    return kept if isinstance(kept, dict) else {}
