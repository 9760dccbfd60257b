"""Errors of telemetry sinks, telemetry databases and the files ingested into them.

Every one derives from :class:`~apportion.errors.ApportionError` and carries its details
as fields. A database URL in a message or a field never shows its password.
"""

from __future__ import annotations

from collections.abc import Iterable

from apportion.errors import ApportionError

__all__ = ["DatabaseUnavailable", "SchemaVersionError", "UnknownSink"]


class UnknownSink(ApportionError, LookupError):
    """A telemetry URL has a scheme no sink is registered for, or is not a URL at all.

    Attributes:
        url: the URL given (password hidden).
        known: the registered schemes.
    """

    url: str
    known: list[str]

    def __init__(self, url: str, known: Iterable[str], reason: str = "") -> None:
        known_list = sorted(known)
        why = f": {reason}" if reason else ""
        super().__init__(
            f"no telemetry sink for {url!r}{why}; known schemes: "
            + ", ".join(f"{s}://" for s in known_list)
            + ", or a sink object",
            url=url,
            known=known_list,
        )


class DatabaseUnavailable(ApportionError, ConnectionError):
    """A telemetry database cannot be reached or opened.

    Attributes:
        url: the database URL, its password hidden.
        reason: why (the driver's message, first line).
    """

    url: str
    reason: str

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot open database {url}: {reason}", url=url, reason=reason)


class SchemaVersionError(ApportionError, RuntimeError):
    """Telemetry written by a newer apportion: this one refuses to read or add to it.

    Attributes:
        found: the schema version of the data.
        supported: the newest schema version this apportion knows.
        where: the database URL (password hidden) or the file it came from.
    """

    found: int
    supported: int
    where: str

    def __init__(self, found: int, supported: int, where: str) -> None:
        super().__init__(
            f"{where} holds telemetry of schema version {found}; this apportion reads "
            f"versions up to {supported}: upgrade apportion to use it",
            found=found,
            supported=supported,
            where=where,
        )
