"""``benchmarks/gateway.py`` runs and prints its one JSON line (tiny K and counts), all budgeted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from apportion.testing.fast_upstream import FastUpstream

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gateway.py"
KEYS = ("calls_per_s", "added_p50_ms", "added_p99_ms")


def test_the_fast_upstream_caps_reports_usage_and_bills_per_tag() -> None:
    with FastUpstream(reply_tokens=6) as upstream:
        client = openai.OpenAI(base_url=upstream.url, api_key="k", max_retries=0)
        messages = [{"role": "user", "content": "ticket-1 three more words"}]
        cut = client.chat.completions.create(model="m", messages=messages, max_tokens=4)  # type: ignore[arg-type]
        whole = client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
        stats = httpx.get(upstream.url.removesuffix("/v1") + "/stats").json()
        refused = httpx.post(f"{upstream.url}/chat/completions", json={"model": "m"})
    assert (cut.choices[0].finish_reason, cut.choices[0].message.content) == (
        "length",
        "ok ok ok ok",
    )
    assert whole.choices[0].finish_reason == "stop"
    assert cut.usage is not None and whole.usage is not None
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens) == (3 + 3 + 4, 4)
    assert whole.usage.completion_tokens == 6
    assert upstream.billed == {"ticket-1": 10 + 4 + 10 + 6}
    assert stats == {"calls": 2, "billed": {"ticket-1": 30}}
    assert refused.status_code == 400 and "messages" in refused.json()["error"]["message"]


def test_the_gateway_benchmark_prints_one_json_line_of_budgeted_calls(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    saved = tmp_path / "gateway.json"
    argv = [sys.executable, str(SCRIPT), "--runs", "1", "--clients", "2", "--calls", "5"]
    argv += ["--latency-calls", "3", "--per-request", "3", "--save", str(saved)]
    argv += ["--configs", "memory-1w-direct", "redis-2w-litellm"]
    argv += ["--litellm-bin", str(tmp_path / "no-litellm-here")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    line = json.loads(lines[0])
    assert json.loads(saved.read_text()) == line
    for key in KEYS:
        assert isinstance(line[key], int | float)
    assert line["best"] in ("memory-1w-direct", "redis-2w-litellm")
    assert "no-litellm-here" in line["litellm"]["error"]  # absent: said so, not a failure
    assert set(line["configs"]) == {"memory-1w-direct", "redis-2w-litellm"}
    for figures in line["configs"].values():
        assert set(KEYS) <= set(figures)
        (run,) = figures["runs"]
        assert run["statuses"] == {"200": 10} and run["latency_calls"] == 3
        (check,) = figures["budget_checks"]
        # every call budgeted: a grant per answer, and ledgers, headers and bills agree
        assert check["calls"] == check["budgeted"] == 10
        assert check["requests"] == 4  # two clients, five calls, three a request
        assert check["ledger_consumed"] == check["used_headers"] == check["upstream_billed"] > 0
        assert check["ok"] is True
    assert line["every_call_budgeted"] is True
    assert line["direct"]["calls_per_s"] > 0
    assert len(line["load_average"]["before"]) == 3
