"""The simulated world: workloads, per-request needs, the hidden response model, the oracle.

Everything here is pure and policy-independent (``docs/workload-spec.md``):

- :mod:`~apportion.sim.workload` reads and validates workload files;
- :mod:`~apportion.sim.needs` draws each request's features and token needs with common
  random numbers;
- :mod:`~apportion.sim.quality` is the hidden response model (quality of an agent call
  and of a request);
- :mod:`~apportion.sim.oracle` is the hindsight oracle, the upper bound policies are
  compared with.
"""

from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.oracle import (
    DISCRETISATION_NOTE,
    RELAXATION_NOTE,
    Oracle,
    OracleResult,
    default_step,
    solve_oracle,
)
from apportion.sim.quality import (
    agent_quality,
    available_input,
    output_quality,
    request_quality,
)
from apportion.sim.workload import (
    EXTENSION_OVERHEADS,
    OUTPUT_KINDS,
    PRIORITIES,
    AgentSpec,
    ExtensionOverhead,
    FeatureSpec,
    ModelSpec,
    NeedSpec,
    OutputKind,
    Priority,
    Workload,
    load_workload,
)

__all__ = [
    "DISCRETISATION_NOTE",
    "EXTENSION_OVERHEADS",
    "OUTPUT_KINDS",
    "PRIORITIES",
    "RELAXATION_NOTE",
    "AgentSpec",
    "ExtensionOverhead",
    "FeatureSpec",
    "ModelSpec",
    "NeedSpec",
    "Oracle",
    "OracleResult",
    "OutputKind",
    "Priority",
    "RequestNeeds",
    "Workload",
    "agent_quality",
    "available_input",
    "default_step",
    "draw_needs",
    "load_workload",
    "output_quality",
    "request_quality",
    "solve_oracle",
]
