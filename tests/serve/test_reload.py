"""A config reload: all or nothing, the old sinks flushed and closed, every worker reloads.

In process (a :class:`Gateway`, the admin route through ``httpx.ASGITransport``), then
``apportion serve --workers 2`` on a real redis-server: each worker watches the config
file and reloads it when it changes (``config_poll_seconds``).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import RedisServer

from apportion.errors import SpecError
from apportion.serve import Gateway, ServeConfig, Tenant, create_app
from apportion.serve.errors import AuthenticationThrottled
from apportion.serve.ops import hidden
from conftest import KEYS, auth, free_port, output, start_cli, stop, wait_ready, write_config

NEW_KEY = "sk-newco-0123456789"
NEW_TENANT = f"  newco: {{keys: [{NEW_KEY}]}}\n"


def with_newco(text: str) -> str:
    """A config's text with tenant newco added."""
    return text.replace("tenants:\n", "tenants:\n" + NEW_TENANT, 1)


def admin_reload(app: Any) -> httpx.Response:
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.post("/v1/admin/reload", headers=auth("ops"))

    return asyncio.run(post())


def test_a_reload_flushes_and_closes_the_old_sinks(tmp_path: Path) -> None:
    database = tmp_path / "usage.db"
    path = write_config(tmp_path, extra=f"telemetry: sqlite:///{database}\n")
    gateway = Gateway(ServeConfig.from_yaml(path))
    old = [channel for c in gateway.controllers.values() for channel in c.sinks]
    assert old
    closed: list[tuple[str, int]] = []
    for channel in old:
        close = channel.sink.close

        def spy(channel: Any = channel, close: Any = close) -> None:
            closed.append((channel.name, channel.pending))  # what was left to write
            close()

        channel.sink.close = spy

    async def one_request() -> None:
        req = await gateway.open(Tenant("acme"), ceiling=1000)
        await gateway.close(Tenant("acme"), gateway.public_id(Tenant("acme"), req.request_id))

    asyncio.run(one_request())  # its usage goes to the sink (a worker thread writes it)
    path.write_text(with_newco(path.read_text()))
    gateway.reload()
    gateway.wait_retired()
    assert [pending for _, pending in closed] == [0] * len(old)  # flushed, then closed
    assert sum(channel.delivered for channel in old) == 1
    new = [channel for c in gateway.controllers.values() for channel in c.sinks]
    assert not set(map(id, new)) & set(map(id, old))  # the new config writes through new ones


def test_a_reload_keeps_the_failed_authentications(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra="auth_failure_limit: 3\n")
    gateway = Gateway(ServeConfig.from_yaml(path))
    bad = {"Authorization": "Bearer sk-guess-000000"}
    for _ in range(2):
        with pytest.raises(Exception, match="unknown key"):
            gateway.authenticate(bad, "10.0.0.9")
    gateway.reload()  # the same file: the two failures stay counted
    with pytest.raises(Exception, match="unknown key"):
        gateway.authenticate(bad, "10.0.0.9")
    with pytest.raises(AuthenticationThrottled):
        gateway.authenticate(auth("acme"), "10.0.0.9")
    path.write_text(path.read_text().replace("auth_failure_limit: 3", "auth_failure_limit: 4"))
    gateway.reload()  # a higher limit: one more guess, then refused again
    with pytest.raises(Exception, match="unknown key"):
        gateway.authenticate(bad, "10.0.0.9")
    with pytest.raises(AuthenticationThrottled):
        gateway.authenticate(auth("acme"), "10.0.0.9")
    assert gateway.authenticate(auth("acme"), "10.0.0.1").name == "acme"  # others: not
    path.write_text(path.read_text().replace("auth_failure_limit: 4", "auth_failure_limit: 1"))
    with pytest.raises(Exception, match="unknown key"):
        gateway.authenticate(bad, "10.0.0.2")
    gateway.reload()  # a lower limit: a client already past it is refused at once
    with pytest.raises(AuthenticationThrottled):
        gateway.authenticate(auth("acme"), "10.0.0.2")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda text: text + "  broken: [not, a, mapping]\n", "tenants.broken"),
        (lambda text: text + "no_such_key: 1\n", "no_such_key"),
        (lambda text: text.replace("store: memory://", "store: redis://127.0.0.1:1/0"), "store"),
        (lambda text: text + "metrics: admin\ntenants: {}\n", None),
        (lambda text: "store: [\n", None),
        (None, None),  # the file is gone
    ],
)
def test_a_bad_config_is_refused_and_the_old_one_runs(
    tmp_path: Path, change: Any, key: str | None
) -> None:
    path = write_config(tmp_path)
    app = create_app(ServeConfig.from_yaml(path))
    gateway: Gateway = app.state.gateway
    before = (gateway.config, gateway.controllers, gateway._keys, gateway.failures)
    good = path.read_text()
    if change is None:
        path.unlink()
    else:
        path.write_text(change(good))
    answer = admin_reload(app)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_spec" and error["message"]
    if key is not None:
        assert error["key"] == key
    assert (gateway.config, gateway.controllers, gateway._keys, gateway.failures) == before
    assert gateway.authenticate(auth("acme")).name == "acme"
    assert gateway.check_config() is False  # the watcher leaves the bad file alone, too
    assert gateway.config is before[0]


