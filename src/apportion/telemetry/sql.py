"""Telemetry in a SQL database through SQLAlchemy: SQLite by default, PostgreSQL by URL.

Tables (all prefixed ``apportion_`` so they can share a database):

- ``apportion_meta``: ``key``/``value`` pairs; ``schema_version`` is the version of the
  tables (:data:`~apportion.telemetry.records.SCHEMA_VERSION`). A database of a newer
  version is refused, for reading and for writing, with :class:`SchemaVersionError`.
- ``apportion_requests``: one row per request (id, pipeline, ceiling, consumed, overflow,
  status, outcome, features as JSON, opened/closed at, source, schema version).
- ``apportion_calls``: one row per grant (request id, grant id, pipeline, agent, priority,
  granted context/output, used input/output, truncated, input cut, dropped tokens,
  over-use, extensions, how it was settled, model, cost, estimated, finish reason,
  began/settled at, and since version 3 its status: ``completed``, ``wrapped_up``, ``cut``
  ...). Requests carry, since version 3, their refused begins per agent (JSON) and
  their place in a request tree: ``parent_id``, ``root_id`` (both indexed) and ``depth``.
  A version-2 database is read as it is (no status, no refusals, flat requests) and the
  first writer adds the columns (``ALTER TABLE ... ADD COLUMN``) and their indexes and
  records the current version. Since version 4 a call carries its agent ``kind`` (the
  kind that budgeted a name not listed in the pipeline; ``NULL`` for a listed agent), and
  a request the kinds of its refused agents (``refused_kinds``, JSON ``{agent: kind}``);
  a version-3 (or older) database reads with no kinds, and its first writer adds the two
  columns in place the same way.
- ``apportion_daily`` (since schema version 5): the daily rollups per agent
  (:mod:`apportion.telemetry.rollups`), kept by every write in the transaction that
  writes the records; the first writer of an older database adds the table and builds
  them from its raw rows (in the same transaction as the upgrade).
  :meth:`Database.prune` deletes raw rows older than a day and keeps the rollups
  (``apportion_meta`` key ``pruned_before`` records up to when).
- ``apportion_events``: the ledger's events, in order (``open``, ``begin``, ``extend``,
  ``finish``, ``release``, ``expire``, ``close``).
- ``apportion_rollout_events`` (since schema version 2): the decisions of progressive
  rollouts (:class:`~apportion.telemetry.records.RolloutRecord`), in the order written.
  A version-1 database is read as it is (no rollouts); the first writer adds the table
  and records version 2.

A request written again (same id: an ingest run twice) replaces its earlier rows. Times
are the controller's clock (seconds since the epoch by default).

Text a database cannot hold is stored with a visible stand-in, so no record is lost for
it: a NUL character (PostgreSQL's text cannot hold one) as ``\u2400`` (␀), a lone
surrogate (no UTF-8 database can hold one) as ``\ufffd`` (:func:`storable`); features,
stored as JSON, keep them exactly.

:class:`SQLSink` writes records (from the telemetry worker thread, or directly when
ingesting; :meth:`Database.append` in bulk); :func:`open_database` opens a database for
reading, and :meth:`Database.load` reads the calls and requests of a period back (the
report aggregates in the database instead: :mod:`apportion.analysis.window_report`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from apportion.errors import (
    DatabaseUnavailable,
    InvalidArgument,
    MissingExtra,
    RecordsRejected,
    SchemaVersionError,
)
from apportion.ledger import Event
from apportion.limits import excerpt
from apportion.redaction import redact, scrub
from apportion.telemetry.base import Sink
from apportion.telemetry.records import (
    SCHEMA_VERSION,
    CallUsage,
    RequestUsage,
    RolloutRecord,
    root_of,
)
from apportion.telemetry.rollups import DAY, Rollup, upsert
from apportion.telemetry.urls import database_url

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Table

__all__ = ["Database", "Dataset", "Pruned", "SQLSink", "open_database"]

PRUNED_KEY: Final = "pruned_before"
"""The ``apportion_meta`` key of the clock time raw rows were pruned before."""

LOSS_PREFIX: Final = "lost:"
"""The ``apportion_meta`` keys of what each writer lost (:meth:`Database.record_losses`)."""

LOSS_COUNTS: Final = ("dropped_full", "dropped_failed", "discarded")
"""What a writer's loss is made of: the oldest dropped past its buffer's bound, refused
records, records given up on."""

CONNECT_TIMEOUT: Final = 5
"""Seconds to wait for a database server to answer before giving up."""

_CHUNK: Final = 500


class _Tables(NamedTuple):
    meta: Table
    requests: Table
    calls: Table
    events: Table
    rollouts: Table
    daily: Table


@functools.cache
def _tables() -> _Tables:
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        Float,
        Index,
        Integer,
        MetaData,
        String,
        Table,
        Text,
        func,
    )

    md = MetaData()
    meta = Table(
        "apportion_meta",
        md,
        Column("key", String(64), primary_key=True),
        Column("value", Text, nullable=False),
    )
    requests = Table(
        "apportion_requests",
        md,
        Column("request_id", String, primary_key=True),
        Column("pipeline", String, nullable=False),
        Column("source", String, nullable=False),
        Column("schema_version", Integer, nullable=False),
        Column("ceiling", BigInteger),
        Column("consumed", BigInteger),
        Column("overflow", BigInteger, nullable=False, default=0),
        Column("status", String, nullable=False),
        Column("outcome", Float),
        Column("features", Text, nullable=False),
        Column("opened_at", Float),
        Column("closed_at", Float),
        Column("refused", Text),  # since version 3: JSON {agent: begins refused}
        Column("parent_id", String),  # since version 3: the request tree
        Column("root_id", String),
        Column("depth", Integer),
        Column("refused_kinds", Text),  # since version 4: JSON {agent: its kind}
        Index("ix_apportion_requests_closed_at", "closed_at"),
        Index("ix_apportion_requests_parent_id", "parent_id"),
        Index("ix_apportion_requests_root_id", "root_id"),
    )
    calls = Table(
        "apportion_calls",
        md,
        Column("request_id", String, primary_key=True),
        Column("grant_id", Integer, primary_key=True),
        Column("pipeline", String, nullable=False),
        Column("agent", String, nullable=False),
        Column("priority", String),
        Column("granted_context", BigInteger),
        Column("granted_output", BigInteger),
        Column("used_input", BigInteger),
        Column("used_output", BigInteger),
        Column("truncated", Boolean),
        Column("input_cut", Boolean),
        Column("dropped_tokens", BigInteger),
        Column("overuse", BigInteger, nullable=False, default=0),
        Column("extensions", Integer, nullable=False, default=0),
        Column("settled", String, nullable=False),
        Column("model", String),
        Column("cost_usd", Float),
        Column("estimated", Boolean),
        Column("finish_reason", String),
        Column("began_at", Float),
        Column("at", Float),
        Column("status", String),  # since version 3
        Column("kind", String),  # since version 4: the agent kind, NULL for a listed agent
        Index("ix_apportion_calls_agent", "agent"),
        Index("ix_apportion_calls_at", "at"),
    )
    events = Table(
        "apportion_events",
        md,
        Column("request_id", String, primary_key=True),
        Column("seq", Integer, primary_key=True),
        Column("kind", String, nullable=False),
        Column("at", Float, nullable=False),
        Column("agent", String),
        Column("grant_id", Integer, nullable=False),
        Column("context_tokens", BigInteger, nullable=False),
        Column("output_tokens", BigInteger, nullable=False),
        Column("truncated", Boolean, nullable=False),
        Column("overuse", BigInteger, nullable=False),
        Column("note", String, nullable=False),
    )
    rollouts = Table(
        "apportion_rollout_events",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("rollout", String, nullable=False),
        Column("candidate", String, nullable=False),
        Column("baseline", String, nullable=False),
        Column("kind", String, nullable=False),
        Column("share", Float, nullable=False),
        Column("reason", Text, nullable=False),
        Column("seen", BigInteger, nullable=False),
        Column("candidate_mean", Float),
        Column("baseline_mean", Float),
        Column("lower_bound", Float),
        Column("upper_bound", Float),
        Column("at", Float),
        Column("schema_version", Integer, nullable=False),
        Index("ix_apportion_rollout_events_at", "at"),
    )
    # since version 5: a report's window (the time of a call or request, as it is read)
    Index("ix_apportion_calls_time", func.coalesce(calls.c.at, calls.c.began_at))
    Index(
        "ix_apportion_requests_time",
        func.coalesce(requests.c.closed_at, requests.c.opened_at),
    )
    daily = Table(
        "apportion_daily",
        md,
        Column("day", Integer, primary_key=True),
        Column("pipeline", String, primary_key=True),
        Column("agent", String, primary_key=True),
        Column("kind", String, primary_key=True),
        Column("measure", String, primary_key=True),
        Column("key", String, primary_key=True),
        Column("count", BigInteger, nullable=False, default=0),
        Column("total", Float, nullable=False, default=0.0),
        Column("total2", Float, nullable=False, default=0.0),
        Column("top", BigInteger),
    )
    return _Tables(meta, requests, calls, events, rollouts, daily)


def _require_sqlalchemy() -> None:
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        raise MissingExtra("sqlalchemy", "sql") from None


def _unreachable(exc: BaseException) -> bool:
    """Whether a SQLAlchemy error says the database cannot be reached (not a record's data).

    A lost or refused connection, a timeout, a locked SQLite file: the batch is kept and
    written again. Any other error (a constraint, a value the column cannot hold) is the
    data's: the batch is written record by record and only the refused ones are lost.
    """
    from sqlalchemy.exc import (
        DBAPIError,
        DisconnectionError,
        InterfaceError,
        OperationalError,
    )
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout)


def _record_errors() -> tuple[type[BaseException], ...]:
    """Errors a record's data causes while its rows are built or written (not SQLAlchemy's)."""
    return (*_data_errors(), ValueError, TypeError)


def _data_errors() -> tuple[type[BaseException], ...]:
    """Errors that a record's data causes (not the database): SQLAlchemy's and the driver's."""
    try:
        from sqlalchemy.exc import DataError
    except ImportError:  # pragma: no cover - the sink needs SQLAlchemy anyway
        return (OverflowError, UnicodeError)
    return (DataError, OverflowError, UnicodeError)


