"""``examples/frameworks/openai_agents_pipeline.py`` runs against the local server (no key)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import require

require("agents")

EXAMPLE = Path(__file__).resolve().parents[3] / "examples/frameworks/openai_agents_pipeline.py"


def test_the_example_fits_the_thread_and_holds_the_ceiling():
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, ["src", env.get("PYTHONPATH")]))
    root = EXAMPLE.parents[2]
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "on the local server at http://127.0.0.1:" in out.stdout
    assert re.search(r"reasoner .* input cut in 1", out.stdout), out.stdout
    assert "1. Find where step two reads its credentials." in out.stdout
    consumed, ceiling = map(int, re.search(r"consumed (\d+) <= (\d+): True", out.stdout).groups())
    assert consumed <= ceiling
