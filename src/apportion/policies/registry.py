"""The one registry of policies by name.

Every name in :data:`POLICIES` is accepted by ``Controller(policy=NAME)``, listed by
``apportion policies`` and by :class:`~apportion.errors.UnknownPolicy`, and accepted by
``apportion bench``, ``replay`` and ``learn``. Each name has a kind: ``rule`` (a fixed
allocation rule, fitted at most on usage), ``learning`` (learns what budgets are worth
from outcomes: ``learned``) or ``routing`` (chooses each call's model too: ``routed``, and
``learned-routed``, which learns budgets from outcomes as ``learned`` does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from apportion.errors import PolicyConfigError, UnknownPolicy
from apportion.limits import excerpt
from apportion.policies.base import Policy
from apportion.policies.elastic import ElasticPolicy
from apportion.policies.estimate import EstimatePolicy
from apportion.policies.iterative import IterativePolicy
from apportion.policies.learned import LearnedPolicy
from apportion.policies.predicting import PredictingPolicy
from apportion.policies.routed import LearnedRoutedPolicy, RoutedPolicy
from apportion.policies.sharing import SharedState
from apportion.policies.static import StaticPolicy
from apportion.policies.uniform import UniformPolicy

Kind = Literal["rule", "learning", "routing"]


@dataclass(frozen=True)
class Registered:
    """A registered policy: how to make one, and its kind.

    Attributes:
        factory: makes the policy with its defaults (no arguments).
        kind: ``rule``, ``learning`` or ``routing`` (see the module docstring).
    """

    factory: Callable[[], Policy]
    kind: Kind


REGISTRY: Mapping[str, Registered] = MappingProxyType(
    {
        "elastic": Registered(ElasticPolicy, "rule"),
        "estimate": Registered(EstimatePolicy, "rule"),
        "iterative": Registered(IterativePolicy, "rule"),
        "learned": Registered(LearnedPolicy, "learning"),
        "learned-routed": Registered(LearnedRoutedPolicy, "routing"),
        "routed": Registered(RoutedPolicy, "routing"),
        "static": Registered(StaticPolicy, "rule"),
        "uniform": Registered(UniformPolicy, "rule"),
    }
)
"""Policy name -> :class:`Registered`: the registry itself."""

POLICIES: Mapping[str, Callable[[], Policy]] = MappingProxyType(
    {name: entry.factory for name, entry in REGISTRY.items()}
)
"""Policy name -> factory taking no arguments: every name :func:`resolve_policy` accepts."""


def policies_of(kind: Kind) -> list[str]:
    """The registered names of one kind, in the registry's order."""
    return [name for name, entry in REGISTRY.items() if entry.kind == kind]


def rule_policies() -> list[str]:
    """The rule-based policies: what a bench, a replay or a learning run compares by default."""
    return policies_of("rule")


def bench_policies(*, priced: bool) -> list[str]:
    """The policies a bench runs by default: the rules, and ``routed`` when models are priced.

    Args:
        priced: the workload has a ``models`` section (prices and capabilities to route on).
    """
    return [*rule_policies(), *(policies_of("routing") if priced else ())]


def resolve_policy(
    policy: str | Policy,
    *,
    store: SharedState | None = None,
    options: Mapping[str, Any] | None = None,
) -> Policy:
    """Return ``policy`` itself, or a new policy for a registered name.

    ``static:PATH`` loads the static policy's budgets from the YAML file at ``PATH``. With
    ``store``, a predicting policy made by name shares what it learns through it
    (``ElasticPolicy(store=store)``: the workers of one store learn together). ``options``
    are the keyword arguments a policy made by name is built with (``{"margin": 0.3}``).

    Raises:
        UnknownPolicy: the name is not registered (the error lists those that are).
        PolicyConfigError: an option the policy does not take, or a bad value for one.
    """
    if options is not None and (
        not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options)
    ):
        raise PolicyConfigError(
            f"a policy's options map option names to values, not {excerpt(options)}",
            options=excerpt(options),
        )
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        name, _, argument = policy.partition(":")
        if name == "static" and argument:
            if options:
                raise PolicyConfigError(
                    f"static:PATH takes no options, not {', '.join(sorted(options))}",
                    options=sorted(options),
                )
            return StaticPolicy.from_yaml(argument)
        entry = REGISTRY.get(name) if not argument else None
        if entry is not None:
            return _made(name, entry.factory, store, dict(options or {}))
    raise UnknownPolicy(policy, POLICIES)


def _made(
    name: str, factory: Callable[..., Policy], store: SharedState | None, options: dict[str, Any]
) -> Policy:
    """``factory(**options)``, given ``store`` when it makes a predicting policy."""
    if "store" in options:
        raise PolicyConfigError(
            f"{name}: store is not an option here (the policy learns through the store "
            "it is given)",
            options=sorted(options),
        )
    takes = _option_names(factory)
    unknown = sorted(set(options) - takes)
    if unknown:
        known = ", ".join(sorted(takes - {"store"})) or "none"
        raise PolicyConfigError(
            f"{name} takes no option {', '.join(map(repr, unknown))} (its options: {known})",
            options=unknown,
        )
    if store is not None and isinstance(factory, type) and issubclass(factory, PredictingPolicy):
        options["store"] = store
    return factory(**options)


def _option_names(factory: Callable[..., Policy]) -> set[str]:
    """The keyword arguments ``factory`` takes (through ``**kwargs`` passed to a base class)."""
    names: set[str] = set()
    chain = factory.__mro__ if isinstance(factory, type) else (factory,)
    for cls in chain:
        init = vars(cls).get("__init__") if isinstance(cls, type) else cls
        if init is None:  # inherited: the next class that defines one says
            continue
        if init is object.__init__:
            break
        parameters = inspect.signature(init).parameters.values()
        names |= {
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        }
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break  # what it passes on to its base is its own business
    return names


def policy_options(name: str) -> set[str]:
    """The options (keyword arguments) the policy registered as ``name`` takes.

    Raises:
        UnknownPolicy: the name is not registered.
    """
    entry = REGISTRY.get(name)
    if entry is None:
        raise UnknownPolicy(name, POLICIES)
    return _option_names(entry.factory) - {"store"}


def check_policy_names(names: Iterable[str]) -> None:
    """Refuse a name that is not registered, before anything runs.

    Raises:
        UnknownPolicy: the first unknown name (the error lists those that are).
    """
    for name in names:
        if not isinstance(name, str) or name not in REGISTRY:
            raise UnknownPolicy(name, POLICIES)
