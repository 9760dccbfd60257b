"""The real gateway: uvicorn on a loopback port, ``apportion serve`` processes, redis-server."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import RedisServer

from apportion.serve import Gateway, ServeConfig, create_app
from apportion.testing.fast_upstream import FastUpstream
from conftest import (
    KEYS,
    LiveServer,
    auth,
    cli_env,
    free_port,
    output,
    start_cli,
    stop,
    wait_ready,
    write_config,
)

BASE = "/v1/budget/requests"


def test_a_request_end_to_end_over_uvicorn(tenants_config: ServeConfig) -> None:
    gateway = Gateway(tenants_config)
    with LiveServer(create_app(gateway)) as server, httpx.Client(base_url=server.url) as client:
        assert gateway._reaper is not None  # the lifespan started the TTL reaper
        h = auth("acme")
        opened = client.post(
            BASE, json={"ceiling": 12_000, "features": {"messages": 30}}, headers=h
        )
        assert opened.status_code == 201, opened.text
        rid = opened.json()["request_id"]
        grant = client.post(
            f"{BASE}/{rid}/begin", json={"agent": "intake", "input_tokens": 400}, headers=h
        ).json()
        keyed = {**h, "Idempotency-Key": str(uuid.uuid4())}
        finish = {
            "grant": grant["grant"],
            "input_tokens": 400,
            "output_tokens": 55,
        }
        first = client.post(f"{BASE}/{rid}/finish", json=finish, headers=keyed)
        retry = client.post(f"{BASE}/{rid}/finish", json=finish, headers=keyed)
        assert first.status_code == retry.status_code == 200
        assert first.content == retry.content
        closed = client.post(f"{BASE}/{rid}/close", headers=h).json()
        assert closed["consumed"] == 455 and closed["status"] == "closed"
        assert client.get("/readyz").json() == {"status": "ok"}
        assert client.get(f"{BASE}/{rid}", headers=auth("globex")).status_code == 404
    assert gateway._reaper is None  # the lifespan stopped it


def test_requests_past_their_ttl_are_reaped(tmp_path: Path) -> None:
    now = [1000.0]
    config = ServeConfig.from_yaml(write_config(tmp_path))  # request_ttl: 600
    gateway = Gateway(config, clock=lambda: now[0])
    tenant = gateway.authenticate(auth("acme"))

    async def main() -> tuple[str, int, int]:
        req = await gateway.open(tenant, ceiling=5000)
        await req.begin("intake", 100)
        rid = gateway.public_id(tenant, req.request_id)
        now[0] += 601  # past the request's TTL, nobody calling
        assert gateway.reap() >= 1
        summary = await gateway.summary(tenant, rid)
        return summary.status, summary.reserved, summary.free

    status, reserved, free = asyncio.run(main())
    assert (status, reserved, free) == ("expired", 0, 5000)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[list[str]]:
    """Two gateways on one redis-server, for the module: ``apportion serve`` and
    ``apportion serve --workers 2``; their URLs. Each test opens its own requests."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    path = write_config(
        tmp_path_factory.mktemp("replicas"), store=f"{redis_server.url}?prefix={prefix}"
    )
    ports = [free_port(), free_port()]
    processes = [
        start_cli("--config", str(path), port=ports[0]),
        start_cli("--config", str(path), "--workers", "2", port=ports[1]),
    ]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url, process in zip(urls, processes, strict=True):
            wait_ready(url, process)
        yield urls
    finally:
        for process in processes:
            stop(process)


