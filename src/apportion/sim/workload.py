"""Workload files: the pipeline and traffic a simulated bench serves.

A workload (``docs/workload-spec.md``, "Format") names the features drawn per
request, the agents run once per request in order (with their token needs and the hidden
response model's parameters), and optionally the models a routing policy may choose from.
The superset of ``docs/workload-trees.md`` adds agent trees and dynamic teams: an agent's
``probability`` of running, its number of ``calls`` per request, ``fan_out`` (one
instance per child, their number drawn per request) and a ``pool`` of names drawn per
request. A file without those keys means exactly what the normative format says.

:func:`load_workload` reads a YAML file; :meth:`Workload.from_dict` validates an
already-parsed mapping. Both raise :class:`~apportion.errors.SpecError` naming the file,
the line and the dotted key of the first mistake (``agents[1].input.per_feature.pages``).
Unknown keys are errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, NoReturn, cast

from apportion.errors import SpecError
from apportion.limits import excerpt, listing
from apportion.yamlfile import YamlList, YamlMap, load_yaml

__all__ = [
    "EXTENSION_OVERHEADS",
    "OUTPUT_KINDS",
    "PRIORITIES",
    "AgentSpec",
    "CountSpec",
    "ExtensionOverhead",
    "FeatureSpec",
    "ModelSpec",
    "NeedSpec",
    "OutputKind",
    "PoolSpec",
    "Priority",
    "Workload",
    "load_workload",
]

Priority = Literal["critical", "standard", "peripheral"]
OutputKind = Literal["structured", "prose", "reasoning"]
ExtensionOverhead = Literal["resend", "none"]

PRIORITIES: Final[tuple[Priority, ...]] = ("critical", "standard", "peripheral")
OUTPUT_KINDS: Final[tuple[OutputKind, ...]] = ("structured", "prose", "reasoning")
EXTENSION_OVERHEADS: Final[tuple[ExtensionOverhead, ...]] = ("resend", "none")

#: z such that P(N(0, 1) <= z) = 0.9, as written in the spec.
_Z90: Final = 1.2816

_TOP_KEYS = frozenset(
    {
        "name",
        "seed",
        "requests",
        "ceiling",
        "ceiling_usd",
        "extension_overhead",
        "features",
        "agents",
        "models",
    }
)
_FEATURE_KEYS = frozenset({"median", "p90"})
_AGENT_KEYS = frozenset(
    {
        "name",
        "priority",
        "after",
        "input",
        "output",
        "output_kind",
        "input_sensitivity",
        "influence",
        "model",
        "probability",
        "calls",
        "fan_out",
        "pool",
    }
)
_COUNT_KEYS = frozenset({"median", "p90", "per_feature"})
_POOL_KEYS = frozenset({"size", "draw", "listed"})
_INPUT_KEYS = frozenset({"base", "per_feature", "upstream", "noise"})
_OUTPUT_KEYS = frozenset({"base", "per_feature", "noise"})
_MODEL_KEYS = frozenset(
    {"name", "input_price", "output_price", "context_window", "max_output", "capability"}
)
_EMPTY: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True)
class FeatureSpec:
    """A request feature, drawn log-normally once per request.

    Attributes:
        name: the feature's name (``messages``).
        median: the median of the drawn value (> 0).
        p90: the 90th percentile (>= median).
    """

    name: str
    median: float
    p90: float

    @property
    def sigma(self) -> float:
        """Sigma of the underlying normal: ``ln(p90 / median) / 1.2816``."""
        return math.log(self.p90 / self.median) / _Z90


@dataclass(frozen=True)
class NeedSpec:
    """How many tokens an agent needs, as a function of the request's features.

    The need is ``(base + sum(coef * feature) [+ U]) * exp(N(0, noise))``, rounded, at
    least 1; ``U`` (the upstream agents' output needs) is added only when ``upstream``.

    Attributes:
        base: tokens needed regardless of features.
        per_feature: tokens per unit of each named feature.
        upstream: add the upstream agents' output needs (input needs only).
        noise: sigma of the multiplicative log-normal factor (0 = none).
    """

    base: float
    per_feature: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    upstream: bool = False
    noise: float = 0.0

    def mean_free(self, features: Mapping[str, int]) -> float:
        """``base + sum(coef * feature)``: the need before ``U`` and noise."""
        return self.base + sum(coef * features[name] for name, coef in self.per_feature.items())


@dataclass(frozen=True)
class CountSpec:
    """A count drawn per request (calls, children, team members): log-normal, rounded.

    The count is ``max(least, round((median + sum(coef * feature)) * exp(sigma * z)))``
    with ``sigma = ln(p90 / median) / 1.2816``, ``z`` a standard normal.

    Attributes:
        median: the median count when every ``per_feature`` term is 0 (> 0).
        p90: its 90th percentile (>= median).
        per_feature: added to the median per unit of each named feature.
    """

    median: float
    p90: float
    per_feature: Mapping[str, float] = field(default_factory=lambda: _EMPTY)

    @property
    def sigma(self) -> float:
        """Sigma of the underlying normal: ``ln(p90 / median) / 1.2816``."""
        return math.log(self.p90 / self.median) / _Z90

    def draw(self, features: Mapping[str, int], z: float, least: int = 1) -> int:
        """The count for a request with these ``features`` and standard normal ``z``."""
        centre = self.median + sum(c * features[name] for name, c in self.per_feature.items())
        return max(least, round(centre * math.exp(self.sigma * z)))


@dataclass(frozen=True)
class PoolSpec:
    """A pool of names an agent's instances are drawn from, per request.

    Attributes:
        size: how many names the pool has (``NAME:000`` ... with the agent's name).
        draw: how many distinct names a request draws (at most ``size``).
        listed: the pipeline a policy sees lists every name of the pool as an agent (the
            way teams are declared without agent kinds); by default the pool is one agent
            kind (``NAME:*``).
    """

    size: int
    draw: CountSpec
    listed: bool = False

    def names(self, agent: str) -> tuple[str, ...]:
        """Every name of the pool, in order."""
        width = len(str(self.size - 1))
        return tuple(f"{agent}:{i:0{width}d}" for i in range(self.size))


@dataclass(frozen=True)
class ModelSpec:
    """A model a routing policy may run an agent call on.

    Attributes:
        name: the model's name.
        input_price: USD per million input tokens.
        output_price: USD per million output tokens.
        context_window: input + output tokens one call may not exceed.
        max_output: output tokens one call may not exceed.
        capability: quality factor per output kind (``structured``, ``prose``,
            ``reasoning``), each in [0, 1].
    """

    name: str
    input_price: float
    output_price: float
    context_window: int
    max_output: int
    capability: Mapping[str, float]

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD cost of a call that reads ``input_tokens`` and writes ``output_tokens``."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the pipeline, with its needs and hidden response parameters.

    Attributes:
        name: unique name.
        priority: the user's belief (``critical``, ``standard``, ``peripheral``), visible
            to policies.
        after: names of the upstream agents whose outputs it reads (all earlier).
        input: the context-token need.
        output: the output-token need (``upstream`` is always false).
        output_kind: ``structured``, ``prose`` or ``reasoning``.
        input_sensitivity: beta, the exponent of input coverage (hidden).
        influence: the agent's weight in the request quality (hidden).
        model: the model the user configured by default, or ``None``.
        probability: the chance that each of its instances runs in a request (1: always).
        calls: how many calls each instance that runs makes, or ``None`` for one.
        fan_out: how many instances (children of the agents in ``after``) a request
            starts, named ``NAME:1`` ..., or ``None``.
        pool: the pool of names its instances are drawn from per request, or ``None``.
    """

    name: str
    priority: Priority
    after: tuple[str, ...]
    input: NeedSpec
    output: NeedSpec
    output_kind: OutputKind = "prose"
    input_sensitivity: float = 1.0
    influence: float = 1.0
    model: str | None = None
    probability: float = 1.0
    calls: CountSpec | None = None
    fan_out: CountSpec | None = None
    pool: PoolSpec | None = None

    @property
    def dynamic(self) -> bool:
        """Whether it uses the tree keys (its runs vary by request beyond its needs)."""
        return (
            self.probability < 1.0
            or self.calls is not None
            or self.fan_out is not None
            or self.pool is not None
        )

    @property
    def is_kind(self) -> bool:
        """Whether a policy sees it as an agent kind (its instances are not listed)."""
        return self.fan_out is not None or (self.pool is not None and not self.pool.listed)


@dataclass(frozen=True)
class Workload:
    """A validated workload file.

    Attributes:
        name: free text shown in reports.
        seed: the default RNG seed, or ``None`` if the file gives none (the CLI must).
        requests: the default number of requests, or ``None``.
        ceiling: the default per-request token ceiling, or ``None``.
        extension_overhead: ``resend`` or ``none``.
        features: the features, in declaration order.
        agents: the agents, in run order.
        models: the models offered for routing (empty: one implicit model).
        ceiling_usd: the default per-request cost ceiling, or ``None``. It applies only
            when ``models`` is not empty.
    """

    name: str
    seed: int | None
    requests: int | None
    ceiling: int | None
    extension_overhead: ExtensionOverhead
    features: tuple[FeatureSpec, ...]
    agents: tuple[AgentSpec, ...]
    models: tuple[ModelSpec, ...] = ()
    ceiling_usd: float | None = None

    @property
    def agent_names(self) -> tuple[str, ...]:
        """The agents' names, in run order."""
        return tuple(agent.name for agent in self.agents)

    @property
    def dynamic(self) -> bool:
        """Whether an agent uses the tree keys (``docs/workload-trees.md``)."""
        return any(agent.dynamic for agent in self.agents)

    def agent_index(self, name: str) -> int:
        """Position of the agent called ``name``.

        Raises:
            KeyError: no agent has that name.
        """
        for index, agent in enumerate(self.agents):
            if agent.name == name:
                return index
        raise KeyError(name)

    def upstream_indices(self, index: int) -> tuple[int, ...]:
        """Positions of the agents listed in ``after`` of agent ``index``."""
        return tuple(self.agent_index(name) for name in self.agents[index].after)

    def model(self, name: str) -> ModelSpec:
        """The model called ``name``.

        Raises:
            KeyError: no model has that name.
        """
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], file: str | None = None) -> Workload:
        """Validate a parsed workload document.

        Args:
            data: the document: a :class:`~apportion.yamlfile.YamlMap` (errors then name
                lines) or any mapping built in code.
            file: the file name to put in errors when ``data`` does not carry one.

        Returns:
            The workload.

        Raises:
            SpecError: the document breaks the workload format; the error names the file,
                the line (when known) and the dotted key.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"a workload must be a mapping, got {_kind(data)}", file=file)
        return _parse_workload(_wrap(data, file, ""))


def load_workload(path: str | Path) -> Workload:
    """Read and validate a workload YAML file.

    Args:
        path: the file.

    Returns:
        The workload.

    Raises:
        SpecError: the file cannot be read, is not YAML, or breaks the workload format.
    """
    return Workload.from_dict(load_yaml(path), str(path))


# --------------------------------------------------------------------------- parsing


def _wrap(value: Any, file: str | None, path: str) -> Any:
    """Turn plain dicts and lists into YamlMap / YamlList (without line numbers)."""
    if isinstance(value, YamlMap):
        if value.file is None and file is not None:
            value.file = file
        return value
    if isinstance(value, YamlList):
        return value
    if isinstance(value, Mapping):
        result = YamlMap()
        result.file, result.line, result.path, result.key_lines = file, None, path, {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SpecError(f"key {excerpt(key)} is not a string", file=file, key=path or None)
            child = f"{path}.{key}" if path else key
            result[key] = _wrap(item, file, child)
        return result
    if isinstance(value, list | tuple):
        items = YamlList()
        items.file, items.line, items.path, items.item_lines = file, None, path, []
        for index, item in enumerate(value):
            items.append(_wrap(item, file, f"{path}[{index}]"))
        return items
    return value


def _item_map(items: YamlList, index: int, what: str) -> YamlMap:
    value = items[index]
    if not isinstance(value, YamlMap):
        _list_fail(items, index, f"each {what} must be a mapping, got {_kind(value)}")
    if value.line is None and index < len(items.item_lines):
        value.line = items.item_lines[index]
    return value


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {excerpt(value)}"
    return excerpt(value)


def _map(owner: YamlMap, key: str, *, optional: bool = True) -> YamlMap:
    """``owner[key]`` as a mapping (an empty one when absent and optional)."""
    if key not in owner:
        if not optional:
            owner.fail(None, f"missing required key '{key}'")
        empty = YamlMap()
        empty.file, empty.line, empty.path, empty.key_lines = (
            owner.file,
            owner.line,
            owner.key_path(key),
            {},
        )
        return empty
    value = owner[key]
    if not isinstance(value, YamlMap):
        owner.fail(key, f"must be a mapping, got {_kind(value)}")
    if value.line is None:
        value.line = owner.key_lines.get(key, owner.line)
    return value


def _list(owner: YamlMap, key: str) -> YamlList:
    """``owner[key]`` as a list (an empty one when absent)."""
    if key not in owner:
        empty = YamlList()
        empty.file, empty.line, empty.path, empty.item_lines = (
            owner.file,
            owner.line,
            owner.key_path(key),
            [],
        )
        return empty
    value = owner[key]
    if not isinstance(value, YamlList):
        owner.fail(key, f"must be a list, got {_kind(value)}")
    if value.line is None:
        value.line = owner.key_lines.get(key, owner.line)
    return value


def _list_fail(items: YamlList, index: int, problem: str) -> NoReturn:
    """Fail about item ``index``, at its line when known, else at the list's line."""
    if index < len(items.item_lines):
        items.fail(index, problem)
    raise SpecError(problem, file=items.file, line=items.line, key=items.item_path(index))


