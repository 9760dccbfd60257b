"""Fixtures of the store tests: a real redis-server, started on a free loopback port.

Without ``redis-server`` (or redis-py) the Redis tests skip, except under CI (``CI`` set),
where they fail: ``.ci/run`` installs both, so CI never skips them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from redis_server import RedisServer


def _require_redis() -> None:
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append('redis-py (pip install "apportion[redis]")')
    if missing:
        message = "the Redis store tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One server for the whole session (tests flush their database before use)."""
    _require_redis()
    server = RedisServer(fsync="everysec")
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def own_redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A server of the test's own, which it may stop, kill and restart.

    Its AOF's ``appendfsync`` is ``always`` unless the test parametrizes the fixture
    indirectly with another (``everysec``, ``no``).
    """
    _require_redis()
    server = RedisServer(fsync=getattr(request, "param", "always"))
    server.start()
    yield server
    server.cleanup()
