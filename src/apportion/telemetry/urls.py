"""Telemetry database URLs: the forms accepted, and how they are shown.

Accepted forms (:func:`database_url` turns each into a SQLAlchemy URL):

- ``sqlite:///path/to/file.db`` (relative) or ``sqlite:////abs/path.db``; ``sqlite://``
  alone means ``sqlite:///apportion.db`` (a file in the working directory: telemetry in a
  private in-memory database would be lost);
- a plain path ending in ``.db``, ``.sqlite`` or ``.sqlite3``: that SQLite file;
- ``postgresql://user:password@host:5432/dbname`` (also ``postgres://``): PostgreSQL
  through psycopg 3; an explicit driver (``postgresql+psycopg2://``) is kept;
- any other SQLAlchemy URL, as is.

:func:`redact` (from :mod:`apportion.redaction`) hides the password, for every message that
names a URL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from apportion.errors import InvalidArgument
from apportion.redaction import redact

__all__ = ["DEFAULT_SQLITE", "database_url", "is_database_url", "redact", "scheme_of"]

DEFAULT_SQLITE: Final = "sqlite:///apportion.db"
"""The telemetry database used when only ``sqlite://`` is given."""

SQLITE_SUFFIXES: Final = (".db", ".sqlite", ".sqlite3")
"""Suffixes that make a plain path a SQLite file."""

DATABASE_SCHEMES: Final = ("sqlite", "postgresql", "postgres")
"""URL schemes (before any ``+driver``) the SQL sink takes."""

_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(url: str) -> str | None:
    """The scheme of ``url`` without its driver, ``sqlite`` for a SQLite path, or ``None``.

    ``postgresql+psycopg://...`` gives ``postgresql``.
    """
    match = _SCHEME.match(url)
    if match:
        return match.group(1).split("+", 1)[0].lower()
    if Path(url).suffix.lower() in SQLITE_SUFFIXES:
        return "sqlite"
    return None


def is_database_url(url: str) -> bool:
    """Whether ``url`` names a database the SQL sink can write (see the module docstring)."""
    return scheme_of(url) in DATABASE_SCHEMES


def database_url(url: str) -> str:
    """The SQLAlchemy URL for a telemetry database given in any accepted form.

    Raises:
        InvalidArgument: ``url`` is empty or not a string.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("url", redact(url), "a database URL is a non-empty string")
    url = url.strip()
    scheme = scheme_of(url)
    if not _SCHEME.match(url):
        if scheme == "sqlite":
            return f"sqlite:///{url}"
        return url
    head, rest = url.split("://", 1)
    if scheme == "sqlite" and rest == "":
        return DEFAULT_SQLITE
    if head.lower() in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url
