"""Critical-path analysis: starve one agent at a time and watch the final quality.

For each agent ``a`` and each fraction ``f`` of the sweep, every grant of ``a`` is cut to
``f`` of what the base policy would have given it, while the other agents keep theirs
(:class:`~apportion.policies.constrained.Constrained`), and the final quality is measured
over the same requests as the unconstrained run (fraction 1).

Definitions:

- ``loss(a, f) = Q(1) - Q(a at f)``: the mean quality lost (simulated quality for a
  workload, the user's metric for a pipeline).
- ``share(a)``: ``a``'s part of the tokens a request consumes, at fraction 1.
- ``sensitivity(a)``: the mean over the fractions below 1 of ``loss(a, f) / (1 - f)``:
  quality lost per unit of the agent's budget taken away. Agents are ranked by it.
- ``critical(a)``: the loss is disproportionate: on average over the fractions, the share
  of the quality lost exceeds the share of the request's tokens taken away, that is
  ``mean_f (loss(a, f) / Q(1)) / ((1 - f) * share(a)) > 1``. Those agents are the
  critical path: their budget decides the final quality more than their size does.

Each cell (agent, fraction) runs on a fresh controller, so learning policies do not carry
one cell's starvation into another. Cells run in parallel worker processes and their
results are cached on disk, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apportion.errors import PolicyConfigError, SpecError
from apportion.files import load_json, write_atomic
from apportion.policies import Policy
from apportion.policies.constrained import Constrained

DEFAULT_FRACTIONS = (1.0, 0.75, 0.5, 0.25)

Progress = Callable[[int], None]


def parse_fractions(text: str) -> list[float]:
    """``"1,0.75,0.5"`` as fractions in (0, 1]; 1 is added when missing.

    Raises:
        PolicyConfigError: a value is not a number in (0, 1], or none is given.
    """
    values: list[float] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise PolicyConfigError(f"fraction {part!r} is not a number", fraction=part) from None
        if not (0.0 < value <= 1.0) or math.isnan(value):
            raise PolicyConfigError(f"fractions are in (0, 1], not {value!r}", fraction=value)
        if value not in values:
            values.append(value)
    if not values:
        raise PolicyConfigError("give at least one fraction", fraction=text)
    if 1.0 not in values:
        values.insert(0, 1.0)
    return sorted(values, reverse=True)


@dataclass(frozen=True)
class CellResult:
    """What one measured run came to.

    Attributes:
        quality: mean quality (simulated, or the user's metric).
        tokens_by_agent: tokens consumed per request, per agent.
        usage_by_agent: per agent, ``(calls, input tokens, output tokens)`` per request.
    """

    quality: float
    tokens_by_agent: dict[str, float]
    usage_by_agent: dict[str, tuple[float, float, float]] = field(default_factory=dict)


class SweepTarget:
    """What a sweep measures: a workload (simulated) or a user's pipeline (their metric)."""

    name: str
    agents: tuple[str, ...]
    simulated: bool

    def fingerprint(self) -> str:
        """A digest of everything that decides the results (for the cache)."""
        raise NotImplementedError

    def measure(self, policy: Policy) -> CellResult:
        """Run every request (or example) under ``policy``; mean quality and tokens."""
        raise NotImplementedError

    def base_policy(self) -> Policy:
        """A fresh instance of the policy the sweep starves agents under."""
        raise NotImplementedError

    def run_cell(self, agent: str | None, fraction: float) -> CellResult:
        """Measure with ``agent`` starved to ``fraction`` (``None``: nobody starved)."""
        return self.measure(Constrained(self.base_policy(), agent, fraction))

    def cell_steps(self) -> int:
        """Progress steps one cell reports."""
        return 1


def _run_cell(job: tuple[SweepTarget, str | None, float]) -> tuple[str | None, float, CellResult]:
    target, agent, fraction = job
    return agent, fraction, target.run_cell(agent, fraction)


def sweep(
    target: SweepTarget,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    workers: int = 1,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the sweep and rank the agents (see the module docstring for the definitions).

    Args:
        target: what to measure.
        fractions: the fractions of the budget each agent keeps (1 is the baseline).
        workers: worker processes (1: run in this process).
        cache_dir: where finished cells are kept, so an interrupted sweep resumes.
        progress: called with 1 after each cell.

    Returns:
        ``{"agents": [{"name", "rank", "sensitivity", "critical", "loss": {f: loss}, ...}],
        ...}``, most sensitive first.
    """
    levels = sorted({float(f) for f in fractions} | {1.0}, reverse=True)
    for f in levels:
        if not 0.0 < f <= 1.0:
            raise PolicyConfigError(f"fractions are in (0, 1], not {f!r}", fraction=f)
    cache = _Cache(cache_dir, target.fingerprint()) if cache_dir is not None else None
    jobs: list[tuple[str | None, float]] = [(None, 1.0)]
    jobs += [(a, f) for a in target.agents for f in levels if f < 1.0]
    results: dict[tuple[str | None, float], CellResult] = {}
    todo = []
    for job in jobs:
        cached = cache.get(job) if cache else None
        if cached is not None:
            results[job] = cached
            if progress:
                progress(1)
        else:
            todo.append(job)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for agent, fraction, result in pool.map(_run_cell, [(target, a, f) for a, f in todo]):
                results[(agent, fraction)] = result
                if cache:
                    cache.put((agent, fraction), result)
                if progress:
                    progress(1)
    else:
        for agent, fraction in todo:
            result = target.run_cell(agent, fraction)
            results[(agent, fraction)] = result
            if cache:
                cache.put((agent, fraction), result)
            if progress:
                progress(1)
    return _rank(target, levels, results)


def _rank(
    target: SweepTarget,
    levels: list[float],
    results: dict[tuple[str | None, float], CellResult],
) -> dict[str, Any]:
    base = results[(None, 1.0)]
    total = sum(base.tokens_by_agent.values()) or 1.0
    rows: list[dict[str, Any]] = []
    for agent in target.agents:
        share = base.tokens_by_agent.get(agent, 0.0) / total
        loss = {f: base.quality - results[(agent, f)].quality for f in levels if f < 1.0}
        sensitivity = statistics.fmean(v / (1.0 - f) for f, v in loss.items()) if loss else 0.0
        ratios = [
            (v / base.quality) / ((1.0 - f) * share)
            for f, v in loss.items()
            if base.quality > 0 and share > 0
        ]
        elasticity = statistics.fmean(ratios) if ratios else 0.0
        rows.append(
            {
                "name": agent,
                "sensitivity": round(sensitivity, 4),
                "critical": elasticity > 1.0,
                "elasticity": round(elasticity, 3),
                "share": round(share, 4),
                "loss": {_key(f): round(v, 4) for f, v in loss.items()},
            }
        )
    rows.sort(key=lambda row: -float(row["sensitivity"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return {
        "target": target.name,
        "simulated": target.simulated,
        "fractions": levels,
        "baseline_quality": round(base.quality, 4),
        "critical_path": [row["name"] for row in rows if row["critical"]],
        "agents": rows,
    }


def _key(fraction: float) -> str:
    return f"{fraction:g}"


def priorities_from(result: dict[str, Any], *, floor: float = 0.01) -> dict[str, str]:
    """Priorities from a sweep, decided by the loss at the mildest cut (the margin).

    ``critical``: an agent on the critical path whose marginal loss is at least half the
    largest marginal loss (reservations are worth most there; a long critical path would
    reserve for everyone and protect no one). ``peripheral``: an agent whose marginal loss
    is at most ``floor`` of the baseline quality (trimming it costs nothing).
    ``standard``: the others.
    """
    rows = result["agents"]
    mildest = _key(max(f for f in result["fractions"] if f < 1.0))
    margin = {row["name"]: row["loss"][mildest] for row in rows}
    top = max(margin.values(), default=0.0)
    lowest = floor * result["baseline_quality"]
    priorities = {}
    for row in rows:
        loss = margin[row["name"]]
        if row["critical"] and top > 0 and loss >= top / 2:
            priorities[row["name"]] = "critical"
        elif loss <= lowest:
            priorities[row["name"]] = "peripheral"
        else:
            priorities[row["name"]] = "standard"
    return priorities


class _Cache:
    """Finished cells of one sweep, one JSON file per target and parameters.

    Only a cache: a file or a cell that cannot be read is computed again, never an error.
    """

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.path = Path(directory) / f"sweep-{fingerprint}.json"
        self.cells: dict[str, Any] = {}
        if self.path.exists():
            try:
                cells = load_json(self.path.read_bytes())
            except (OSError, SpecError):
                cells = {}
            self.cells = cells if isinstance(cells, dict) else {}

    @staticmethod
    def _name(job: tuple[str | None, float]) -> str:
        return f"{job[0] or '*'}@{_key(job[1])}"

    def get(self, job: tuple[str | None, float]) -> CellResult | None:
        entry = self.cells.get(self._name(job))
        try:
            quality, tokens = entry["quality"], entry["tokens_by_agent"]  # type: ignore[index]
            if isinstance(quality, bool) or not isinstance(quality, int | float):
                return None
            if not all(isinstance(v, int | float) for v in tokens.values()):
                return None
            return CellResult(float(quality), dict(tokens))
        except (TypeError, KeyError, AttributeError):
            return None

    def put(self, job: tuple[str | None, float], result: CellResult) -> None:
        self.cells[self._name(job)] = {
            "quality": result.quality,
            "tokens_by_agent": result.tokens_by_agent,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.cells))


def digest(*parts: object) -> str:
    """A short, stable digest of ``parts``."""
    text = json.dumps([str(p) for p in parts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
