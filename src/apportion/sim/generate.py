"""Unseen workloads: a random but plausible workload file drawn from a seed.

:func:`generate_workload` draws a pipeline that follows ``docs/workload-spec.md``
exactly (no superset key): 3 to 8 agents in a DAG (each later agent reads one or two
earlier ones through ``after``, most with ``upstream: true``), at least one ``critical``
agent, output kinds, features (two to four of ``messages``, ``doc_tokens``,
``tool_calls``, ``pages``), per-feature needs, noise, input sensitivities and
influences, and optionally a ``models`` section (three priced models) for routing.

Agents are drawn from five roles with plausible sizes (a classifier that writes a small
JSON label, a retriever that reads the documents, a reasoner that thinks at length, a
writer, a formatter whose JSON must be whole); the priority is the role's usual one four
times out of five and a random one otherwise (users misjudge priorities), and the
influence follows the role, not the priority. The same seed always gives the same
workload: :class:`Generated` holds the YAML-ready document, and ``Workload.from_dict`` of
it is what :func:`~apportion.sim.workload.load_workload` reads back from its YAML.

Ceilings. ``median_need`` is the median total need (``sum(need_in + need_out)``) over
:data:`PROBE_REQUESTS` requests drawn at indices from :data:`PROBE_START` on, disjoint
from the ones a bench measures. The default ceiling is ``default_ratio * median_need``,
``default_ratio`` drawn in :data:`DEFAULT_RATIO` (near the median need: some requests fit
whole, some must be cut); :meth:`Generated.at_ratio` gives the same workload at another
share of the median need (the "tight ceilings" of 70% to 110%).

Shift (``docs/workload-shift.md``): :func:`generate_shift` draws a second workload with
the same pipeline and the same hidden response parameters but other token needs (every
agent's input and output sizes scaled by its own factor); a shifted run plays request
``r`` from the first workload when ``r < at`` and from the second from then on.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, replace
from typing import Any, Final

import yaml

from apportion.sim.needs import RequestNeeds, draw_needs
from apportion.sim.workload import Workload

__all__ = [
    "DEFAULT_RATIO",
    "PROBE_REQUESTS",
    "PROBE_START",
    "SHIFT_TOTAL",
    "TIGHT_RATIOS",
    "Generated",
    "Shift",
    "generate_shift",
    "generate_workload",
    "median_need",
    "shifted_needs",
]

PROBE_REQUESTS: Final = 300
"""Requests drawn to measure a workload's median total need."""

PROBE_START: Final = 1_000_000
"""First request index of the probe (far from the indices a bench measures)."""

DEFAULT_RATIO: Final = (1.0, 1.3)
"""The default ceiling, as a share of the median total need, is drawn in this range."""

TIGHT_RATIOS: Final = (0.7, 0.9, 1.1)
"""The tight ceilings measured beside the default one, as shares of the median need."""

SHIFT_TOTAL: Final = (0.9, 1.2)
"""After a shift, the median total need is this share of the one before (drawn)."""

_FEATURES: Final[dict[str, tuple[tuple[int, int], tuple[float, float]]]] = {
    # name: (median range, p90 / median range)
    "messages": ((4, 40), (2.0, 4.0)),
    "doc_tokens": ((300, 3000), (2.0, 5.0)),
    "tool_calls": ((1, 8), (1.5, 3.0)),
    "pages": ((1, 12), (1.5, 4.0)),
}
# tokens of input per unit of each feature, by how much an agent reads of it
_IN_COEF: Final[dict[str, tuple[float, float]]] = {
    "messages": (5.0, 200.0),
    "doc_tokens": (0.1, 1.0),
    "tool_calls": (50.0, 400.0),
    "pages": (100.0, 600.0),
}
_OUT_COEF: Final[dict[str, tuple[float, float]]] = {
    "messages": (1.0, 30.0),
    "doc_tokens": (0.01, 0.1),
    "tool_calls": (10.0, 80.0),
    "pages": (10.0, 60.0),
}


@dataclass(frozen=True)
class _Role:
    priority: str
    kinds: tuple[str, ...]
    input_base: tuple[int, int]
    reads: float  # chance of a per-feature input term for each feature
    output_base: tuple[int, int]
    output_grows: float  # chance that the output grows with one feature
    sensitivity: tuple[float, float]
    influence: tuple[float, float]


