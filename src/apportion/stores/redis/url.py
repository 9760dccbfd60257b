"""The Redis store's URL: its own options read from the query, the rest left to redis-py."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from apportion.errors import InvalidArgument
from apportion.limits import excerpt
from apportion.redaction import redact, scrub

STORE_OPTIONS = (
    "prefix",
    "buckets",
    "retention_seconds",
    "fail_open",
    "emergency_cap",
    "open_grace_seconds",
    "clock_skew_seconds",
)
"""The query parameters the store reads itself (every other one goes to redis-py)."""


def split_url(url: object) -> tuple[str, dict[str, Any]]:
    """Split a store URL into the URL for redis-py and the store's options from its query.

    For example ``redis://cache:6379/0?fail_open=true&emergency_cap=20000`` gives
    ``("redis://cache:6379/0", {"fail_open": True, "emergency_cap": 20000})``.

    Raises:
        InvalidArgument: ``url`` is no string, has a port that is not a number, or an
            option that should be a number is not.
    """
    if not isinstance(url, str):
        raise InvalidArgument("url", url, "a Redis URL is a string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise InvalidArgument("url", redact(url), scrub(str(exc), url)) from None
    ours: dict[str, Any] = {}
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key in ("prefix",):
                ours[key] = value
            elif key in ("buckets", "emergency_cap"):
                ours[key] = int(value)
            elif key in ("retention_seconds", "open_grace_seconds", "clock_skew_seconds"):
                ours[key] = float(value)
            elif key == "fail_open":
                ours[key] = value.lower() in ("1", "true", "yes", "on")
            else:
                rest.append((key, value))
        except ValueError:
            raise InvalidArgument(
                key, value, f"not a number (in {excerpt(redact(url), 200)})"
            ) from None
    plain = urlunsplit(parts._replace(query=urlencode(rest))) if ours else url
    return plain, ours


TOPOLOGIES = {
    "redis": "standalone",
    "rediss": "standalone",
    "unix": "standalone",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
}
"""URL scheme -> the kind of deployment it names (``+cluster``: a Redis Cluster)."""


def topology_of(url: str) -> tuple[str, str]:
    """The deployment a store URL names, and the URL redis-py reads (its scheme plain).

    ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS) names a Redis Cluster,
    reached from that seed node; ``redis://``, ``rediss://`` and ``unix://`` one server.

    Any other scheme is left to redis-py (which refuses it).
    """
    scheme, sep, rest = url.partition("://")
    topology = TOPOLOGIES.get(scheme.lower()) if sep else None
    if topology != "cluster":
        return "standalone", url
    return topology, f"{scheme.lower().removesuffix('+cluster')}://{rest}"
