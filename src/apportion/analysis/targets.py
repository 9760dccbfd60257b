"""What a critical-path sweep (or an allocation search) measures.

- :class:`WorkloadTarget`: a workload file, played through the simulated world with a
  base policy; quality is the simulated request quality.
- :class:`PipelineTarget`: a user's own pipeline: ``--runner module:function`` runs one
  example through a :class:`~apportion.Controller` it is given (``function(controller,
  example) -> output``), ``--metric module:function`` scores it (``metric(example,
  output) -> float in [0, 1]``), over the examples of a JSON Lines file. The pipeline's
  agents come from the module's ``PIPELINE`` (or ``pipeline``) attribute, a
  :class:`~apportion.Pipeline`.

Targets are plain data (paths and names), so they travel to worker processes; each
process loads what it needs.
"""

from __future__ import annotations

import importlib
import inspect
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apportion.analysis.sweep import CellResult, SweepTarget, digest
from apportion.controller import Controller
from apportion.errors import PolicyConfigError, SpecError
from apportion.files import load_json, read_text
from apportion.limits import excerpt
from apportion.policies import Policy, resolve_policy
from apportion.policies.constrained import Constrained
from apportion.spec import Pipeline


class WorkloadTarget(SweepTarget):
    """A workload file played in the simulated world.

    Args:
        path: the workload file.
        policy: the base policy's name (``static`` is profiled as in the bench).
        ceiling: the per-request ceiling (default: the workload's).
        requests: how many requests per cell.
        seed: the seed (default: the workload's).
    """

    simulated = True

    def __init__(
        self,
        path: str | Path,
        *,
        policy: str = "estimate",
        ceiling: int | None = None,
        requests: int = 300,
        seed: int | None = None,
    ) -> None:
        from apportion.sim.workload import load_workload

        self.path = str(path)
        workload = load_workload(path)
        resolve_policy(policy) if policy != "static" else None  # fail early on a bad name
        self.policy = policy
        chosen = ceiling or workload.ceiling
        if chosen is None:
            raise PolicyConfigError(f"workload {workload.name!r} sets no ceiling: give one")
        self.ceiling: int = chosen
        self.requests = requests
        self.seed = workload.seed or 0 if seed is None else seed
        self.name = workload.name
        self.agents = tuple(a.name for a in workload.agents)
        self._text = read_text(path)

    def fingerprint(self) -> str:
        """The workload's text and the sweep's parameters."""
        return digest(self._text, self.policy, self.ceiling, self.requests, self.seed)

    def base_policy(self) -> Policy:
        """The base policy (``static`` profiled on requests after the measured ones)."""
        from apportion.sim.bench import make_policy
        from apportion.sim.workload import load_workload

        return make_policy(self.policy, load_workload(self.path), self.seed, self.requests)

    def measure(self, policy: Policy) -> CellResult:
        """Play the requests under ``policy``; mean simulated quality, tokens per agent."""
        from apportion.sim.needs import draw_needs
        from apportion.sim.runner import controller_for, run_request
        from apportion.sim.workload import load_workload

        workload = load_workload(self.path)
        wrapper = policy if isinstance(policy, Constrained) else Constrained(policy, None)
        controller = controller_for(workload, wrapper)
        ceiling = int(self.ceiling)
        qualities = [
            run_request(controller, workload, draw_needs(workload, self.seed, r), ceiling).quality
            for r in range(self.requests)
        ]
        return _result(statistics.fmean(qualities), wrapper)


