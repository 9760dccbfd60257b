"""Ceilings hold across replicas under concurrent proxied calls from 16 client processes.

Three gateway replicas on one real ``redis-server``: an ``apportion serve`` process
sending through the OpenAI SDK (``direct: true``) and an ``apportion serve --workers 2``
sending through LiteLLM. Sixteen client processes, each with the official OpenAI client,
start together and make proxied calls for several agents of a few shared requests,
spreading their calls over the replicas, until the ceilings run out. The fake upstream
(:class:`~apportion.testing.fast_upstream.FastUpstream`) adds up what it bills per request
(the prompt's first word is the request id; a prompt the gateway trimmed to fit a grant
loses it, so the bills are compared in total). Per request: the ledger's ``consumed``
equals the ``Apportion-Used`` of the calls answered and never exceeds the ceiling, and
after the close ``free + reserved + consumed == ceiling`` with nothing reserved; in all,
what the provider billed equals what the ledgers consumed.
"""

from __future__ import annotations

import multiprocessing
import queue
import uuid
from pathlib import Path

import httpx
import pytest
from redis_server import RedisServer
from replica_clients import make_calls

from apportion.testing.fast_upstream import FastUpstream
from conftest import KEYS, auth, free_port, output, start_cli, stop, wait_ready, write_config

PROCESSES = 16
CALLS = 6
REQUESTS = 4
CEILING = 1000
SPAWN = multiprocessing.get_context("forkserver")
SPAWN.set_forkserver_preload(["replica_clients"])  # the OpenAI client imported once, not 16 times


def upstream_config(upstream: FastUpstream, *, direct: bool) -> str:
    return (
        "upstreams:\n"
        "  fake:\n"
        "    prefix: ''\n"
        "    model: openai/gpt-4o-mini\n"
        f"    api_base: {upstream.url}\n"
        "    api_key: sk-fake-upstream-key\n"
        f"    direct: {'true' if direct else 'false'}\n"
    )


def test_ceilings_hold_across_replicas_under_16_client_processes(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    store = f"{redis_server.url}?prefix=rep{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:6]
    requests = [f"rep-{run}-{i}" for i in range(REQUESTS)]
    with FastUpstream(reply_tokens=60) as upstream:
        configs = []
        for direct in (True, False):
            folder = tmp_path / ("direct" if direct else "litellm")
            folder.mkdir()
            extra = upstream_config(upstream, direct=direct)
            configs.append(write_config(folder, store=store, extra=extra))
        ports = [free_port(), free_port()]
        gateways = [
            start_cli("--config", str(configs[0]), "--log-level", "warning", port=ports[0]),
            start_cli(
                "--config",
                str(configs[1]),
                "--workers",
                "2",
                "--log-level",
                "warning",
                port=ports[1],
            ),
        ]
        try:
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            for url, process in zip(urls, gateways, strict=True):
                wait_ready(url, process)
            barrier, results = SPAWN.Barrier(PROCESSES), SPAWN.Queue()
            spec = {
                "urls": urls,
                "requests": requests,
                "key": KEYS["acme"],
                "ceiling": CEILING,
                "calls": CALLS,
                "prompt": "sort this ticket for the team please",
            }
            clients = [
                SPAWN.Process(
                    target=make_calls, args=({**spec, "index": i}, barrier, results), daemon=True
                )
                for i in range(PROCESSES)
            ]
            for client in clients:
                client.start()
            calls: list[tuple[str, int, int, str]] = []
            try:
                for _ in clients:
                    calls.extend(results.get(timeout=180)[1])
            except queue.Empty:
                logs = "\n".join(output(p)[-2000:] for p in gateways)
                raise AssertionError(f"a client process did not finish:\n{logs}") from None
            for client in clients:
                client.join(30)
            summaries = {}
            with httpx.Client(timeout=60) as http:
                for index, rid in enumerate(requests):
                    closed = http.post(
                        f"{urls[index % 2]}/v1/budget/requests/{rid}/close", headers=auth("acme")
                    )
                    assert closed.status_code == 200, closed.text
                    summaries[rid] = closed.json()
        finally:
            for process in gateways:
                stop(process)
        billed = dict(upstream.billed)

    assert len(calls) == PROCESSES * CALLS
    outcomes = {(status, code) for _, status, _, code in calls}
    # answered, or refused by the budget: nothing left, or too little left for the input
    assert outcomes <= {(200, ""), (402, "budget_exceeded"), (400, "input_too_large")}, outcomes
    assert outcomes - {(200, "")}  # the ceilings ran out under the load
    for rid in requests:
        answered = [used for r, status, used, _ in calls if r == rid and status == 200]
        summary = summaries[rid]
        assert answered, rid  # every request served calls before running out
        assert sum(answered) == summary["consumed"], (rid, summary)
        assert 0 < summary["consumed"] <= CEILING, (rid, summary)
        assert summary["reserved"] == 0
        assert summary["free"] + summary["reserved"] + summary["consumed"] == CEILING, summary
    # what the provider billed is what the ledgers consumed: none escaped a ledger
    consumed = sum(summaries[rid]["consumed"] for rid in requests)
    assert sum(billed.values()) == consumed, (billed, summaries)
    assert max(billed.get(rid, 0) for rid in requests) <= CEILING