def _create_engine(url: str) -> Engine:
    """An engine for a normalised URL; the driver's absence names the extra."""
    _require_sqlalchemy()
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args = {"timeout": 30, "check_same_thread": False}
    elif url.startswith("postgresql+psycopg"):
        connect_args = {"connect_timeout": CONNECT_TIMEOUT}
    try:
        return create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise MissingExtra(exc.name or "the database driver", "postgres") from None
    except (ArgumentError, NoSuchModuleError) as exc:
        reason = f"not a database URL SQLAlchemy knows: {str(exc)[:300]}"
        raise DatabaseUnavailable(redact(url), scrub(reason, url)) from None


def _reason(exc: BaseException, url: str) -> str:
    """The first line of a driver's error, any secret of ``url`` in it hidden."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return scrub(lines[0][:500] if lines else type(orig).__name__, url)


@dataclass(frozen=True)
class Dataset:
    """Calls and requests read back from a telemetry database.

    Attributes:
        url: where they were read from (password hidden).
        calls: the calls, ordered by request and grant.
        requests: the requests by id (their ``calls`` and ``events`` left empty).
        empty: the database holds no telemetry at all (not only none in the period).
        rollouts: the rollout decisions in the period, in the order written (rollouts
            are not filtered by pipeline).
    """

    url: str
    calls: tuple[CallUsage, ...]
    requests: Mapping[str, RequestUsage]
    empty: bool = False
    rollouts: tuple[RolloutRecord, ...] = ()


class Pruned(NamedTuple):
    """What :meth:`Database.prune` deleted.

    Attributes:
        before: the rows older than this clock time (a UTC midnight) were deleted.
        calls: calls deleted.
        requests: requests deleted.
        events: ledger events deleted (those of the requests deleted).
    """

    before: float
    calls: int
    requests: int
    events: int


class Database:
    """An open telemetry database.

    Use :func:`open_database` to open one for reading; :class:`SQLSink` opens its own.

    Args:
        url: the database, in any form :func:`~apportion.telemetry.urls.database_url`
            accepts.
        create: create the tables when they are missing (writers); readers leave an
            empty database as it is, and a missing SQLite file is an error.

    Raises:
        MissingExtra: SQLAlchemy or the database driver is not installed.
        DatabaseUnavailable: the database cannot be reached; the message names the URL
            without its password.
        SchemaVersionError: the database was written by a newer apportion.
    """

    def __init__(self, url: str, *, create: bool = False) -> None:
        self.url = database_url(url)
        # Shown as the user wrote it (without the driver we add), unless it was a bare path.
        self.shown = redact(url.strip() if "://" in url else self.url)
        if self.url.startswith("sqlite:///") and not create:
            path = self.url[len("sqlite:///") :].split("?", 1)[0]
            if path and path != ":memory:" and not Path(path).is_file():
                raise DatabaseUnavailable(self.shown, f"no such file: {path}")
        self.engine = _create_engine(self.url)
        self.tables = _tables()
        self.version: int | None = None
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine.begin() as conn:
                self.version = self._check(conn, create)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from None
        except BaseException:
            self.engine.dispose()
            raise

    def _check(self, conn: Connection, create: bool) -> int | None:
        from sqlalchemy import inspect, select

        meta = self.tables.meta
        if not inspect(conn).has_table(meta.name):
            if not create:
                return None
            meta.metadata.create_all(conn)
            conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return SCHEMA_VERSION
        value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        try:
            version = int(value) if value is not None else None
        except ValueError:
            raise DatabaseUnavailable(
                self.shown, f"its schema_version is not a number: {value!r}"
            ) from None
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(version, SCHEMA_VERSION, self.shown)
        if create:
            meta.metadata.create_all(conn)  # checkfirst: adds what an older writer lacked
            if version is None:
                conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                version = SCHEMA_VERSION
            elif version < SCHEMA_VERSION:  # the tables it lacked were just added
                _add_columns(conn, (self.tables.calls, self.tables.requests))
                _add_indexes(conn, (self.tables.calls, self.tables.requests))
                if version < 5:  # no rollups yet: build them from the raw rows
                    self._rebuild_rollups(conn)
                conn.execute(
                    meta.update()
                    .where(meta.c.key == "schema_version")
                    .values(value=str(SCHEMA_VERSION))
                )
                version = SCHEMA_VERSION
        return version

    def close(self) -> None:
        """Release the database's connections."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writing

    def write(self, batch: Iterable[RequestUsage]) -> int:
        """Write requests with their calls and events, replacing rows of the same ids.

        Returns:
            The number of requests written.

        Raises:
            SchemaVersionError: a record is of a newer schema version.
        """
        latest: dict[str, RequestUsage] = {}
        for record in batch:
            if record.schema_version > SCHEMA_VERSION:
                raise SchemaVersionError(record.schema_version, SCHEMA_VERSION, record.source)
            latest[storable(record.request_id)] = record
        if not latest:
            return 0
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self._replace(latest)
        except SQLAlchemyError as exc:
            if _unreachable(exc):
                raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from exc
            return self._replace_each(latest)  # some record's data: store the others
        except _record_errors():
            return self._replace_each(latest)
        return len(latest)

    def append(self, batch: Sequence[RequestUsage]) -> int:
        """Write requests known to be new, in bulk (``COPY`` on PostgreSQL), in one transaction.

        For loading many records at once (a benchmark, an import): unlike :meth:`write`,
        rows of the same ids are not looked for (a request already stored is refused by
        its key, and the whole batch with it); events are not written. The daily rollups
        are kept as :meth:`write` keeps them.

        Returns:
            The number of requests written.

        Raises:
            SchemaVersionError: a record is of a newer schema version.
            DatabaseUnavailable: the database refused the batch.
        """
        for record in batch:
            if record.schema_version > SCHEMA_VERSION:
                raise SchemaVersionError(record.schema_version, SCHEMA_VERSION, record.source)
        if not batch:
            return 0
        from sqlalchemy.exc import SQLAlchemyError

        t = self.tables
        requests = [_request_row(r) for r in batch]
        calls = [_call_row(r, c) for r in batch for c in r.calls]
        rollup = Rollup(storable)
        for record in batch:
            rollup.add(record)
        refused: tuple[type[BaseException], ...] = (SQLAlchemyError, *_data_errors())
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    _copy(conn, t.requests, requests)
                    _copy(conn, t.calls, calls)
                else:
                    conn.execute(t.requests.insert(), requests)
                    if calls:
                        conn.execute(t.calls.insert(), calls)
                upsert(conn, t.daily, rollup.rows())
        except refused as exc:
            raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from exc
        return len(batch)

    def prune(self, before: float) -> Pruned:
        """Delete the raw rows older than the UTC day of ``before``; keep the rollups.

        Calls settled (else begun) and requests closed (else opened) before the midnight
        (UTC) that starts the day of ``before`` are deleted with their events, in one
        transaction; rows without a time are kept. Their figures stay in the daily
        rollups, which every writer keeps (a database from before the rollups gets them
        built when opened for writing, before anything can be deleted), and
        :data:`PRUNED_KEY` records the time, so a report reads those days from them.

        Raises:
            InvalidArgument: ``before`` is not a finite clock time.
            DatabaseUnavailable: the database failed (nothing was deleted).
        """
        from sqlalchemy import func, select
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(before, bool) or not isinstance(before, int | float):
            raise InvalidArgument("before", before, "must be a clock time (seconds)")
        if not math.isfinite(before):
            raise InvalidArgument("before", before, "must be a finite clock time")
        if self.version is None or self.version < SCHEMA_VERSION:
            raise DatabaseUnavailable(self.shown, "open it for writing to prune it")
        cutoff = float(math.floor(before / DAY) * DAY)
        t = self.tables
        old_requests = select(t.requests.c.request_id).where(
            func.coalesce(t.requests.c.closed_at, t.requests.c.opened_at) < cutoff
        )
        meta = t.meta
        try:
            with self.engine.begin() as conn:
                events = conn.execute(
                    t.events.delete().where(t.events.c.request_id.in_(old_requests))
                ).rowcount
                calls = conn.execute(
                    t.calls.delete().where(func.coalesce(t.calls.c.at, t.calls.c.began_at) < cutoff)
                ).rowcount
                requests = conn.execute(
                    t.requests.delete().where(
                        func.coalesce(t.requests.c.closed_at, t.requests.c.opened_at) < cutoff
                    )
                ).rowcount
                held = conn.execute(select(meta.c.value).where(meta.c.key == PRUNED_KEY)).scalar()
                if held is None:
                    conn.execute(meta.insert().values(key=PRUNED_KEY, value=repr(cutoff)))
                elif float(held) < cutoff:
                    conn.execute(
                        meta.update().where(meta.c.key == PRUNED_KEY).values(value=repr(cutoff))
                    )
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from None
        return Pruned(before=cutoff, calls=calls, requests=requests, events=events)

    def _replace_each(self, latest: Mapping[str, RequestUsage]) -> int:
        """Write each record in a transaction of its own; report the ones refused.

        Raises:
            RecordsRejected: some records were refused for their data (the rest written).
            DatabaseUnavailable: the database could not be reached (writing the batch
                again is safe: rows of the same ids are replaced).
        """
        from sqlalchemy.exc import SQLAlchemyError

        reasons = []
        for request_id, record in latest.items():
            try:
                self._replace({request_id: record})
            except SQLAlchemyError as exc:
                if _unreachable(exc):  # the records written so far are written again
                    raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from exc
                reasons.append(f"{excerpt(request_id)}: {_reason(exc, self.url)}")
            except _record_errors() as exc:
                reasons.append(f"{excerpt(request_id)}: {_reason(exc, self.url)}")
        if reasons:
            raise RecordsRejected(self.shown, len(reasons), len(latest) - len(reasons), reasons)
        return len(latest)

    def _replace(self, latest: Mapping[str, RequestUsage]) -> None:
        t = self.tables
        ids = list(latest)
        with self.engine.begin() as conn:
            rollup = Rollup(storable)
            for old in self._stored(conn, ids):  # written before: take back its rollups
                rollup.add(old, -1)
            for record in latest.values():
                rollup.add(record)
            for table in (t.events, t.calls, t.requests):
                for start in range(0, len(ids), _CHUNK):
                    chunk = ids[start : start + _CHUNK]
                    conn.execute(table.delete().where(table.c.request_id.in_(chunk)))
            records = list(latest.values())
            _insert_many(conn, t.requests, [_request_row(r, clean=False) for r in records])
            _insert_many(
                conn, t.calls, [_call_row(r, c, clean=False) for r in records for c in r.calls]
            )
            _insert_many(
                conn,
                t.events,
                [_event_row(r, i, e, clean=False) for r in records for i, e in enumerate(r.events)],
            )
            upsert(conn, t.daily, rollup.rows())

    def _stored(self, conn: Connection, ids: Sequence[str]) -> list[RequestUsage]:
        """The stored records (without events) of those of ``ids`` already written."""
        from sqlalchemy import select

        t = self.tables
        found: list[str] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            query = select(t.requests.c.request_id).where(t.requests.c.request_id.in_(chunk))
            found.extend(conn.execute(query).scalars())
        if not found:
            return []
        records: list[RequestUsage] = []
        for start in range(0, len(found), _CHUNK):
            chunk = found[start : start + _CHUNK]
            requests = conn.execute(
                select(t.requests).where(t.requests.c.request_id.in_(chunk))
            ).mappings()
            calls: dict[str, list[CallUsage]] = {}
            for row in conn.execute(
                select(t.calls).where(t.calls.c.request_id.in_(chunk)).order_by(t.calls.c.grant_id)
            ).mappings():
                calls.setdefault(row["request_id"], []).append(_call_from(row))
            records.extend(
                dataclasses.replace(
                    _request_from(row), calls=tuple(calls.get(row["request_id"], ()))
                )
                for row in requests
            )
        return records

    def _rebuild_rollups(self, conn: Connection) -> None:
        """Build the daily rollups anew from every raw row (the upgrade to version 5)."""
        from sqlalchemy import select

        t = self.tables
        conn.execute(t.daily.delete())
        rollup = Rollup(storable)
        # Both in code point order (as Python compares), whatever the database's collation.
        binary = "C" if conn.dialect.name == "postgresql" else "BINARY"
        requests = conn.execute(
            select(t.requests)
            .order_by(t.requests.c.request_id.collate(binary))
            .execution_options(yield_per=20_000)
        ).mappings()
        calls = conn.execute(
            select(*_present(conn, (t.calls,))[0])
            .order_by(t.calls.c.request_id.collate(binary), t.calls.c.grant_id)
            .execution_options(yield_per=20_000)
        ).mappings()
        for record in _records(requests, calls):
            rollup.add(record)
        upsert(conn, t.daily, rollup.rows())

    def write_rollouts(self, records: Iterable[RolloutRecord]) -> int:
        """Append rollout decisions.

        Returns:
            The number of decisions written.

        Raises:
            SchemaVersionError: a record is of a newer schema version.
        """
        rows = []
        for record in records:
            if record.schema_version > SCHEMA_VERSION:
                raise SchemaVersionError(record.schema_version, SCHEMA_VERSION, record.rollout)
            rows.append(_rollout_row(record))
        if not rows:
            return 0
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine.begin() as conn:
                conn.execute(self.tables.rollouts.insert(), rows)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from exc
        return len(rows)

    def record_losses(self, source: str, counts: Mapping[str, int]) -> None:
        """Keep what one writer's channel lost so far (its totals: replaces the last).

        Stored in ``apportion_meta`` under ``lost:SOURCE`` (:data:`LOSS_PREFIX`), read
        back summed over every writer by :meth:`losses`.

        Raises:
            DatabaseUnavailable: the database failed.
        """
        from sqlalchemy.exc import SQLAlchemyError

        key = (LOSS_PREFIX + source)[:64]
        value = _json({k: int(counts.get(k, 0)) for k in LOSS_COUNTS})
        meta = self.tables.meta
        try:
            with self.engine.begin() as conn:
                conn.execute(meta.delete().where(meta.c.key == key))
                conn.execute(meta.insert().values(key=key, value=value))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from exc

    def losses(self) -> dict[str, int]:
        """What the writers of this database lost before it, summed (see :data:`LOSS_COUNTS`).

        ``{}`` when none said it lost anything.
        """
        from sqlalchemy import select

        if self.version is None:
            return {}
        meta = self.tables.meta
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(meta.c.value).where(meta.c.key.startswith(LOSS_PREFIX))
            ).scalars()
            total = dict.fromkeys(LOSS_COUNTS, 0)
            for raw in rows:
                found = _json_map(raw)
                for name in LOSS_COUNTS:
                    value = found.get(name)
                    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                        total[name] += value
        return total if any(total.values()) else {}

    # ----------------------------------------------------------------- reading

    def load(self, *, since: float | None = None, pipeline: str | None = None) -> Dataset:
        """Read the calls and requests back.

        Args:
            since: only calls settled (or begun) at or after this clock time, and
                requests closed (or opened) at or after it; rows without a time (ingested
                from logs that had none) are left out when ``since`` is given.
            pipeline: only this pipeline's.

        Returns:
            The dataset (``empty`` when the database holds no telemetry at all).

        Raises:
            DatabaseUnavailable: the database stopped answering.
            SchemaVersionError: some rows were written by a newer apportion.
        """
        from sqlalchemy import func, select
        from sqlalchemy.exc import SQLAlchemyError

        if self.version is None:
            return Dataset(self.shown, (), {}, empty=True)
        t = self.tables
        try:
            with self.engine.connect() as conn:  # an older database lacks later columns
                calls_cols, requests_cols = _present(conn, (t.calls, t.requests))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from None
        calls_q = select(*calls_cols).order_by(t.calls.c.request_id, t.calls.c.grant_id)
        requests_q = select(*requests_cols)
        if since is not None:
            calls_q = calls_q.where(func.coalesce(t.calls.c.at, t.calls.c.began_at) >= since)
            requests_q = requests_q.where(
                func.coalesce(t.requests.c.closed_at, t.requests.c.opened_at) >= since
            )
        if pipeline is not None:
            pipeline = storable(pipeline)
            calls_q = calls_q.where(t.calls.c.pipeline == pipeline)
            requests_q = requests_q.where(t.requests.c.pipeline == pipeline)
        try:
            with self.engine.connect() as conn:
                newest = conn.execute(select(func.max(t.requests.c.schema_version))).scalar()
                if newest is not None and int(newest) > SCHEMA_VERSION:
                    raise SchemaVersionError(int(newest), SCHEMA_VERSION, self.shown)
                total = conn.execute(select(func.count()).select_from(t.requests)).scalar()
                call_rows = conn.execute(calls_q).mappings().all()
                request_rows = conn.execute(requests_q).mappings().all()
                rollout_rows = self._rollout_rows(conn, since)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(self.shown, _reason(exc, self.url)) from None
        return Dataset(
            self.shown,
            tuple(_call_from(row) for row in call_rows),
            {row["request_id"]: _request_from(row) for row in request_rows},
            empty=not total and not rollout_rows,
            rollouts=tuple(_rollout_from(row) for row in rollout_rows),
        )

    def rollout_records(self, conn: Connection, since: float | None) -> tuple[RolloutRecord, ...]:
        """The rollout decisions since ``since``, in the order written."""
        return tuple(_rollout_from(row) for row in self._rollout_rows(conn, since))

    def has_rollups(self) -> bool:
        """Whether the database has the daily rollups (schema version 5 or later)."""
        from sqlalchemy import inspect

        with self.engine.connect() as conn:
            return bool(inspect(conn).has_table(self.tables.daily.name))

    def pruned_before(self) -> float | None:
        """The clock time raw rows were pruned before (``None``: never pruned)."""
        from sqlalchemy import select

        meta = self.tables.meta
        with self.engine.connect() as conn:
            value = conn.execute(select(meta.c.value).where(meta.c.key == PRUNED_KEY)).scalar()
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def load_tree_requests(
        self,
        conn: Connection,
        *,
        since: float | None = None,
        until: float | None = None,
        pipeline: str | None = None,
    ) -> dict[str, RequestUsage]:
        """The requests of the period's request trees: its child requests and their roots.

        Roots outside the period are left out. Each record holds what a tree needs (ids,
        pipeline, status, ceiling, consumed, refused begins, place in the tree); no
        features, no calls.
        """
        from sqlalchemy import func, select

        r = self.tables.requests.c
        where = []
        when = func.coalesce(r.closed_at, r.opened_at)
        if since is not None:
            where.append(when >= since)
        if until is not None:
            where.append(when < until)
        if pipeline is not None:
            where.append(r.pipeline == pipeline)
        columns = (
            r.request_id,
            r.pipeline,
            r.ceiling,
            r.consumed,
            r.status,
            r.refused,
            r.parent_id,
            r.root_id,
            r.depth,
        )

        def record(row: Sequence[Any]) -> RequestUsage:
            rid, name, ceiling, consumed, status, refused, parent, root, depth = row
            return RequestUsage(
                request_id=rid,
                pipeline=name,
                ceiling=ceiling,
                consumed=consumed or 0,
                status=status,
                refused=_refused_from(refused) if refused else {},
                parent_id=parent,
                root_id=root,
                depth=depth or 0,
            )

        found = {
            row[0]: record(row)
            for row in conn.execute(select(*columns).where(*where, r.parent_id.is_not(None)))
        }
        roots = sorted({root_of_record(rec) for rec in found.values()} - set(found))
        for start in range(0, len(roots), _CHUNK):
            chunk = roots[start : start + _CHUNK]
            for row in conn.execute(select(*columns).where(*where, r.request_id.in_(chunk))):
                found[row[0]] = record(row)
        return found

    def _rollout_rows(self, conn: Connection, since: float | None) -> Sequence[Any]:
        """The rollout decisions since ``since``, in the order written (none before v2)."""
        from sqlalchemy import inspect, select

        t = self.tables.rollouts
        if not inspect(conn).has_table(t.name):
            return []
        query = select(t).order_by(t.c.id)
        if since is not None:
            query = query.where(t.c.at >= since)
        return conn.execute(query).mappings().all()