class PipelineTarget(SweepTarget):
    """A user's pipeline, measured by their metric over their examples.

    Args:
        pipeline: ``module:function`` running one example through a controller.
        eval_path: a JSON Lines file of examples (one JSON object a line).
        metric: ``module:function`` scoring ``(example, output)`` in [0, 1].
        policy: the base policy's name.

    Raises:
        PolicyConfigError: an import path does not resolve, or a function has the wrong
            signature (the message says what was expected).
        SpecError: the examples file is missing or has a bad line (file and line).
    """

    simulated = False

    def __init__(
        self, pipeline: str, eval_path: str | Path, metric: str, *, policy: str = "estimate"
    ) -> None:
        self.pipeline_path, self.metric_path = pipeline, metric
        self.eval_path = str(eval_path)
        self.policy = policy
        run, spec = _load_pipeline(pipeline)
        _load_function(metric, 2, "metric(example, output) -> float in [0, 1]")
        self.examples = _load_examples(eval_path)
        resolve_policy(policy)
        self.name = getattr(spec, "name", pipeline)
        self.agents = spec.names
        self._text = read_text(eval_path)
        del run

    def fingerprint(self) -> str:
        """The examples, the import paths and the policy (not the functions' code)."""
        return digest(self._text, self.pipeline_path, self.metric_path, self.policy)

    def base_policy(self) -> Policy:
        """The base policy."""
        return resolve_policy(self.policy)

    def measure(self, policy: Policy) -> CellResult:
        """Run every example under ``policy``; the mean metric, tokens per agent."""
        run, spec = _load_pipeline(self.pipeline_path)
        metric = _load_function(self.metric_path, 2, "metric(example, output)")
        wrapper = policy if isinstance(policy, Constrained) else Constrained(policy, None)
        controller = Controller(spec, policy=wrapper)
        scores = []
        for line, example in self.examples:
            value = metric(example, run(controller, example))
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0.0 <= value <= 1.0
            ):
                raise SpecError(
                    f"the metric {self.metric_path} returned {value!r}; it must return a "
                    "number in [0, 1]",
                    file=self.eval_path,
                    line=line,
                    key="metric",
                )
            scores.append(float(value))
        return _result(statistics.fmean(scores) if scores else 0.0, wrapper)


def _result(quality: float, wrapper: Constrained) -> CellResult:
    count = max(wrapper.requests, 1)
    return CellResult(
        quality,
        {a: tokens / count for a, tokens in wrapper.consumed.items()},
        {a: (c / count, i / count, o / count) for a, (c, i, o) in wrapper.usage.items()},
    )


def _load_function(path: str, arity: int, expected: str) -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise PolicyConfigError(
            f"{path!r} is not an import path module:function; expected {expected}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyConfigError(f"cannot import {module_name!r} (from {path!r}): {exc}") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise PolicyConfigError(
            f"{path!r}: {module_name} has no function {attribute!r}; expected {expected}"
        )
    try:
        inspect.signature(function).bind(*([None] * arity))
    except TypeError:
        raise PolicyConfigError(
            f"{path!r} has the signature {inspect.signature(function)}; expected {expected}"
        ) from None
    return function  # type: ignore[no-any-return]


def _load_pipeline(path: str) -> tuple[Callable[..., Any], Pipeline]:
    expected = (
        "function(controller, example) -> output, and a Pipeline named PIPELINE in its module"
    )
    run = _load_function(path, 2, expected)
    module = importlib.import_module(path.partition(":")[0])
    spec = getattr(module, "PIPELINE", None) or getattr(module, "pipeline", None)
    if not isinstance(spec, Pipeline):
        raise PolicyConfigError(
            f"{path!r}: its module has no Pipeline named PIPELINE; expected {expected}"
        )
    return run, spec


def _load_examples(path: str | Path) -> list[tuple[int, Any]]:
    """The examples of a JSON Lines file: one JSON object a line (blank lines skipped)."""
    name = str(path)
    lines = read_text(path).splitlines()
    examples = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        example = load_json(text, name, line=number)
        if not isinstance(example, dict):
            raise SpecError(
                f"an example must be a JSON object, not {excerpt(example)}", file=name, line=number
            )
        examples.append((number, example))
    if not examples:
        raise SpecError("the file has no examples", file=name)
    return examples
