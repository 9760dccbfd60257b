"""Allocation policies, and the explicit registry that names them.

``uniform``, ``static``, ``estimate``, ``elastic``, ``iterative`` and ``learned``; each module's
docstring states its rule in plain words. :func:`resolve_policy` turns a name (or
``static:budgets.yaml``) into a policy object.
"""

from __future__ import annotations

from collections.abc import Callable

from apportion.errors import UnknownPolicy
from apportion.policies.base import Decision, Observation, Plan, Policy
from apportion.policies.elastic import ElasticPolicy
from apportion.policies.estimate import EstimatePolicy
from apportion.policies.iterative import IterativePolicy
from apportion.policies.learned import LearnedPolicy
from apportion.policies.routed import RoutedPolicy
from apportion.policies.static import Budget, StaticPolicy
from apportion.policies.uniform import UniformPolicy

POLICIES: dict[str, Callable[[], Policy]] = {
    "elastic": ElasticPolicy,
    "estimate": EstimatePolicy,
    "iterative": IterativePolicy,
    "static": StaticPolicy,
    "uniform": UniformPolicy,
}
"""Policy name -> factory taking no arguments."""

LEARNING: dict[str, Callable[[], Policy]] = {"learned": LearnedPolicy}
"""Policies that learn from outcomes: resolvable by name, not in the rule-based benches."""

ROUTING: dict[str, Callable[[], Policy]] = {"routed": RoutedPolicy}
"""Policies that choose the model too: resolvable by name, benched on workloads with models."""


def resolve_policy(policy: str | Policy) -> Policy:
    """Return ``policy`` itself, or a new policy for a registered name.

    ``static:PATH`` loads the static policy's budgets from the YAML file at ``PATH``.

    Raises:
        UnknownPolicy: the name is not registered (the error lists those that are).
    """
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        name, _, argument = policy.partition(":")
        if name == "static" and argument:
            return StaticPolicy.from_yaml(argument)
        factory = (
            (POLICIES.get(name) or LEARNING.get(name) or ROUTING.get(name))
            if not argument
            else None
        )
        if factory is not None:
            return factory()
    raise UnknownPolicy(policy, POLICIES)


__all__ = [
    "LEARNING",
    "POLICIES",
    "ROUTING",
    "Budget",
    "Decision",
    "ElasticPolicy",
    "EstimatePolicy",
    "IterativePolicy",
    "LearnedPolicy",
    "Observation",
    "Plan",
    "Policy",
    "RoutedPolicy",
    "StaticPolicy",
    "UniformPolicy",
    "resolve_policy",
]
