"""Shared fixtures: Hypothesis profiles (``ci`` when CI is set, else ``dev``) and the
telemetry databases (SQLite in a temporary directory, a real PostgreSQL server)."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from apportion.testing.postgres import PostgresServer, find_postgres

settings.register_profile(
    "ci", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


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