def _name(owner: YamlMap, key: str) -> str:
    if key not in owner:
        owner.fail(None, f"missing required key '{key}'")
    value = owner[key]
    if not isinstance(value, str) or not value.strip():
        owner.fail(key, f"must be a non-empty string, got {_kind(value)}")
    return value


def _number(owner: YamlMap, key: str, default: float | None = None) -> float:
    """A finite, non-negative number (``default`` when absent; required if no default)."""
    if key not in owner:
        if default is None:
            owner.fail(None, f"missing required key '{key}'")
        return default
    return _check_number(owner, key, owner[key])


def _check_number(owner: YamlMap, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        owner.fail(key, f"must be a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int past a float's range (from a dict built in code)
        number = math.inf
    if not math.isfinite(number):
        owner.fail(key, f"must be finite, got {excerpt(value)}")
    if number < 0:
        owner.fail(key, f"must be non-negative, got {excerpt(value)}")
    return number


def _integer(owner: YamlMap, key: str, minimum: int) -> int | None:
    """An integer >= ``minimum`` (an integral float is accepted), or ``None`` if absent."""
    if key not in owner:
        return None
    value = owner[key]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        owner.fail(key, f"must be an integer, got {_kind(value)}")
    if value < minimum:
        owner.fail(key, f"must be at least {minimum}, got {value}")
    return value


def _choice(owner: YamlMap, key: str, allowed: tuple[str, ...], default: str | None) -> str:
    if key not in owner:
        if default is None:
            owner.fail(None, f"missing required key '{key}'")
        return default
    value = owner[key]
    if not isinstance(value, str) or value not in allowed:
        owner.fail(key, f"must be one of {' | '.join(allowed)}, got {_kind(value)}")
    return value


def _parse_workload(root: Any) -> Workload:
    if not isinstance(root, YamlMap):
        raise SpecError(f"a workload must be a mapping, got {_kind(root)}")
    root.check_keys(_TOP_KEYS, ("name", "agents"))
    name = _name(root, "name")
    seed = _integer(root, "seed", 0)
    requests = _integer(root, "requests", 1)
    ceiling = _integer(root, "ceiling", 1)
    overhead = cast(
        ExtensionOverhead, _choice(root, "extension_overhead", EXTENSION_OVERHEADS, "resend")
    )
    ceiling_usd: float | None = None
    if "ceiling_usd" in root:
        ceiling_usd = _number(root, "ceiling_usd")
        if ceiling_usd <= 0:
            root.fail("ceiling_usd", f"must be positive, got {root['ceiling_usd']!r}")

    features = _parse_features(_map(root, "features"))
    feature_names = {feature.name for feature in features}

    agent_items = _list(root, "agents")
    if not agent_items:
        root.fail("agents", "must list at least one agent")
    agents: list[AgentSpec] = []
    agent_maps: list[YamlMap] = []
    earlier: dict[str, None] = {}  # the names so far, in order, with set lookups
    for index in range(len(agent_items)):
        entry = _item_map(agent_items, index, "agent")
        agents.append(_parse_agent(entry, feature_names, earlier))
        earlier[agents[-1].name] = None
        agent_maps.append(entry)

    models = _parse_models(_list(root, "models"))
    model_names = {model.name: None for model in models}
    for agent, entry in zip(agents, agent_maps, strict=True):
        if agent.model is None:
            continue
        if not models:
            entry.fail(
                "model", f"names model {excerpt(agent.model)}, but the workload has no 'models'"
            )
        if agent.model not in model_names:
            entry.fail(
                "model",
                f"unknown model {excerpt(agent.model)}; the workload has: {listing(model_names)}",
            )
    if models:
        used = {agent.output_kind for agent in agents}
        model_items = _list(root, "models")
        for index, model in enumerate(models):
            missing = sorted(used - set(model.capability))
            if missing:
                entry = _item_map(model_items, index, "model")
                entry.fail(
                    "capability",
                    f"gives no capability for output kind {', '.join(missing)} used by an agent",
                )
    return Workload(
        name=name,
        seed=seed,
        requests=requests,
        ceiling=ceiling,
        extension_overhead=overhead,
        features=features,
        agents=tuple(agents),
        models=models,
        ceiling_usd=ceiling_usd,
    )


def _parse_features(section: YamlMap) -> tuple[FeatureSpec, ...]:
    features = []
    for name in section:
        entry = _map(section, name, optional=False)
        entry.check_keys(_FEATURE_KEYS, ("median", "p90"))
        median = _number(entry, "median")
        p90 = _number(entry, "p90")
        if median <= 0:
            entry.fail("median", f"must be positive, got {entry['median']!r}")
        if p90 < median:
            entry.fail(
                "p90", f"must be at least the median ({entry['median']!r}), got {entry['p90']!r}"
            )
        features.append(FeatureSpec(name=name, median=median, p90=p90))
    return tuple(features)


def _parse_agent(entry: YamlMap, feature_names: set[str], earlier: Mapping[str, None]) -> AgentSpec:
    entry.check_keys(_AGENT_KEYS, ("name", "priority", "input", "output"))
    name = _name(entry, "name")
    if name in earlier:
        entry.fail("name", f"agent name {excerpt(name)} is used twice")
    priority = cast(Priority, _choice(entry, "priority", PRIORITIES, None))
    after_items = _list(entry, "after")
    after: dict[str, None] = {}
    for index, upstream in enumerate(after_items):
        if not isinstance(upstream, str):
            _list_fail(after_items, index, f"must name an agent, got {_kind(upstream)}")
        elif upstream == name:
            _list_fail(after_items, index, f"agent {excerpt(name)} cannot run after itself")
        elif upstream not in earlier:
            _list_fail(
                after_items,
                index,
                f"{excerpt(upstream)} is not an earlier agent; 'after' may name only agents "
                f"listed before {excerpt(name)}" + (f" ({listing(earlier)})" if earlier else ""),
            )
        elif upstream in after:
            _list_fail(after_items, index, f"{excerpt(upstream)} is listed twice")
        after[upstream] = None
    need_in = _parse_need(_map(entry, "input", optional=False), feature_names, _INPUT_KEYS)
    need_out = _parse_need(_map(entry, "output", optional=False), feature_names, _OUTPUT_KEYS)
    kind = cast(OutputKind, _choice(entry, "output_kind", OUTPUT_KINDS, "prose"))
    model: str | None = None
    if "model" in entry:
        model = _name(entry, "model")
    probability = _number(entry, "probability", 1.0)
    if probability > 1:
        entry.fail("probability", f"a probability is at most 1, got {entry['probability']!r}")
    calls = _parse_count(entry, "calls", feature_names)
    fan_out = _parse_count(entry, "fan_out", feature_names)
    pool = None
    if "pool" in entry:
        if fan_out is not None:
            entry.fail("pool", "an agent has either 'fan_out' or 'pool', not both")
        section = _map(entry, "pool")
        section.check_keys(_POOL_KEYS, ("size", "draw"))
        size = _integer(section, "size", 1)
        draw = _parse_count(section, "draw", feature_names)
        assert size is not None and draw is not None  # required keys
        listed = section.get("listed", False)
        if not isinstance(listed, bool):
            section.fail("listed", f"must be true or false, got {_kind(listed)}")
        pool = PoolSpec(size=size, draw=draw, listed=listed)
    return AgentSpec(
        name=name,
        priority=priority,
        after=tuple(after),
        input=need_in,
        output=need_out,
        output_kind=kind,
        input_sensitivity=_number(entry, "input_sensitivity", 1.0),
        influence=_number(entry, "influence", 1.0),
        model=model,
        probability=probability,
        calls=calls,
        fan_out=fan_out,
        pool=pool,
    )


def _parse_count(owner: YamlMap, key: str, feature_names: set[str]) -> CountSpec | None:
    """``owner[key]``: a count as ``{median, p90[, per_feature]}`` or an integer; or ``None``."""
    if key not in owner:
        return None
    value = owner[key]
    if not isinstance(value, YamlMap):
        fixed = _integer(owner, key, 1)
        assert fixed is not None
        return CountSpec(median=fixed, p90=fixed)
    section = _map(owner, key)
    section.check_keys(_COUNT_KEYS, ("median", "p90"))
    median = _number(section, "median")
    p90 = _number(section, "p90")
    if median <= 0:
        section.fail("median", f"must be positive, got {section['median']!r}")
    if p90 < median:
        section.fail(
            "p90", f"must be at least the median ({section['median']!r}), got {section['p90']!r}"
        )
    coefficients = _map(section, "per_feature")
    per_feature: dict[str, float] = {}
    for feature, coef in coefficients.items():
        if feature not in feature_names:
            declared = listing(sorted(feature_names)) or "none"
            coefficients.fail(feature, f"unknown feature {excerpt(feature)}; declared: {declared}")
        per_feature[feature] = _check_number(coefficients, feature, coef)
    return CountSpec(median=median, p90=p90, per_feature=MappingProxyType(per_feature))


def _parse_need(section: YamlMap, feature_names: set[str], allowed: frozenset[str]) -> NeedSpec:
    if "upstream" in section and "upstream" not in allowed:
        section.fail("upstream", "'upstream' applies only to an agent's input need")
    section.check_keys(allowed, ("base",))
    base = _number(section, "base")
    coefficients = _map(section, "per_feature")
    per_feature: dict[str, float] = {}
    for feature, coef in coefficients.items():
        if feature not in feature_names:
            declared = listing(sorted(feature_names)) or "none"
            coefficients.fail(feature, f"unknown feature {excerpt(feature)}; declared: {declared}")
        per_feature[feature] = _check_number(coefficients, feature, coef)
    upstream = False
    if "upstream" in section:
        value = section["upstream"]
        if not isinstance(value, bool):
            section.fail("upstream", f"must be true or false, got {_kind(value)}")
        upstream = value
    return NeedSpec(
        base=base,
        per_feature=MappingProxyType(per_feature),
        upstream=upstream,
        noise=_number(section, "noise", 0.0),
    )


def _parse_models(items: YamlList) -> tuple[ModelSpec, ...]:
    models: list[ModelSpec] = []
    names: set[str] = set()
    for index in range(len(items)):
        entry = _item_map(items, index, "model")
        entry.check_keys(_MODEL_KEYS, tuple(sorted(_MODEL_KEYS)))
        name = _name(entry, "name")
        if name in names:
            entry.fail("name", f"model name {excerpt(name)} is used twice")
        names.add(name)
        window = _integer(entry, "context_window", 1)
        max_output = _integer(entry, "max_output", 1)
        assert window is not None and max_output is not None  # required keys
        table = _map(entry, "capability", optional=False)
        capability: dict[str, float] = {}
        for kind, value in table.items():
            if kind not in OUTPUT_KINDS:
                table.fail(
                    kind, f"unknown output kind {excerpt(kind)}; use {' | '.join(OUTPUT_KINDS)}"
                )
            number = _check_number(table, kind, value)
            if number > 1:
                table.fail(kind, f"a capability is at most 1, got {value!r}")
            capability[kind] = number
        models.append(
            ModelSpec(
                name=name,
                input_price=_number(entry, "input_price"),
                output_price=_number(entry, "output_price"),
                context_window=window,
                max_output=max_output,
                capability=MappingProxyType(capability),
            )
        )
    return tuple(models)
