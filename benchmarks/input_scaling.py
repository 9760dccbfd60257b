"""How reading inputs scales: a pipeline by agents, a call log by columns, a YAML alias bomb.

Each size is built or read a few times and the best time kept. Loading should grow
linearly: the JSON shows seconds per size and, for each doubling, the ratio of times
(about 2 when linear, about 4 when quadratic). The alias bomb (nine levels of nine
aliases: about 86 million nodes once expanded, from a few hundred bytes) must be refused
at once and without memory: its time and peak traced memory are shown.

    python benchmarks/input_scaling.py [--repeat N]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apportion import Agent, Pipeline
from apportion.errors import SpecError
from apportion.sim.replay import load_calls
from apportion.yamlfile import load_yaml

AGENTS = (2_000, 4_000, 8_000, 16_000)
COLUMNS = (5_000, 10_000, 20_000, 40_000)


def best_of(repeat: int, work: Callable[[], object]) -> float:
    """The least time ``work()`` took over ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def scaling(sizes: tuple[int, ...], seconds: list[float]) -> dict[str, Any]:
    """Seconds per size, and the ratio of times at each doubling of the size."""
    return {
        "seconds": {str(n): round(s, 5) for n, s in zip(sizes, seconds, strict=True)},
        "ratio_per_doubling": [round(b / a, 2) for a, b in itertools.pairwise(seconds)],
    }


def pipeline_build(repeat: int) -> dict[str, Any]:
    """A chain of agents, each after the one before (plus ``downstream`` of the first)."""
    seconds = []
    for n in AGENTS:
        agents = [Agent(f"agent{i}", after=[f"agent{i - 1}"] if i else []) for i in range(n)]
        seconds.append(best_of(repeat, lambda a=agents: Pipeline(a).downstream("agent0")))
    return scaling(AGENTS, seconds)


def csv_columns(repeat: int, folder: Path) -> dict[str, Any]:
    """A call log whose header has many columns (the required ones first)."""
    seconds = []
    for n in COLUMNS:
        extra = ",".join(f"x{i}" for i in range(n))
        path = folder / f"columns-{n}.csv"
        row = "r,1,a,10,10," + ",".join("0" for _ in range(n))
        path.write_text(f"run,call,agent,prompt_tokens,completion_tokens,{extra}\n{row}\n")
        seconds.append(best_of(repeat, lambda p=path: load_calls(p)))
    return scaling(COLUMNS, seconds)


def alias_bomb(folder: Path) -> dict[str, Any]:
    """Nine levels of nine aliases: refused, in how long and how much memory."""
    lines = ["a0: &a0 [lol, lol]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = folder / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    start = time.perf_counter()
    try:
        load_yaml(path)
        refused = None
    except SpecError as error:
        refused = error.problem
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "bytes": path.stat().st_size,
        "refused": refused,
        "seconds": round(seconds, 5),
        "peak_memory_bytes": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (best kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {
            "pipeline_agents": pipeline_build(args.repeat),
            "csv_columns": csv_columns(args.repeat, folder),
            "yaml_alias_bomb": alias_bomb(folder),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
