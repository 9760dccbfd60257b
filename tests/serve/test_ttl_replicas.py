"""An idle request past its ``request_ttl`` closes itself, across 2 workers on Redis.

``apportion serve --workers 2`` on a real redis-server, with a short TTL: a request opened
(with a grant held) through one worker and left idle expires, its tokens return, every
worker then answers it as expired, and the workers' reapers expire it once between them
(the summed ``apportion_requests_total{status="expired"}`` is 1).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer

from conftest import auth, free_port, start_cli, stop, wait_ready, write_config


def _expired_count(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "apportion_requests_total" and sample.labels.get("status") == "expired"
    )


def test_an_idle_request_expires_once_across_two_workers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    store = f"{redis_server.url}?prefix=ttl-{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path, store=store)
    path.write_text(
        path.read_text().replace("request_ttl: 600", "request_ttl: 2\nlease_seconds: 4")
    )
    port = free_port()
    process = start_cli("--config", str(path), "--workers", "2", port=port)
    url = f"http://127.0.0.1:{port}"
    event = threading.Event()
    try:
        wait_ready(url, process)
        with httpx.Client(base_url=url) as client:
            opened = client.post(
                "/v1/budget/requests",
                json={"request_id": "idle", "ceiling": 5000},
                headers=auth("acme"),
            )
            assert opened.status_code == 201, opened.text
            begun = client.post(
                "/v1/budget/requests/idle/begin",
                json={"agent": "intake", "input_tokens": 100},
                headers=auth("acme"),
            )
            assert begun.status_code == 200, begun.text
        summary: dict[str, Any] = {}
        for _ in range(300):  # no call comes: the reapers (every second) expire it
            with httpx.Client(base_url=url) as client:  # a connection each: either worker
                answer = client.get("/v1/budget/requests/idle", headers=auth("acme"))
            assert answer.status_code == 200, answer.text
            summary = answer.json()
            if summary["status"] == "expired":
                break
            event.wait(0.1)
        assert summary["status"] == "expired", summary
        assert summary["reserved"] == 0 and summary["free"] == summary["ceiling"] == 5000
        for _ in range(6):  # whichever worker answers: expired, nothing left to draw on
            with httpx.Client(base_url=url) as client:
                late = client.post(
                    "/v1/budget/requests/idle/begin",
                    json={"agent": "intake", "input_tokens": 10},
                    headers=auth("acme"),
                )
                assert late.status_code == 409, late.text
                assert late.json()["error"]["code"] == "request_closed"
        event.wait(1.5)  # let a second reaper tick pass on both workers
        with httpx.Client(base_url=url) as client:
            metrics = client.get("/metrics", headers=auth("ops"))
        assert metrics.status_code == 200
        assert _expired_count(metrics.text) == 1  # expired once, by one worker
    finally:
        stop(process)
