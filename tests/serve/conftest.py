"""Fixtures of the gateway tests: a real uvicorn server, a real redis-server, tenants.

:class:`LiveServer` runs an ASGI app under uvicorn in a thread on a free loopback port;
:func:`start_cli` runs ``apportion serve`` in a subprocess. Startup waits are bounded by a
number of polls (a server that never answers fails the test), never timed as a check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stores"))
from redis_server import RedisServer

from apportion.serve import Gateway, ServeConfig
from apportion.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"acme": "sk-acme-0123456789", "globex": "sk-globex-9876543210", "ops": "sk-ops-admin-42"}


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, polls: int = 300) -> None:
    """Poll ``url/healthz`` until it answers 200 (at most ``polls`` tries, 0.1 s apart)."""
    event = threading.Event()
    for _ in range(polls):
        if process is not None and process.poll() is not None:
            out = output(process)
            raise AssertionError(f"the gateway exited with {process.returncode}:\n{out}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        event.wait(0.1)
    raise AssertionError(f"{url} did not answer")


class LiveServer:
    """An ASGI app served by uvicorn in a daemon thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}


_LOGS: dict[int, Any] = {}


def start_cli(*args: str, port: int) -> subprocess.Popen[bytes]:
    """``apportion serve --port PORT ARGS`` in a subprocess, its output to a temporary file.

    A file, not a pipe: nobody reads a pipe while the server runs, and a server whose
    access log fills the pipe's buffer stops answering.
    """
    log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for output()
    process = subprocess.Popen(
        [sys.executable, "-m", "apportion.cli", "serve", "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cli_env(),
    )
    _LOGS[process.pid] = log
    return process


def output(process: subprocess.Popen[bytes]) -> str:
    """What ``process`` (started by :func:`start_cli`) printed so far."""
    log = _LOGS[process.pid]
    log.seek(0)
    return bytes(log.read()).decode(errors="replace")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server :func:`start_cli` started (its log stays readable by :func:`output`)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_config(tmp_path: Path, store: str = "memory://", extra: str = "") -> Path:
    """A serve.yaml with three tenants (ops is admin) on ``store``."""
    path = tmp_path / "serve.yaml"
    path.write_text(
        f"store: {store}\n"
        "request_ttl: 600\n"
        "signing_key: a-test-signing-key-of-some-length\n"
        "tenants:\n"
        f"  acme: {{keys: [{KEYS['acme']}]}}\n"
        f"  globex: {{keys: [{KEYS['globex']}]}}\n"
        f"  ops: {{keys: [{KEYS['ops']}], admin: true}}\n" + extra,
        encoding="utf-8",
    )
    return path


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture
def tenants_config(tmp_path: Path) -> ServeConfig:
    return ServeConfig.from_yaml(write_config(tmp_path))


@pytest.fixture
def gateway(tenants_config: ServeConfig) -> Gateway:
    return Gateway(tenants_config)


def _require_redis() -> None:
    missing = shutil.which("redis-server") is None
    if missing:
        if os.environ.get("CI"):
            pytest.fail("the gateway's Redis tests need redis-server")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the module."""
    _require_redis()
    server = RedisServer(fsync="everysec")
    server.start()
    yield server
    server.cleanup()
