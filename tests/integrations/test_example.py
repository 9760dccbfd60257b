"""``examples/litellm_pipeline.py`` runs against the local server (no key, no network)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "litellm_pipeline.py"


def test_example_extends_a_cut_call_and_holds_the_ceiling():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "APPORTION_MODEL")
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "on the local server at http://127.0.0.1:" in text
    reasoner = re.search(
        r"reasoner .* (\d+) call\(s\), (\d+) extension\(s\); "
        r"finish=(\w+), truncated=(\w+)",
        text,
    )
    assert reasoner is not None, text
    calls, extensions, finish, truncated = reasoner.groups()
    assert int(calls) >= 2 and int(extensions) >= 1
    assert (finish, truncated) == ("stop", "False")
    assert "extended" in text and "completed" in text
    consumed, ceiling = map(int, re.search(r"consumed (\d+) <= (\d+): True", text).groups())
    assert consumed <= ceiling
