"""Any language: a Node script (its own ``fetch``, no package) runs two agents via the proxy."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from proxy_helpers import ACME, TENANT_KEYS, billed, proxy_app

from apportion.testing.openai_server import OpenAIServer
from conftest import LiveServer
from policy_helpers import FixedPolicy

SCRIPT = Path(__file__).with_name("two_agents.mjs")
EIGHT = "one two three four five six seven eight"


def test_a_node_client_runs_two_agents_through_the_gateway():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("the Node client test needs node")
        pytest.skip("node is not installed (apt-get install nodejs)")
    with OpenAIServer(default=EIGHT) as server:
        app, gateway = proxy_app(server, FixedPolicy(output=5, extra=5))
        with LiveServer(app) as live:
            run = subprocess.run(
                [node, str(SCRIPT), f"{live.url}/v1", TENANT_KEYS["acme"], "node-1"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        planner, writer = out["planner"], out["writer"]
        assert planner["status"] == writer["status"] == 200
        assert json.loads(planner["text"])["choices"][0]["message"]["content"] == EIGHT
        assert planner["headers"]["apportion-status"] == "completed"
        assert writer["headers"]["apportion-status"] == "open"  # a stream: figures at its end
        assert writer["text"].rstrip().endswith("data: [DONE]")
        figures = next(
            json.loads(line.removeprefix(": apportion "))
            for line in writer["text"].splitlines()
            if line.startswith(": apportion ")
        )
        summary = asyncio.run(gateway.summary(ACME, "node-1"))
        assert int(planner["headers"]["apportion-used"]) + figures["used"] == billed(server)
        assert summary.consumed == billed(server) and summary.reserved == 0
        assert figures["remaining"] == summary.free
        assert [r["max_tokens"] for r in server.requests] == [5, 5, 5, 5]  # both extended