_ROLES: Final[dict[str, _Role]] = {
    "classifier": _Role(
        "peripheral", ("structured",), (100, 400), 0.5, (20, 120), 0.1, (0.2, 0.5), (0.1, 0.4)
    ),
    "retriever": _Role(
        "standard",
        ("prose", "structured"),
        (200, 800),
        0.8,
        (150, 800),
        0.4,
        (0.4, 0.9),
        (0.3, 0.8),
    ),
    "reasoner": _Role(
        "critical", ("reasoning",), (300, 1000), 0.7, (300, 1500), 0.4, (0.6, 1.0), (0.7, 1.0)
    ),
    "writer": _Role(
        "standard", ("prose",), (150, 600), 0.4, (300, 1200), 0.5, (0.4, 0.8), (0.4, 0.9)
    ),
    "formatter": _Role(
        "peripheral", ("structured",), (80, 300), 0.2, (60, 300), 0.3, (0.3, 0.6), (0.2, 0.5)
    ),
}
_FIRST: Final = ("classifier", "retriever", "reasoner")
_MIDDLE: Final = ("retriever", "reasoner", "writer", "classifier", "retriever", "writer")
_LAST: Final = ("formatter", "formatter", "writer", "reasoner")
_PRIORITIES: Final = ("critical", "standard", "peripheral")

_MODELS: Final[tuple[tuple[str, tuple[float, float], tuple[float, float]], ...]] = (
    # name, input price range (USD per million), output / input price ratio range
    ("large", (2.5, 5.0), (4.0, 5.0)),
    ("medium", (0.5, 1.2), (3.0, 5.0)),
    ("small", (0.05, 0.2), (3.0, 5.0)),
)
_CAPABILITY: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "large": {"structured": (1.0, 1.0), "prose": (1.0, 1.0), "reasoning": (1.0, 1.0)},
    "medium": {"structured": (0.95, 1.0), "prose": (0.85, 0.97), "reasoning": (0.7, 0.9)},
    "small": {"structured": (0.9, 0.99), "prose": (0.7, 0.9), "reasoning": (0.4, 0.7)},
}


@dataclass(frozen=True)
class Generated:
    """A generated workload.

    Attributes:
        seed: the seed it was drawn from (also the workload's own ``seed``).
        spec: the workload document, YAML-ready (plain dicts, lists, numbers, strings).
        workload: ``Workload.from_dict(spec)``.
        median_need: the median total need per request (see the module docstring).
        default_ratio: the default ceiling over ``median_need``.
        roles: each agent's role (``classifier``, ``retriever``, ``reasoner``,
            ``writer``, ``formatter``), for reports.
    """

    seed: int
    spec: dict[str, Any]
    workload: Workload
    median_need: int
    default_ratio: float
    roles: tuple[str, ...]

    def at_ratio(self, ratio: float) -> Workload:
        """The same workload with its ceiling at ``ratio`` times the median need.

        Raises:
            ValueError: ``ratio`` is not a positive finite number.
        """
        if not math.isfinite(ratio) or ratio <= 0:
            raise ValueError(f"a ceiling ratio must be a positive number, got {ratio!r}")
        return replace(self.workload, ceiling=max(1, round(self.median_need * ratio)))

    def to_yaml(self) -> str:
        """The workload as a YAML file (``load_workload`` reads it back as ``workload``)."""
        return yaml.safe_dump(self.spec, sort_keys=False)


def median_need(workload: Workload, seed: int) -> int:
    """The median total need per request over the probe requests (module docstring)."""
    totals = [
        draw_needs(workload, seed, r).total
        for r in range(PROBE_START, PROBE_START + PROBE_REQUESTS)
    ]
    return round(statistics.median(totals))


def _pick(rng: random.Random, low: float, high: float, digits: int = 2) -> float:
    return round(rng.uniform(low, high), digits)