@pytest.fixture(scope="module")
def no_config() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``apportion serve`` with no config (memory store, open mode), for the module."""
    port = free_port()
    process = start_cli(port=port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        yield url, process
    finally:
        stop(process)


def test_two_gateways_on_one_redis_share_a_request(replicas: list[str]) -> None:
    one, two = (httpx.Client(base_url=u) for u in replicas)
    h = auth("acme")
    rid = one.post(BASE, json={"ceiling": 8000}, headers=h).json()["request_id"]
    grant = two.post(
        f"{BASE}/{rid}/begin", json={"agent": "reasoner", "input_tokens": 3000}, headers=h
    )
    assert grant.status_code == 200, grant.text
    g = grant.json()
    finish = {
        "grant": g["grant"],
        "input_tokens": 3000,
        "output_tokens": 200,
    }
    keyed = {**h, "Idempotency-Key": "cross-replica"}
    first = two.post(f"{BASE}/{rid}/finish", json=finish, headers=keyed)
    retry = one.post(f"{BASE}/{rid}/finish", json=finish, headers=keyed)  # the other replica
    assert first.status_code == retry.status_code == 200, retry.text
    assert first.content == retry.content
    seen = one.get(f"{BASE}/{rid}", headers=h).json()
    assert seen["consumed"] == 3200 and seen["reserved"] == 0
    assert two.get(f"{BASE}/{rid}", headers=auth("globex")).status_code == 404
    kid = two.post(BASE, json={"parent": rid, "name": "sub", "ceiling": 1000}, headers=h)
    assert kid.status_code == 201, kid.text
    assert one.post(f"{BASE}/{rid}/score", json={"outcome": 0.5}, headers=h).status_code == 200
    closed = two.post(f"{BASE}/{rid}/close", headers=h).json()
    assert closed["status"] == "closed" and closed["outcome"] == 0.5
    assert one.get(f"{BASE}/{rid}::sub", headers=h).json()["status"] == "closed"


def test_two_workers_on_redis_serve_one_ledger(replicas: list[str]) -> None:
    url = replicas[1]  # apportion serve --workers 2
    h = auth("acme")
    with httpx.Client(base_url=url) as client:
        rid = client.post(BASE, json={"ceiling": 20_000}, headers=h).json()["request_id"]
        for _ in range(8):  # each call may land on either worker
            g = client.post(
                f"{BASE}/{rid}/begin", json={"agent": "intake", "input_tokens": 10}, headers=h
            ).json()
            done = client.post(
                f"{BASE}/{rid}/finish",
                json={
                    "grant": g["grant"],
                    "input_tokens": 10,
                    "output_tokens": 5,
                },
                headers=h,
            )
            assert done.status_code == 200, done.text
        assert client.get(f"{BASE}/{rid}", headers=h).json()["consumed"] == 8 * 15


def test_apportion_serve_with_no_config_starts_and_answers(
    no_config: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, process = no_config
    opened = httpx.post(f"{url}{BASE}", content=b'{"ceiling": 20000}')  # curl -d style
    assert opened.status_code == 201, opened.text
    summary = opened.json()["summary"]
    assert "reasoner" in summary["agents"] and summary["ceiling"] == 20_000
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "/v1/budget/requests" in docs.text
    proxied = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert proxied.status_code == 400, proxied.text  # the proxy is mounted: no budget headers
    assert proxied.json()["error"]["code"] == "budget_headers_missing"
    assert "apportion gateway on" in output(process)


def test_several_workers_on_the_memory_store_are_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apportion.cli", "serve", "--workers", "2", "--port", "0"],
        capture_output=True,
        env=cli_env(),
        timeout=120,
    )
    assert done.returncode == 2
    out = done.stdout.decode()
    assert out.startswith("error:") and "memory store" in out and "redis" in out
    assert "Traceback" not in out + done.stderr.decode()


def test_a_bad_config_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("store: memory://\ntenants:\n  acme: {keys: [sk-secret-1234], admin: 3}\n")
    done = subprocess.run(
        [sys.executable, "-m", "apportion.cli", "serve", "--config", str(path)],
        capture_output=True,
        env=cli_env(),
        timeout=120,
    )
    out = done.stdout.decode()
    assert done.returncode == 2 and "line 3" in out and "admin" in out
    assert "sk-secret-1234" not in out + done.stderr.decode()


def test_import_apportion_pulls_no_web_framework_and_a_missing_one_names_the_extra() -> None:
    script = (
        "import sys\n"
        "import apportion, apportion.serve\n"
        "assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules\n"
        "sys.modules['fastapi'] = None\n"
        "from apportion.errors import MissingExtra\n"
        "try:\n"
        "    apportion.serve.create_app()\n"
        "except MissingExtra as exc:\n"
        "    print(exc.extra, exc.package)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=cli_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["serve", "fastapi"]


def test_the_readme_curl_example_runs_as_written(
    no_config: tuple[str, subprocess.Popen[bytes]],
) -> None:
    if shutil.which("curl") is None or shutil.which("jq") is None:
        pytest.skip("curl and jq are needed to run the README's example")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Gateway", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    start, example = blocks[0], blocks[1]
    assert "apportion serve --port 8080" in start and "curl" in example
    port = no_config[0].rsplit(":", 1)[1]
    script = "set -e\n" + example.replace("8080", port)
    done = subprocess.run(["bash", "-c", script], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    text, answers, decoder = done.stdout.decode().strip(), [], json.JSONDecoder()
    while text:  # curl prints each answer as is, one after the other
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].strip()
    settled, closed = answers
    assert settled["agent"] == "reasoner" and settled["grant_id"] == 1
    assert settled["summary"]["consumed"] == 7900 + 1312
    assert closed["status"] == "closed" and closed["consumed"] == 7900 + 1312


def test_schemathesis_fuzzes_the_running_gateway(tmp_path: Path) -> None:
    """The ``st`` command against a live server: every phase, no 5xx, no answer off schema."""
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.skip("schemathesis's st command is not installed beside this Python")
    port = free_port()
    upstream = FastUpstream().start()  # the proxy's operations are fuzzed too
    # the fuzzer's invalid-authentication checks would soon meet the failure limit (429)
    fake = f"  fake: {{prefix: '', api_base: '{upstream.url}', api_key: sk-x-01, direct: true}}\n"
    config = write_config(tmp_path, extra="auth_failure_limit: 1000000\nupstreams:\n" + fake)
    process = start_cli("--config", str(config), port=port)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        done = subprocess.run(
            [
                str(st),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--header",
                f"Authorization: Bearer {KEYS['acme']}",
                "--exclude-checks",
                "positive_data_acceptance",
                "--request-timeout",  # the first proxied call may wait for LiteLLM's import
                "120",
            ],
            capture_output=True,
            timeout=600,
        )
    finally:
        stop(process)
        upstream.stop()
    out = done.stdout.decode()
    assert done.returncode == 0, out[-6000:]
    assert "Stateful" in out and " passed" in out


def test_an_unreachable_store_is_a_503_and_nothing_is_lost(tmp_path: Path) -> None:
    server = RedisServer(fsync="always")
    server.start()
    try:
        config = ServeConfig.from_yaml(
            write_config(tmp_path, store=server.url, extra="lease_seconds: 8\n")
        )
        with (
            LiveServer(create_app(Gateway(config))) as live,
            httpx.Client(base_url=live.url) as client,
        ):
            h = auth("acme")
            rid = client.post(BASE, json={"ceiling": 5000}, headers=h).json()["request_id"]
            g = client.post(
                f"{BASE}/{rid}/begin", json={"agent": "intake", "input_tokens": 100}, headers=h
            ).json()
            server.stop()
            finish = {
                "grant": g["grant"],
                "input_tokens": 100,
                "output_tokens": 10,
            }
            keyed = {**h, "Idempotency-Key": "while-down"}
            down = client.post(f"{BASE}/{rid}/finish", json=finish, headers=keyed)
            assert down.status_code == 503, down.text
            error = down.json()["error"]
            assert error["code"] == "store_unavailable" and "url" in error
            assert client.get("/readyz").status_code == 503
            server.start()
            again = client.post(f"{BASE}/{rid}/finish", json=finish, headers=keyed)
            assert again.status_code == 200, again.text  # the 503 was not kept: it ran
            assert again.json()["summary"]["consumed"] == 110
            assert client.get("/readyz").status_code == 200
            _restart_under_load(live.url, server)
    finally:
        server.cleanup()


def _restart_under_load(url: str, server: RedisServer, clients: int = 4) -> None:
    """Clients run begin/finish cycles while Redis stops and starts again.

    While it is down they see 503 ``store_unavailable`` (never a 500); a client retries a
    503 with the same idempotency key until it runs. After, every ledger adds up (free +
    reserved + consumed == ceiling) and holds exactly what its client finished.
    """
    import threading

    h = auth("acme")
    done = threading.Event()
    seen: list[list[int]] = [[] for _ in range(clients)]
    finished = [0] * clients
    ids: list[str] = []
    for _ in range(clients):
        opened = httpx.post(f"{url}{BASE}", json={"ceiling": 1_000_000}, headers=h)
        assert opened.status_code == 201, opened.text
        ids.append(opened.json()["request_id"])

    def post(client: httpx.Client, index: int, path: str, body: Any, key: str) -> Any:
        retried = False
        while True:  # a client's retry after a 503: the same key, until it runs
            answer = client.post(path, json=body, headers={**h, "Idempotency-Key": key})
            seen[index].append(answer.status_code)
            if answer.status_code == 409 and retried and path.endswith("/finish"):
                # the store applied the finish, then went down before its answer was
                # made: the retry runs and meets the settled grant (settled once)
                assert answer.json()["error"]["code"] == "grant_settled", answer.text
                seen[index][-1] = 200
                return answer.json()
            if answer.status_code != 503:
                assert answer.status_code == 200, answer.text
                return answer.json()
            assert answer.json()["error"]["code"] == "store_unavailable", answer.text
            if done.is_set():
                return None
            retried = True

    def load(index: int) -> None:
        rid = ids[index]
        with httpx.Client(base_url=url, timeout=30) as client:
            step = 0
            while not done.is_set():
                step += 1
                begin = {"agent": "intake", "input_tokens": 50, "output_tokens": 20}
                grant = post(client, index, f"{BASE}/{rid}/begin", begin, f"b-{rid}-{step}")
                if grant is None:
                    return
                finish = {
                    "grant": grant["grant"],
                    "input_tokens": 50,
                    "output_tokens": 7,
                }
                if post(client, index, f"{BASE}/{rid}/finish", finish, f"f-{rid}-{step}") is None:
                    return
                finished[index] += 57

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    waits = threading.Event()

    def until(check: Any) -> None:
        for _ in range(600):
            if check():
                return
            waits.wait(0.05)
        raise AssertionError(f"never: {seen}")

    until(lambda: all(len(s) >= 4 for s in seen))  # under load
    server.stop()
    until(lambda: all(503 in s for s in seen))  # every client met the outage
    server.start()
    marks = [len(s) for s in seen]
    until(lambda: all(200 in s[m:] for s, m in zip(seen, marks, strict=True)))  # and recovered
    done.set()
    for thread in threads:
        thread.join(60)
    assert {code for s in seen for code in s} <= {200, 503}
    for rid, spent in zip(ids, finished, strict=True):
        for _ in range(300):
            summary = httpx.get(f"{url}{BASE}/{rid}", headers=h).json()
            assert summary["free"] + summary["reserved"] + summary["consumed"] == 1_000_000
            assert summary["consumed"] == spent, summary  # every finish counted once
            if summary["reserved"] == 0:
                break
            # a begin the store applied just before it went down, answered 503: its
            # retry made a second grant; the first one's lease returns its tokens
            waits.wait(0.1)
        assert summary["reserved"] == 0, summary


def test_ceilings_hold_across_two_replicas_under_concurrent_calls(replicas: list[str]) -> None:
    urls = replicas
    h = auth("acme")
    rid = httpx.post(f"{urls[0]}{BASE}", json={"ceiling": 6000}, headers=h).json()["request_id"]

    def agent(index: int) -> tuple[int, int]:
        granted = refused = 0
        with httpx.Client(base_url=urls[index % 2], timeout=60) as client:
            for _ in range(12):
                answer = client.post(
                    f"{BASE}/{rid}/begin",
                    json={"agent": "retriever", "input_tokens": 150, "output_tokens": 150},
                    headers=h,
                )
                if answer.status_code != 200:
                    assert answer.json()["error"]["code"] == "budget_exceeded", answer.text
                    refused += 1
                    continue
                g = answer.json()
                done = client.post(
                    f"{BASE}/{rid}/finish",
                    json={
                        "grant": g["grant"],
                        "input_tokens": g["context_tokens"],
                        "output_tokens": g["output_tokens"] + 5,
                    },  # a little over-use
                    headers=h,
                )
                assert done.status_code == 200, done.text
                granted += 1
        return granted, refused

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(agent, range(8)))
    summary = httpx.get(f"{urls[1]}{BASE}/{rid}", headers=h).json()
    assert sum(g for g, _ in results) > 0 and sum(r for _, r in results) > 0
    assert summary["consumed"] <= summary["ceiling"] == 6000
    assert summary["consumed"] + summary["reserved"] + summary["free"] == 6000
    assert summary["reserved"] == 0
