"""Running a ``benchmarks/`` script as a user would: its own process, this checkout's code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/NAME ARGS``, however it ends (its output captured as text)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def run_script(name: str, *args: str, timeout: float = 300) -> str:
    """``python benchmarks/NAME ARGS``; its standard output (it must exit 0)."""
    done = run(name, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
