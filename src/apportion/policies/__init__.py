"""Allocation policies, and the explicit registry that names them.

``uniform``, ``static``, ``estimate``, ``elastic``, ``iterative``, ``learned``, ``routed``
and ``learned-routed``;
each module's docstring states its rule in plain words. The registry
(:mod:`apportion.policies.registry`, :data:`POLICIES`) names them all, and
:func:`resolve_policy` turns a name (or ``static:budgets.yaml``) into a policy object.
"""

from __future__ import annotations

from apportion.policies.base import Decision, Observation, Plan, Policy
from apportion.policies.elastic import ElasticPolicy
from apportion.policies.estimate import EstimatePolicy
from apportion.policies.iterative import IterativePolicy
from apportion.policies.learned import LearnedPolicy
from apportion.policies.registry import (
    POLICIES,
    REGISTRY,
    Registered,
    bench_policies,
    check_policy_names,
    policies_of,
    policy_options,
    resolve_policy,
    rule_policies,
)
from apportion.policies.routed import LearnedRoutedPolicy, RoutedPolicy
from apportion.policies.static import Budget, StaticPolicy
from apportion.policies.uniform import UniformPolicy

__all__ = [
    "POLICIES",
    "REGISTRY",
    "Budget",
    "Decision",
    "ElasticPolicy",
    "EstimatePolicy",
    "IterativePolicy",
    "LearnedPolicy",
    "LearnedRoutedPolicy",
    "Observation",
    "Plan",
    "Policy",
    "Registered",
    "RoutedPolicy",
    "StaticPolicy",
    "UniformPolicy",
    "bench_policies",
    "check_policy_names",
    "policies_of",
    "policy_options",
    "resolve_policy",
    "rule_policies",
]
