"""Fixtures: telemetry databases (SQLite in a temporary directory, a real PostgreSQL server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apportion.testing.postgres import PostgresServer, find_postgres


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """A PostgreSQL server from Debian's packages, started once for the session."""
    if find_postgres() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: CI must install Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    return PostgresServer.shared()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty telemetry database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'telemetry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
