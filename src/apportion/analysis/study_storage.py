"""Where an allocation search keeps its Optuna study, so many workers can share it.

:func:`open_study_storage` turns a URL into an Optuna storage:

- ``sqlite:///search.db``, ``postgresql://user:password@host/db``, ``mysql://...``:
  Optuna's RDB storage (SQLAlchemy; PostgreSQL needs the ``postgres`` extra's driver);
- ``journal:///path/search.log`` (or ``journal://search.log``, relative): Optuna's
  journal file storage, an append-only log many processes on one file system can share
  (no database needed).

Workers on any machine that open the same storage and study name add their trials to one
study (see :func:`apportion.analysis.optimize.optimize`). A URL that is not one of these,
or a storage that cannot be reached, raises
:class:`~apportion.errors.StudyUnavailable`, its password hidden.
"""

from __future__ import annotations

import time
from typing import Any, Final

from apportion.errors import MissingExtra, StudyUnavailable
from apportion.redaction import redact, scrub

__all__ = ["SCHEMES", "open_study_storage"]

SCHEMES: Final = ("sqlite", "postgresql", "postgres", "mysql", "journal")
"""The URL schemes a study storage may have (before any ``+driver``)."""


def open_study_storage(url: str) -> Any:
    """An Optuna storage for ``url`` (see the module docstring).

    Raises:
        StudyUnavailable: not a storage URL, or the storage cannot be reached.
        MissingExtra: Optuna (extra ``optimize``) or the database driver is missing.
    """
    if not isinstance(url, str) or "://" not in url:
        raise StudyUnavailable(
            redact(url), "give a URL: sqlite:///FILE, postgresql://..., journal:///FILE"
        )
    shown = redact(url)
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise StudyUnavailable(shown, f"unknown scheme {scheme!r}; known: {known}")
    try:
        import optuna
    except ImportError as exc:
        raise MissingExtra("optuna", "optimize") from exc
    if scheme == "journal":
        return _journal(url, shown, optuna)
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    for attempt in range(_CREATE_TRIES):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        except ModuleNotFoundError as exc:
            raise MissingExtra(exc.name or "the database driver", "postgres") from None
        except Exception as exc:  # SQLAlchemy's errors: unreachable, refused, malformed
            if attempt + 1 < _CREATE_TRIES and _creation_race(exc):
                time.sleep(0.1 * (attempt + 1))  # another worker is creating the tables
                continue
            raise StudyUnavailable(shown, _reason(exc, url)) from None
    raise AssertionError("unreachable")  # pragma: no cover


_CREATE_TRIES: Final = 5


def _creation_race(exc: BaseException) -> bool:
    """Whether ``exc`` is two workers creating the storage's tables at once."""
    text = str(exc).lower()
    return type(exc).__name__ == "IntegrityError" or "already exists" in text or "locked" in text


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql+psycopg"):
        return {"connect_args": {"connect_timeout": 5}}
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {}


def _journal(url: str, shown: str, optuna: Any) -> Any:
    path = url.split("://", 1)[1]
    if not path:
        raise StudyUnavailable(shown, "give the journal file: journal:///path/search.log")
    journal = optuna.storages.journal if hasattr(optuna.storages, "journal") else None
    backend = getattr(journal, "JournalFileBackend", None) or getattr(
        optuna.storages, "JournalFileStorage", None
    )
    if backend is None:  # pragma: no cover - every Optuna since 3.1 has one of them
        raise StudyUnavailable(shown, "this Optuna has no journal file storage")
    try:
        return optuna.storages.JournalStorage(backend(path))
    except OSError as exc:
        raise StudyUnavailable(shown, scrub(f"{type(exc).__name__}: {exc}", url)) from None


def _reason(exc: BaseException, url: str) -> str:
    """The first line of the driver's error, any secret of ``url`` hidden."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    text = lines[0][:500] if lines else type(orig).__name__
    return scrub(f"{type(orig).__name__}: {text}", url)
