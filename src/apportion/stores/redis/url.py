"""The Redis store's URL: its own options read from the query, the rest left to redis-py."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

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
        if "+sentinel" not in parts.scheme:  # a sentinel URL lists several host:port
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
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
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
    if topology not in ("cluster", "sentinel"):
        return "standalone", url
    plain = scheme.lower().removesuffix("+cluster").removesuffix("+sentinel")
    return topology, f"{plain}://{rest}"


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """The sentinels, the service name and the primary's connection options of a URL.

    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
    (``rediss+sentinel://``: TLS to the data nodes); the password is the data nodes'.

    Raises:
        InvalidArgument: no sentinel address, a port that is not a number, or no service.
    """
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(
                "url", redact(url), "a sentinel URL lists host:port pairs, comma-separated"
            )
        sentinels.append((host.strip("[]"), int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise InvalidArgument(
            "url", redact(url), "a sentinel URL names its service: .../service_name[/db]"
        )
    options: dict[str, Any] = {"db": int(path[1]) if len(path) == 2 else 0}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if colon:
            options["password"] = unquote(password)
    if parts.scheme.startswith("rediss"):
        options["ssl"] = True
    return sentinels, path[0], options