def open_database(url: str) -> Database:
    """Open a telemetry database for reading (see :class:`Database`)."""
    return Database(url, create=False)


class SQLSink(Sink):
    """Writes usage records to a SQL database (the tables in the module docstring).

    Nothing is connected when the sink is made: the first write (in the telemetry worker
    thread) opens the database and creates its tables. A batch is written in one
    transaction. A database that cannot be reached raises
    :class:`~apportion.errors.DatabaseUnavailable` (the channel keeps the batch and writes
    it again: rows of the same ids are replaced, so nothing is counted twice); a batch with
    records the database refuses is written record by record, and only those are lost
    (:class:`~apportion.errors.RecordsRejected`). After a failure the next write starts
    from a new connection. What the channel lost is kept in the database
    (:meth:`record_losses`), for the report.

    Args:
        url: the database (default ``sqlite:///apportion.db``); PostgreSQL by
            ``postgresql://user:password@host/dbname``.

    Raises:
        MissingExtra: SQLAlchemy (extra ``sql``) or psycopg (extra ``postgres``) is
            missing.
        ValueError: ``url`` is not a string.
    """

    def __init__(self, url: str = "sqlite:///apportion.db") -> None:
        self.url = database_url(url)
        self.name = f"sql({redact(self.url)})"
        _require_sqlalchemy()
        if self.url.startswith("postgresql+psycopg:"):
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise MissingExtra("psycopg", "postgres") from None
        self._db: Database | None = None
        import os
        import socket
        import uuid

        # this writer, among all that write there: host, process, and this sink
        self._source = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def write(self, batch: Sequence[RequestUsage]) -> None:
        """Write a batch of records in one transaction."""
        if self._db is None:
            self._db = Database(self.url, create=True)
        try:
            self._db.write(batch)
        except Exception:
            self._db.close()
            self._db = None  # reconnect (and re-check the schema) next time
            raise

    def write_rollouts(self, records: Sequence[RolloutRecord]) -> None:
        """Write a batch of rollout decisions in one transaction."""
        if self._db is None:
            self._db = Database(self.url, create=True)
        try:
            self._db.write_rollouts(records)
        except Exception:
            self._db.close()
            self._db = None
            raise

    def record_losses(self, counts: Mapping[str, int]) -> None:
        """Keep in the database what this sink's channel lost so far (the report says it)."""
        if self._db is None:
            self._db = Database(self.url, create=True)
        self._db.record_losses(self._source, counts)

    def close(self) -> None:
        """Release the database's connections."""
        if self._db is not None:
            self._db.close()
            self._db = None