def _need(
    rng: random.Random,
    base: tuple[int, int],
    coefs: dict[str, tuple[float, float]],
    features: list[str],
    chance: float,
    noise: tuple[float, float],
    *,
    one: bool = False,
) -> dict[str, Any]:
    """One ``input`` or ``output`` section; ``one``: at most one per-feature term."""
    terms: dict[str, float] = {}
    order = list(features)
    rng.shuffle(order)
    for name in order:
        if rng.random() < chance and not (one and terms):
            low, high = coefs[name]
            terms[name] = round(math.exp(rng.uniform(math.log(low), math.log(high))), 3)
    section: dict[str, Any] = {"base": rng.randint(*base)}
    if terms:
        section["per_feature"] = {name: terms[name] for name in features if name in terms}
    section["noise"] = _pick(rng, *noise)
    return section


def _roles(rng: random.Random, count: int) -> list[str]:
    roles = [rng.choice(_FIRST)]
    roles += [rng.choice(_MIDDLE) for _ in range(count - 2)]
    roles.append(rng.choice(_LAST))
    return roles


def _after(rng: random.Random, index: int) -> list[str]:
    """Upstream agents of agent ``index``: usually the previous one, sometimes two."""
    if index == 0 or rng.random() < 0.08:
        return []
    chosen = {index - 1} if rng.random() < 0.7 else {rng.randrange(index)}
    if index > 1 and rng.random() < 0.35:
        chosen.add(rng.randrange(index))
    return [f"a{i}" for i in sorted(chosen)]


def _models(rng: random.Random) -> list[dict[str, Any]]:
    models = []
    for name, (low, high), (ratio_low, ratio_high) in _MODELS:
        price = _pick(rng, low, high, 3)
        models.append(
            {
                "name": name,
                "input_price": price,
                "output_price": round(price * rng.uniform(ratio_low, ratio_high), 3),
                "context_window": rng.choice((128_000, 200_000)),
                "max_output": rng.choice((8192, 16384)),
                "capability": {
                    kind: _pick(rng, *bounds, 3) for kind, bounds in _CAPABILITY[name].items()
                },
            }
        )
    return models


