"""``examples/frameworks/*_pipeline.py`` run against the local server (no key, no network)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("example", "framework"),
    [("openai_agents_pipeline.py", "agents"), ("pydantic_ai_pipeline.py", "pydantic_ai")],
)
def test_the_example_fits_the_thread_and_holds_the_ceiling(example, framework):
    if importlib.util.find_spec(framework) is None:
        require(framework)  # skips, or fails in CI
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "frameworks" / example)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "on the local server at http://127.0.0.1:" in out.stdout
    assert re.search(r"reasoner .* input cut in 1", out.stdout), out.stdout
    assert "1. Find where step two reads its credentials." in out.stdout
    found = re.search(r"consumed (\d+) <= (\d+): True", out.stdout)
    assert found is not None, out.stdout
    assert int(found.group(1)) <= int(found.group(2))