# --------------------------------------------------------------------- rows


_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` as the database stores it: NUL as ``\u2400``, lone surrogates as ``\ufffd``."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text.replace("\x00", "\u2400"))


def _storable_row(row: dict[str, Any]) -> dict[str, Any]:
    for key, value in row.items():
        if type(value) is str and _UNSTORABLE.search(value) is not None:
            row[key] = storable(value)
    return row


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, allow_nan=False)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _request_row(r: RequestUsage, *, clean: bool = True) -> dict[str, Any]:
    try:
        features = _json(dict(r.features))
    except ValueError:  # NaN or infinity in a feature: keep what JSON can hold
        features = _json({k: v for k, v in r.features.items() if _finite_or_other(v)})
    row = {
        "request_id": r.request_id,
        "pipeline": r.pipeline,
        "source": r.source,
        "schema_version": r.schema_version,
        "ceiling": r.ceiling,
        "consumed": r.consumed,
        "overflow": r.overflow,
        "status": r.status,
        "outcome": _finite(r.outcome),
        "features": features,
        "opened_at": _finite(r.opened_at),
        "closed_at": _finite(r.closed_at),
        "refused": _json(dict(r.refused)) if r.refused else None,
        "parent_id": r.parent_id,
        "root_id": r.root_id,
        "depth": r.depth,
        "refused_kinds": _json(dict(r.refused_kinds)) if r.refused_kinds else None,
    }
    return _storable_row(row) if clean else row


def _finite_or_other(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


def _call_row(r: RequestUsage, c: CallUsage, *, clean: bool = True) -> dict[str, Any]:
    row = {
        "request_id": r.request_id,
        "grant_id": c.grant_id,
        "pipeline": r.pipeline,
        "agent": c.agent,
        "priority": c.priority,
        "granted_context": c.granted_context,
        "granted_output": c.granted_output,
        "used_input": c.used_input,
        "used_output": c.used_output,
        "truncated": c.truncated,
        "input_cut": c.input_cut,
        "dropped_tokens": c.dropped_tokens,
        "overuse": c.overuse,
        "extensions": c.extensions,
        "settled": c.settled,
        "model": c.model,
        "cost_usd": _finite(c.cost_usd),
        "estimated": c.estimated,
        "finish_reason": c.finish_reason,
        "began_at": _finite(c.began_at),
        "at": _finite(c.at),
        "status": c.status,
        "kind": c.kind,
    }
    return _storable_row(row) if clean else row


def _event_row(r: RequestUsage, seq: int, e: Event, *, clean: bool = True) -> dict[str, Any]:
    row = {
        "request_id": r.request_id,
        "seq": seq,
        "kind": e.kind,
        "at": float(e.at),
        "agent": e.agent,
        "grant_id": e.grant_id,
        "context_tokens": e.context_tokens,
        "output_tokens": e.output_tokens,
        "truncated": bool(e.truncated),
        "overuse": e.overuse,
        "note": e.note,
    }
    return _storable_row(row) if clean else row


def _rollout_row(r: RolloutRecord) -> dict[str, Any]:
    return _storable_row(
        {
            "rollout": r.rollout,
            "candidate": r.candidate,
            "baseline": r.baseline,
            "kind": r.kind,
            "share": float(r.share),
            "reason": r.reason,
            "seen": int(r.seen),
            "candidate_mean": _finite(r.candidate_mean),
            "baseline_mean": _finite(r.baseline_mean),
            "lower_bound": _finite(r.lower),
            "upper_bound": _finite(r.upper),
            "at": _finite(r.at),
            "schema_version": r.schema_version,
        }
    )


def _rollout_from(row: Mapping[Any, Any]) -> RolloutRecord:
    return RolloutRecord(
        rollout=row["rollout"],
        candidate=row["candidate"],
        baseline=row["baseline"],
        kind=row["kind"],
        share=row["share"],
        reason=row["reason"],
        seen=row["seen"],
        candidate_mean=row["candidate_mean"],
        baseline_mean=row["baseline_mean"],
        lower=row["lower_bound"],
        upper=row["upper_bound"],
        at=row["at"],
        schema_version=row["schema_version"],
    )


def _call_from(row: Mapping[Any, Any]) -> CallUsage:
    fields = {name: row[name] for name in CallUsage.__dataclass_fields__ if name in row}
    return CallUsage(**fields)


def _json_map(raw: Any) -> dict[Any, Any]:
    """A JSON object from a column (empty when absent or bad)."""
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _refused_from(raw: Any) -> dict[str, int]:
    """A request's refused begins per agent, from its column (none when absent or bad)."""
    return {
        a: n for a, n in _json_map(raw).items() if type(n) is int and n > 0 and isinstance(a, str)
    }


def _refused_kinds_from(raw: Any) -> dict[str, str]:
    """The kinds of a request's refused agents, from its column (none when absent or bad)."""
    return {a: k for a, k in _json_map(raw).items() if isinstance(k, str) and k}


def _present(conn: Connection, tables: Sequence[Table]) -> list[list[Any]]:
    """Each table's columns that its database holds (an older one lacks later columns)."""
    from sqlalchemy import inspect

    inspector = inspect(conn)
    out = []
    for table in tables:
        held = {c["name"] for c in inspector.get_columns(table.name)}
        out.append([c for c in table.columns if c.name in held])
    return out


def _add_columns(conn: Connection, tables: Sequence[Table]) -> None:
    """Add to an older database's tables the (nullable) columns later versions added."""
    from sqlalchemy import inspect, text

    inspector = inspect(conn)
    preparer = conn.dialect.identifier_preparer
    for table in tables:
        held = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in held:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(
                    text(
                        f"ALTER TABLE {preparer.quote(table.name)} "
                        f"ADD COLUMN {preparer.quote(column.name)} {kind}"
                    )
                )


def _add_indexes(conn: Connection, tables: Sequence[Table]) -> None:
    """Add to an older database's tables the indexes later versions added.

    ``CREATE INDEX IF NOT EXISTS`` (SQLite and PostgreSQL): an index on an expression is
    not reflected, so it cannot be looked for first.
    """
    from sqlalchemy.schema import CreateIndex

    for table in tables:
        for index in table.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))


_INSERTS: dict[tuple[str, str, tuple[str, ...]], tuple[str, Any, str, Any]] = {}


def _insert_many(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows (all with the same keys) with one driver ``executemany``.

    SQLAlchemy's own ``executemany`` processes every parameter of every row in Python;
    for the plain values these tables hold the driver takes them as they are, several
    times faster. Text the database cannot hold (NUL, a lone surrogate) is replaced as
    :func:`storable` does, after one check per row.
    """
    if not rows:
        return
    from operator import itemgetter

    names = tuple(rows[0])
    key = (conn.dialect.name, table.name, names)
    found = _INSERTS.get(key)
    if found is None:
        from sqlalchemy import String

        quote = conn.dialect.identifier_preparer.quote
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
            f"VALUES ({', '.join(mark for _ in names)})"
        )
        texts = [n for n in names if isinstance(table.c[n].type, String)]
        found = (sql, itemgetter(*names), "%s\x01" * len(texts), itemgetter(*texts))
        _INSERTS[key] = found
    sql, values, shape, text_of = found
    params = []
    for row in rows:
        if _UNSTORABLE.search(shape % _tuple(text_of(row))) is not None:
            row = _storable_row(dict(row))
        params.append(values(row))
    conn.exec_driver_sql(sql, params)


def _tuple(value: Any) -> tuple[Any, ...]:
    return value if type(value) is tuple else (value,)


def _copy(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows into a PostgreSQL table with ``COPY`` (psycopg), in the open transaction."""
    if not rows:
        return
    names = [c.name for c in table.columns]
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    quoted = ", ".join(f'"{name}"' for name in names)
    with cursor.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row.get(name) for name in names])


def root_of_record(record: RequestUsage) -> str:
    """A request's tree root (from its id and depth when not recorded)."""
    return record.root_id or root_of(record.request_id, record.depth)


def _records(
    requests: Iterable[Mapping[Any, Any]], calls: Iterable[Mapping[Any, Any]]
) -> Iterable[RequestUsage]:
    """Records from request rows and call rows, both in request id order (a merge)."""
    pending = iter(calls)
    call = next(pending, None)
    for row in requests:
        record = _request_from(row)
        rid = row["request_id"]
        own = []
        while call is not None and call["request_id"] < rid:
            call = next(pending, None)  # a call without its request: not rolled up
        while call is not None and call["request_id"] == rid:
            own.append(_call_from(call))
            call = next(pending, None)
        yield dataclasses.replace(record, calls=tuple(own)) if own else record


def _request_from(row: Mapping[Any, Any]) -> RequestUsage:
    try:
        features = json.loads(row["features"] or "{}")
    except ValueError:
        features = {}
    return RequestUsage(
        request_id=row["request_id"],
        pipeline=row["pipeline"],
        ceiling=row["ceiling"],
        consumed=row["consumed"] or 0,
        overflow=row["overflow"] or 0,
        status=row["status"],
        outcome=row["outcome"],
        features=features if isinstance(features, dict) else {},
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        source=row["source"],
        schema_version=row["schema_version"],
        refused=_refused_from(row.get("refused")),
        refused_kinds=_refused_kinds_from(row.get("refused_kinds")),
        parent_id=row.get("parent_id"),
        root_id=row.get("root_id"),
        depth=row.get("depth") or 0,
    )