def test_a_reloaded_config_s_secrets_are_hidden_from_the_logs(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    app = create_app(ServeConfig.from_yaml(path))
    provider = "sk-provider-after-reload-77"
    upstream = f"  p: {{prefix: gpt-, api_base: 'http://127.0.0.1:9/v1', api_key: {provider}}}\n"
    path.write_text(path.read_text() + "upstreams:\n" + upstream)
    answer = admin_reload(app)
    assert answer.status_code == 200, answer.text
    assert answer.json()["upstreams"] == ["p"]
    assert provider not in hidden(f"calling with {provider}")
    assert any(
        url.startswith("prometheus") for url in app.state.gateway.config.telemetry
    )  # the controller's metrics survive the reload


def test_the_watcher_reloads_a_changed_file(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    gateway = Gateway(ServeConfig.from_yaml(path))
    assert gateway.check_config() is False  # unchanged
    path.write_text(with_newco(path.read_text()))
    assert gateway.check_config() is True
    assert gateway.authenticate({"Authorization": f"Bearer {NEW_KEY}"}).name == "newco"
    assert gateway.check_config() is False
    with pytest.raises(SpecError):
        Gateway(ServeConfig.default()).reload()  # no file: nothing to reload


def _workers(text: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", text)}


def _reloaded(text: str) -> set[int]:
    found = set()
    for line in text.splitlines():
        if '"config_reloaded"' in line:
            found.add(int(json.loads(line)["worker"]))
    return found


def test_both_workers_take_a_changed_config(tmp_path: Path, redis_server: RedisServer) -> None:
    store = f"{redis_server.url}?prefix=reload-{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path, store=store, extra="config_poll_seconds: 0.2\n")
    port = free_port()
    process = start_cli("--config", str(path), "--workers", "2", port=port)
    url = f"http://127.0.0.1:{port}"
    newco = {"Authorization": f"Bearer {NEW_KEY}"}
    event = threading.Event()
    try:
        wait_ready(url, process)
        for _ in range(300):
            workers = _workers(output(process))
            if len(workers) == 2:
                break
            event.wait(0.1)
        assert len(workers) == 2, output(process)
        with httpx.Client() as client:
            refused = client.get(f"{url}/v1/budget/requests/x", headers=newco)
        assert refused.status_code == 401
        path.write_text(with_newco(path.read_text()))
        for _ in range(300):  # each worker sees the file changed within 0.2 s
            if _reloaded(output(process)) == workers:
                break
            event.wait(0.1)
        assert _reloaded(output(process)) == workers, output(process)[-3000:]
        for _ in range(20):  # a connection each: whichever worker answers knows newco
            with httpx.Client() as client:
                opened = client.post(f"{url}/v1/budget/requests", json={}, headers=newco)
            assert opened.status_code == 201, opened.text
    finally:
        stop(process)
    assert NEW_KEY not in output(process) and KEYS["ops"] not in output(process)