def generate_workload(seed: int, *, agents: int | None = None, models: bool = False) -> Generated:
    """Draw a workload from ``seed`` (see the module docstring).

    Args:
        seed: any non-negative integer; the same seed always gives the same workload.
        agents: the number of agents (3 to 8; default: drawn from the seed).
        models: add a ``models`` section (``large``, ``medium``, ``small``); every agent
            then defaults to ``large``.

    Returns:
        The generated workload, its document and its median need.

    Raises:
        ValueError: a negative seed or a number of agents outside 3..8.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = random.Random(f"apportion-generate-{seed}")
    count = rng.randint(3, 8) if agents is None else agents
    if isinstance(count, bool) or not isinstance(count, int) or not 3 <= count <= 8:
        raise ValueError(f"agents must be an integer from 3 to 8, got {agents!r}")
    names = list(_FEATURES)
    rng.shuffle(names)
    chosen = sorted(names[: rng.randint(2, 4)], key=list(_FEATURES).index)
    features: dict[str, Any] = {}
    for name in chosen:
        (low, high), (spread_low, spread_high) = _FEATURES[name]
        median = rng.randint(low, high)
        features[name] = {
            "median": median,
            "p90": round(median * rng.uniform(spread_low, spread_high), 1),
        }
    roles = _roles(rng, count)
    docs: list[dict[str, Any]] = []
    for index, role_name in enumerate(roles):
        role = _ROLES[role_name]
        after = _after(rng, index)
        priority = role.priority if rng.random() < 0.8 else rng.choice(_PRIORITIES)
        doc_input = _need(rng, role.input_base, _IN_COEF, chosen, role.reads, (0.05, 0.3))
        if after and rng.random() < 0.8:
            doc_input["upstream"] = True
        agent: dict[str, Any] = {
            "name": f"a{index}",
            "priority": priority,
            "after": after,
            "input": doc_input,
            "output": _need(
                rng, role.output_base, _OUT_COEF, chosen, role.output_grows, (0.1, 0.45), one=True
            ),
            "output_kind": rng.choice(role.kinds),
            "input_sensitivity": _pick(rng, *role.sensitivity),
            "influence": _pick(rng, *role.influence),
        }
        if models:
            agent["model"] = "large"
        docs.append(agent)
    if not any(a["priority"] == "critical" for a in docs):
        heaviest = max(range(count), key=lambda i: docs[i]["influence"])
        docs[heaviest]["priority"] = "critical"
    spec: dict[str, Any] = {
        "name": f"unseen-{seed}",
        "seed": seed,
        "requests": 1000,
        "ceiling": 1,
        "extension_overhead": "resend" if rng.random() < 0.8 else "none",
        "features": features,
        "agents": docs,
    }
    ratio = round(rng.uniform(*DEFAULT_RATIO), 3)
    if models:  # drawn last: the same seed gives the same pipeline with or without models
        spec["models"] = _models(rng)
    median = median_need(Workload.from_dict(spec), seed)
    spec["ceiling"] = max(1, round(median * ratio))
    return Generated(seed, spec, Workload.from_dict(spec), median, ratio, tuple(roles))


@dataclass(frozen=True)
class Shift:
    """A shifted traffic: requests from ``before`` up to ``at``, then from ``after``.

    Attributes:
        before: the generated workload served first.
        after: the same pipeline and hidden response parameters, other token needs.
        at: the first request index drawn from ``after``.
        factors: per agent, the ``(input, output)`` scale of its needs after the shift.
    """

    before: Generated
    after: Workload
    at: int
    factors: dict[str, tuple[float, float]]

    def workload_at(self, r: int) -> Workload:
        """The workload request ``r`` is drawn from (and played and scored with)."""
        return self.before.workload if r < self.at else self.after


def generate_shift(seed: int, requests: int, *, agents: int | None = None) -> Shift:
    """A generated workload whose needs change at request ``requests // 2``.

    Every agent's input and output sizes (``base`` and ``per_feature``) are scaled by
    factors drawn log-uniformly in [0.4, 2.5], and at least one agent's output by 2 or
    more, then all by one common factor so that the median total need after the shift is
    :data:`SHIFT_TOTAL` times the one before (the ceiling stays the one of a plausible
    workload): the split that was right before the shift is wrong after it. Names,
    priorities, ``after``, output kinds, sensitivities, influences, features, noise and the
    ceiling stay the same.

    Raises:
        ValueError: a negative seed, fewer than 2 requests, or a bad number of agents.
    """
    if requests < 2:
        raise ValueError(f"a shift needs at least 2 requests, got {requests}")
    before = generate_workload(seed, agents=agents)
    rng = random.Random(f"apportion-shift-{seed}")
    bumped = rng.randrange(len(before.workload.agents))
    drawn: dict[str, tuple[float, float]] = {}
    for index, agent in enumerate(before.workload.agents):
        scale_in = math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
        scale_out = math.exp(rng.uniform(math.log(0.4), math.log(2.5)))
        if index == bumped:
            scale_out = max(scale_out, rng.uniform(2.0, 3.0))
        drawn[agent.name] = (scale_in, scale_out)
    target = before.median_need * rng.uniform(*SHIFT_TOTAL)
    # needs are linear in base and per_feature: one pass to measure, one to rescale
    probe = _scaled(before.spec, drawn, 1.0)
    total = median_need(Workload.from_dict(probe), seed)
    spec = _scaled(before.spec, drawn, target / total)
    factors = {
        name: (round(a * target / total, 3), round(b * target / total, 3))
        for name, (a, b) in drawn.items()
    }
    return Shift(before, Workload.from_dict(spec), requests // 2, factors)


def _scaled(
    spec: dict[str, Any], factors: dict[str, tuple[float, float]], overall: float
) -> dict[str, Any]:
    """A copy of ``spec`` whose agents' sizes are scaled by ``factors`` times ``overall``."""
    copy: dict[str, Any] = yaml.safe_load(yaml.safe_dump(spec))
    for agent in copy["agents"]:
        for section, scale in zip(("input", "output"), factors[agent["name"]], strict=True):
            need = agent[section]
            need["base"] = max(1, round(need["base"] * scale * overall))
            if "per_feature" in need:
                need["per_feature"] = {
                    k: round(v * scale * overall, 4) for k, v in need["per_feature"].items()
                }
    copy["name"] = f"{spec['name']}-shifted"
    return copy


def shifted_needs(shift: Shift, seed: int, requests: int) -> list[RequestNeeds]:
    """The needs of ``requests`` requests of a shifted traffic (common random numbers)."""
    return [draw_needs(shift.workload_at(r), seed, r) for r in range(requests)]
