"""Pipelines and their agents: the static description a controller budgets for.

An :class:`Agent` is one named step of an orchestration: how much it matters
(:class:`Priority`), which agents must run before it (``after``), what it writes
(:class:`OutputKind`), output bounds, and an optional estimator of its output size. A
:class:`Pipeline` is the agents of one orchestration, checked to form a DAG and kept in a
valid execution order.

Both validate on construction and raise :class:`~apportion.errors.SpecError`. A pipeline
can be read from YAML (:meth:`Pipeline.from_yaml`); errors then name the file, the line and
the dotted key of the mistake (``agents[2].after``). Objects built in code and objects read
from YAML go through the same checks, so the same mistake gives the same problem text::

    name: support            # optional
    agents:
      - name: triage
        priority: peripheral
        output_kind: structured
      - name: reasoner
        priority: critical
        after: [triage]
        output_kind: reasoning
        estimator: {base: 300, per_feature: {messages: 20}, per_input: 0.05}
        typical_input: 6000   # optional: what a call usually reads and writes, a prior
        typical_output: 900   # for the policies until they have seen the agent run
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import heapq
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeAlias

import yaml

from apportion.errors import KindConflict, SpecError, UnknownAgent
from apportion.files import write_atomic
from apportion.limits import excerpt, is_text, listing
from apportion.yamlfile import YamlList, YamlMap, load_yaml

__all__ = [
    "Agent",
    "AgentKind",
    "Estimator",
    "LinearEstimator",
    "OutputKind",
    "Pipeline",
    "Priority",
]


class Priority(enum.StrEnum):
    """How much an agent's budget matters to the request's outcome.

    ``critical`` agents keep a reservation that ``peripheral`` agents cannot drain.
    """

    CRITICAL = "critical"
    STANDARD = "standard"
    PERIPHERAL = "peripheral"

    @property
    def rank(self) -> int:
        """Order of importance: critical 2, standard 1, peripheral 0."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK: dict[Priority, int] = {
    Priority.CRITICAL: 2,
    Priority.STANDARD: 1,
    Priority.PERIPHERAL: 0,
}


class OutputKind(enum.StrEnum):
    """What an agent writes, which shapes how its output size varies."""

    STRUCTURED = "structured"
    PROSE = "prose"
    REASONING = "reasoning"


# A callable estimating an agent's output tokens from the request's features and, when
# known, its input tokens: ``estimator(features, input_tokens) -> float``.
Estimator: TypeAlias = Callable[[Mapping[str, float], int | None], float]


def _number(value: object, key: str) -> float:
    """Return ``value`` as a finite float, or raise SpecError about ``key``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"must be a number, not {_describe(value)}", key=key)
    try:
        result = float(value)
    except OverflowError:  # an int past a float's range
        result = math.inf
    if not math.isfinite(result):
        raise SpecError(f"must be a finite number, not {excerpt(value)}", key=key)
    return result


def _plain_number(value: float) -> int | float:
    """Return an integral float as an int, for tidier YAML."""
    return int(value) if value.is_integer() else value


@dataclasses.dataclass(frozen=True, slots=True)
class LinearEstimator:
    """Expected output tokens = base + sum(coef * features[name]) + per_input * input_tokens.

    Missing features (and an unknown ``input_tokens``) count as 0; the estimate is never
    negative.

    Attributes:
        base: tokens expected whatever the request.
        per_feature: coefficient per request feature (a read-only mapping).
        per_input: tokens expected per input token.
    """

    base: float = 0.0
    per_feature: Mapping[str, float] = field(default_factory=dict)
    per_input: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _number(self.base, "base"))
        object.__setattr__(self, "per_input", _number(self.per_input, "per_input"))
        if not isinstance(self.per_feature, Mapping):
            raise SpecError(
                f"must be a mapping of feature name to coefficient, not "
                f"{_describe(self.per_feature)}",
                key="per_feature",
            )
        coefficients: dict[str, float] = {}
        for name, coef in self.per_feature.items():
            if not isinstance(name, str) or not name:
                raise SpecError(
                    f"feature names must be non-empty strings, not {excerpt(name)}",
                    key="per_feature",
                )
            coefficients[name] = _number(coef, f"per_feature.{name}")
        object.__setattr__(self, "per_feature", MappingProxyType(coefficients))

    def __call__(self, features: Mapping[str, float], input_tokens: int | None = None) -> float:
        """Estimate output tokens.

        Args:
            features: the request's features; missing ones count as 0.
            input_tokens: the agent's input tokens, if known.

        Returns:
            The estimate, at least 0.
        """
        total = self.base
        for name, coef in self.per_feature.items():
            value = features.get(name)
            if value is not None:
                total += coef * float(value)
        if input_tokens is not None:
            total += self.per_input * input_tokens
        return max(0.0, total)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinearEstimator):
            return NotImplemented
        return (self.base, dict(self.per_feature), self.per_input) == (
            other.base,
            dict(other.per_feature),
            other.per_input,
        )

    def __hash__(self) -> int:
        return hash((self.base, frozenset(self.per_feature.items()), self.per_input))

    def __repr__(self) -> str:
        return (
            f"LinearEstimator(base={self.base!r}, per_feature={dict(self.per_feature)!r}, "
            f"per_input={self.per_input!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (LinearEstimator, (self.base, dict(self.per_feature), self.per_input))

    def to_dict(self) -> dict[str, Any]:
        """Return a YAML-ready mapping, omitting zero terms."""
        result: dict[str, Any] = {}
        if self.base:
            result["base"] = _plain_number(self.base)
        if self.per_feature:
            result["per_feature"] = {k: _plain_number(v) for k, v in self.per_feature.items()}
        if self.per_input:
            result["per_input"] = _plain_number(self.per_input)
        return result


def _describe(value: object) -> str:
    """Name a wrong value in an error message."""
    if value is None:
        return "null"
    return f"{type(value).__name__} {excerpt(value, 40)}"


def _short(name: str) -> str:
    """A name as it is, or an excerpt of a long one."""
    return name if len(name) <= 40 else excerpt(name, 40)


def _choice(enum_type: type[Priority] | type[OutputKind], value: object, key: str) -> Any:
    """Return ``value`` as a member of ``enum_type``, or raise SpecError about ``key``."""
    if isinstance(value, enum_type):
        return value
    allowed = ", ".join(member.value for member in enum_type)
    if isinstance(value, str):
        try:
            return enum_type(value.strip().lower())
        except ValueError:
            pass
    raise SpecError(f"must be one of: {allowed}; got {excerpt(value)}", key=key)


def _count(value: object, key: str) -> int:
    """Return ``value`` as a non-negative int (not a bool or float), or raise SpecError."""
    if isinstance(value, bool):
        raise SpecError(f"must be a non-negative integer, not {_describe(value)}", key=key)
    try:
        result = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise SpecError(
            f"must be a non-negative integer, not {_describe(value)}", key=key
        ) from None
    if result < 0:
        raise SpecError(f"must be a non-negative integer, not {result}", key=key)
    return result


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Agent:
    """One named step of a pipeline.

    Strings are accepted for ``priority`` and ``output_kind``, and any sequence of names
    for ``after``; they are normalised to :class:`Priority`, :class:`OutputKind` and a
    tuple. Positional use works: ``Agent("triage", "peripheral")``.

    Attributes:
        name: unique name in its pipeline.
        priority: how much its budget matters.
        after: names of the agents that must finish before it starts.
        output_kind: what it writes.
        model: the model it calls, if known.
        min_output: fewest output tokens worth granting.
        max_output: most output tokens it may ever be granted, or ``None``.
        estimator: estimates its output tokens from request features, or ``None``.
        typical_input: the input tokens a call of this agent usually has, or ``None``:
            a prior for the predicting policies until they have seen the agent run.
        typical_output: the output tokens a call usually writes, or ``None`` (a prior,
            as ``typical_input``).

    Raises:
        SpecError: a field is invalid; ``key`` names the field.
    """

    name: str
    priority: Priority = Priority.STANDARD
    after: tuple[str, ...] = ()
    output_kind: OutputKind = OutputKind.PROSE
    model: str | None = None
    min_output: int = 1
    max_output: int | None = None
    estimator: Estimator | None = None
    typical_input: int | None = None
    typical_output: int | None = None

    def __init__(
        self,
        name: str,
        priority: Priority | str = Priority.STANDARD,
        after: Sequence[str] | None = (),
        output_kind: OutputKind | str = OutputKind.PROSE,
        model: str | None = None,
        min_output: int = 1,
        max_output: int | None = None,
        estimator: Estimator | None = None,
        typical_input: int | None = None,
        typical_output: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"must be a non-empty string, not {_describe(name)}", key="name")
        if not is_text(name):
            raise SpecError("must be valid text, not one holding a lone surrogate", key="name")
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "priority", _choice(Priority, priority, "priority"))
        setattr_(self, "after", self._check_after(name, after))
        setattr_(self, "output_kind", _choice(OutputKind, output_kind, "output_kind"))
        if model is not None and (not isinstance(model, str) or not model or not is_text(model)):
            raise SpecError(
                f"must be a non-empty string (valid text) or null, not {_describe(model)}",
                key="model",
            )
        setattr_(self, "model", model)
        checked_min = _count(min_output, "min_output")
        setattr_(self, "min_output", checked_min)
        if max_output is not None:
            checked_max = _count(max_output, "max_output")
            if checked_max < max(checked_min, 1):
                raise SpecError(
                    f"must be at least max(min_output, 1) = {max(checked_min, 1)}, "
                    f"not {checked_max}",
                    key="max_output",
                )
            max_output = checked_max
        setattr_(self, "max_output", max_output)
        if estimator is not None and not callable(estimator):
            raise SpecError(
                f"must be callable (e.g. a LinearEstimator) or null, not {_describe(estimator)}",
                key="estimator",
            )
        setattr_(self, "estimator", estimator)
        for key, typical in (("typical_input", typical_input), ("typical_output", typical_output)):
            setattr_(self, key, None if typical is None else _count(typical, key))

    @staticmethod
    def _check_after(name: str, after: object) -> tuple[str, ...]:
        if after is None:
            return ()
        if isinstance(after, str | bytes) or not isinstance(after, Sequence):
            raise SpecError(f"must be a list of agent names, not {_describe(after)}", key="after")
        seen: dict[str, None] = {}  # a set that keeps the order given
        for upstream in after:
            if not isinstance(upstream, str) or not upstream:
                raise SpecError(
                    f"agent names must be non-empty strings, not {_describe(upstream)}",
                    key="after",
                )
            if upstream in seen:
                raise SpecError(f"{excerpt(upstream)} is listed twice", key="after")
            if upstream == name:
                raise SpecError(
                    f"agent {excerpt(name)} lists itself: a cycle "
                    f"({_short(name)} -> {_short(name)})",
                    key="after",
                )
            seen[upstream] = None
        return tuple(seen)

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.priority is not Priority.STANDARD:
            parts.append(f"priority={self.priority.value!r}")
        if self.after:
            parts.append(f"after={list(self.after)!r}")
        if self.output_kind is not OutputKind.PROSE:
            parts.append(f"output_kind={self.output_kind.value!r}")
        if self.model is not None:
            parts.append(f"model={self.model!r}")
        if self.min_output != 1:
            parts.append(f"min_output={self.min_output!r}")
        if self.max_output is not None:
            parts.append(f"max_output={self.max_output!r}")
        if self.estimator is not None:
            parts.append(f"estimator={self.estimator!r}")
        if self.typical_input is not None:
            parts.append(f"typical_input={self.typical_input!r}")
        if self.typical_output is not None:
            parts.append(f"typical_output={self.typical_output!r}")
        return f"Agent({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """Return a YAML-ready mapping, omitting fields left at their defaults.

        A :class:`LinearEstimator` is written out; any other estimator is omitted.
        """
        result: dict[str, Any] = {"name": self.name}
        if self.priority is not Priority.STANDARD:
            result["priority"] = self.priority.value
        if self.after:
            result["after"] = list(self.after)
        if self.output_kind is not OutputKind.PROSE:
            result["output_kind"] = self.output_kind.value
        if self.model is not None:
            result["model"] = self.model
        if self.min_output != 1:
            result["min_output"] = self.min_output
        if self.max_output is not None:
            result["max_output"] = self.max_output
        if isinstance(self.estimator, LinearEstimator):
            result["estimator"] = self.estimator.to_dict()
        if self.typical_input is not None:
            result["typical_input"] = self.typical_input
        if self.typical_output is not None:
            result["typical_output"] = self.typical_output
        return result


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class AgentKind:
    """Agents not named up front (sub-agents, per-run teams), budgeted as one kind.

    A kind matches agent names at run time: ``match`` holds glob patterns (``*`` any run
    of characters, ``?`` one character; ``expert:*``), and a ``default`` kind matches
    every name that no listed agent and no pattern matches. A call of a matching name is
    budgeted as the kind: its priority, output kind, output bounds, estimator and typical
    sizes are the kind's, and the ledger counts it on the kind's line (its own name stays
    on its call record). A listed agent's name is never matched by a kind.

    Args:
        name: the kind's name: its line in the ledger and summaries (unique among the
            pipeline's agents and kinds).
        match: a glob pattern or a list of them (empty only for a default kind).
        default: match every name nothing else matches (at most one per pipeline).
        **agent: the template's fields, as :class:`Agent` takes them (``priority``,
            ``after``, ``output_kind``, ``model``, ``min_output``, ``max_output``,
            ``estimator``, ``typical_input``, ``typical_output``).

    Attributes:
        name: the kind's name.
        match: its patterns.
        default: whether it is the default kind.
        agent: the template: an :class:`Agent` called ``name`` with the kind's fields.

    Raises:
        SpecError: a field is invalid; ``key`` names it.
    """

    name: str
    match: tuple[str, ...]
    default: bool
    agent: Agent

    def __init__(
        self,
        name: str,
        match: str | Sequence[str] = (),
        *,
        default: bool = False,
        **agent: Any,
    ) -> None:
        template = Agent(name, **agent)
        if not isinstance(default, bool):
            raise SpecError(f"must be true or false, not {_describe(default)}", key="default")
        patterns = (match,) if isinstance(match, str) else match
        if isinstance(patterns, bytes) or not isinstance(patterns, Sequence):
            raise SpecError(
                f"must be a pattern or a list of them, not {_describe(match)}", key="match"
            )
        checked: dict[str, None] = {}
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern or not is_text(pattern):
                raise SpecError(
                    f"patterns must be non-empty strings, not {_describe(pattern)}", key="match"
                )
            if pattern in checked:
                raise SpecError(f"pattern {excerpt(pattern)} is listed twice", key="match")
            checked[pattern] = None
        if not checked and not default:
            raise SpecError(
                "a kind needs a pattern to match (match: 'expert:*') or default: true",
                key="match",
            )
        object.__setattr__(self, "name", template.name)
        object.__setattr__(self, "match", tuple(checked))
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "agent", template)

    def matches(self, name: str) -> bool:
        """Whether one of the kind's patterns matches ``name`` (a default kind aside)."""
        return any(_glob_match(pattern, name) for pattern in self.match)

    def __repr__(self) -> str:
        fields = repr(self.agent)[len("Agent(") : -1]
        head, _, rest = fields.partition(", ")
        parts = [head, f"match={list(self.match)!r}"]
        if self.default:
            parts.append("default=True")
        if rest:
            parts.append(rest)
        return f"AgentKind({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """Return a YAML-ready mapping (the template's fields as :meth:`Agent.to_dict`)."""
        result = self.agent.to_dict()
        name = result.pop("name")
        head: dict[str, Any] = {"name": name}
        if self.match:
            head["match"] = list(self.match)
        if self.default:
            head["default"] = True
        return head | result


def _glob_match(pattern: str, name: str) -> bool:
    """Whether glob ``pattern`` (``*`` and ``?`` only; all else literal) matches ``name``."""
    return _glob_regex(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _glob_overlap(first: str, second: str) -> str | None:
    """A name both glob patterns match, or ``None`` when none exists.

    A search over pairs of positions in the two patterns (each ``*`` may match nothing or
    eat one character the other pattern produces); linear in the product of their lengths.
    """
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[int, int, str]] = [(0, 0, "")]
    while stack:
        i, j, made = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        a = first[i] if i < len(first) else None
        b = second[j] if j < len(second) else None
        if a is None and b is None:
            return made
        if a == "*":
            stack.append((i + 1, j, made))
            if b is not None and b != "*":
                stack.append((i, j + 1, made + ("x" if b == "?" else b)))
        if b == "*":
            stack.append((i, j + 1, made))
            if a is not None and a != "*":
                stack.append((i + 1, j, made + ("x" if a == "?" else a)))
        if a is not None and b is not None and "*" not in (a, b) and (a == b or "?" in (a, b)):
            stack.append((i + 1, j + 1, made + (b if a == "?" else a).replace("?", "x")))
    return None


# ---------------------------------------------------------------------------------------
# Locating errors in a document (a YamlMap from load_yaml, or plain dicts and lists).

_PIPELINE_KEYS = frozenset({"name", "agents", "kinds"})
_AGENT_KEYS = frozenset(
    {
        "name",
        "priority",
        "after",
        "output_kind",
        "model",
        "min_output",
        "max_output",
        "estimator",
        "typical_input",
        "typical_output",
    }
)
_KIND_KEYS = _AGENT_KEYS | {"match", "default"}
_ESTIMATOR_KEYS = frozenset({"base", "per_feature", "per_input"})
_KEY_TOKEN = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


@dataclasses.dataclass(frozen=True, slots=True)
class _Where:
    """A position in a document: file, line and dotted key (any may be unknown)."""

    file: str | None
    line: int | None
    key: str | None

    def fail(self, problem: str) -> NoReturn:
        raise SpecError(problem, file=self.file, line=self.line, key=self.key)


def _join(base: str | None, key: str | None) -> str | None:
    if not key:
        return base
    if not base:
        return key
    return f"{base}{key}" if key.startswith("[") else f"{base}.{key}"


def _where_of(node: object, fallback: _Where) -> _Where:
    """Where ``node`` itself is: its own position if it came from YAML, else ``fallback``."""
    if isinstance(node, YamlMap | YamlList):
        return _Where(node.file, node.line, node.path or None)
    return fallback


def _child(node: object, where: _Where, key: str | int) -> _Where:
    """Where item ``key`` of ``node`` (located at ``where``) is."""
    if isinstance(node, YamlMap) and isinstance(key, str):
        return _Where(node.file, node.key_lines.get(key, node.line), node.key_path(key))
    if isinstance(node, YamlList) and isinstance(key, int):
        return _Where(node.file, node.item_lines[key], node.item_path(key))
    part = f"[{key}]" if isinstance(key, int) else key
    return _Where(where.file, where.line, _join(where.key, part))


def _line_of(node: object, relative_key: str | None, default: int | None) -> int | None:
    """Best-known line of ``relative_key`` inside ``node`` (deepest part found)."""
    line = default
    for index, name in _KEY_TOKEN.findall(relative_key or ""):
        if index and isinstance(node, YamlList) and int(index) < len(node):
            line, node = node.item_lines[int(index)], node[int(index)]
        elif name and isinstance(node, YamlMap) and name in node:
            line, node = node.key_lines.get(name, line), node[name]
        else:
            break
    return line


def _relocate(error: SpecError, node: object, where: _Where) -> SpecError:
    """Re-raise ``error`` (keyed relative to ``node``) at its position in the document."""
    relative: str | None = error.key
    file, line, key = where.file, _line_of(node, relative, where.line), _join(where.key, relative)
    if isinstance(error, KindConflict):
        return KindConflict(
            error.kinds, error.patterns, error.example, file=file, line=line, key=key
        )
    return SpecError(error.problem, file=file, line=line, key=key)


def _check_keys(
    node: Mapping[str, Any], where: _Where, allowed: frozenset[str], required: tuple[str, ...]
) -> None:
    """Fail on the first unknown key, then on the first missing required key."""
    if isinstance(node, YamlMap):
        node.check_keys(allowed, required)
        return
    for key in node:
        if key not in allowed:
            _child(node, where, str(key)).fail(
                f"unknown key {excerpt(key)}; allowed: {', '.join(sorted(allowed))}"
            )
    for key in required:
        if key not in node:
            where.fail(f"missing required key '{key}'")


def _estimator_from(node: object, where: _Where) -> LinearEstimator | None:
    if node is None:
        return None
    if isinstance(node, LinearEstimator):
        return node
    if not isinstance(node, Mapping):
        where.fail(
            f"must be a mapping with keys {', '.join(sorted(_ESTIMATOR_KEYS))}, "
            f"not {_describe(node)}"
        )
    _check_keys(node, where, _ESTIMATOR_KEYS, ())
    try:
        return LinearEstimator(**node)
    except SpecError as error:
        raise _relocate(error, node, where) from error


def _agent_from(node: object, where: _Where) -> Agent:
    if isinstance(node, Agent):
        return node
    if not isinstance(node, Mapping):
        where.fail(f"an agent must be a mapping with at least 'name', not {_describe(node)}")
    _check_keys(node, where, _AGENT_KEYS, ("name",))
    fields = dict(node)
    if "estimator" in fields:
        fields["estimator"] = _estimator_from(fields["estimator"], _child(node, where, "estimator"))
    try:
        return Agent(**fields)
    except SpecError as error:
        raise _relocate(error, node, where) from error


def _kind_from(node: object, where: _Where) -> AgentKind:
    if isinstance(node, AgentKind):
        return node
    if not isinstance(node, Mapping):
        where.fail(
            f"a kind must be a mapping with 'name' and 'match' or 'default', not {_describe(node)}"
        )
    _check_keys(node, where, _KIND_KEYS, ("name",))
    fields = dict(node)
    if "estimator" in fields:
        fields["estimator"] = _estimator_from(fields["estimator"], _child(node, where, "estimator"))
    try:
        return AgentKind(**fields)
    except SpecError as error:
        raise _relocate(error, node, where) from error


# ---------------------------------------------------------------------------------------


class Pipeline:
    """The agents of one orchestration, in a valid execution order.

    If the agents as given already respect every ``after``, that order is kept; otherwise
    they are put in a stable topological order (each agent as early as its ``after``
    allows, ties broken by the order given).

    Agent kinds (:class:`AgentKind`) budget agents that are not listed: each kind is one
    more line of the pipeline (its template, an :class:`Agent` called by the kind's name,
    is among :attr:`agents`), and :meth:`resolve` maps a name at run time to the listed
    agent of that name, else to the kind whose pattern matches it, else to the default
    kind. Without a kind that matches, a name that is not listed stays unknown.

    Args:
        agents: the agents, at least one, with unique names.
        name: the pipeline's name.
        kinds: the agent kinds (default: none, so unlisted names are refused).

    Raises:
        SpecError: no agents, an item is not an :class:`Agent`, two agents share a name,
            ``after`` names an unknown agent, or ``after`` forms a cycle. ``key`` is like
            ``agents[2].after`` (indices into ``agents`` as given; ``kinds[0].match`` for
            kinds).
        KindConflict: two kinds could match the same name (two overlapping patterns, or
            two default kinds).
    """

    __slots__ = (
        "_agents",
        "_by_name",
        "_default",
        "_downstream",
        "_index",
        "_kind_names",
        "_kinds",
        "_name",
        "_names",
    )

    _name: str
    _agents: tuple[Agent, ...]
    _index: dict[str, int]
    _names: tuple[str, ...]
    _by_name: dict[str, Agent]
    _downstream: dict[str, tuple[str, ...]]  # filled on demand by downstream()
    _kinds: tuple[AgentKind, ...]
    _kind_names: frozenset[str]
    _default: AgentKind | None

    def __init__(
        self, agents: Iterable[Agent], name: str = "pipeline", kinds: Iterable[AgentKind] = ()
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise SpecError(f"must be a non-empty string, not {_describe(name)}", key="name")
        if isinstance(agents, str | bytes | Mapping | Agent) or not isinstance(agents, Iterable):
            raise SpecError(f"must be a list of agents, not {_describe(agents)}", key="agents")
        listed = tuple(agents)
        if not listed:
            raise SpecError("a pipeline needs at least one agent", key="agents")
        checked_kinds = _check_kinds(kinds)
        given = listed + tuple(kind.agent for kind in checked_kinds)

        def key_of(i: int) -> str:
            return f"agents[{i}]" if i < len(listed) else f"kinds[{i - len(listed)}]"

        positions: dict[str, int] = {}
        for i, agent in enumerate(given):
            if not isinstance(agent, Agent):
                raise SpecError(f"must be an Agent, not {_describe(agent)}", key=key_of(i))
            if agent.name in positions:
                raise SpecError(
                    f"agent name {excerpt(agent.name)} is already used by "
                    f"{key_of(positions[agent.name])}",
                    key=f"{key_of(i)}.name",
                )
            positions[agent.name] = i
        for i, agent in enumerate(given):
            for upstream in agent.after:
                if upstream not in positions:
                    raise SpecError(
                        f"agent {excerpt(agent.name)} runs after {excerpt(upstream)}, which is "
                        f"not in the pipeline; known agents: {listing(positions)}",
                        key=f"{key_of(i)}.after",
                    )
        order = _topological_order(given, positions)
        object.__setattr__(self, "_kinds", checked_kinds)
        object.__setattr__(self, "_kind_names", frozenset(k.name for k in checked_kinds))
        object.__setattr__(self, "_default", next((k for k in checked_kinds if k.default), None))
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_agents", tuple(given[i] for i in order))
        object.__setattr__(self, "_index", {a.name: k for k, a in enumerate(self._agents)})
        object.__setattr__(self, "_names", tuple(self._index))
        object.__setattr__(self, "_by_name", {a.name: a for a in self._agents})
        object.__setattr__(self, "_downstream", {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Pipeline is immutable; cannot set {name!r}")

    @property
    def name(self) -> str:
        """The pipeline's name."""
        return self._name

    @property
    def agents(self) -> tuple[Agent, ...]:
        """The agents, in execution order."""
        return self._agents

    @property
    def names(self) -> tuple[str, ...]:
        """The agents' names, in execution order."""
        return self._names

    @property
    def kinds(self) -> tuple[AgentKind, ...]:
        """The agent kinds, as declared (their templates are among :attr:`agents`)."""
        return self._kinds

    @property
    def kind_names(self) -> frozenset[str]:
        """The kinds' names (their templates' lines among :attr:`agents`)."""
        return self._kind_names

    def kind_of(self, name: str) -> AgentKind | None:
        """The kind that budgets ``name``: ``None`` for a listed agent or a name no kind takes.

        A kind's own name is its template, listed: ``kind_of`` gives ``None`` for it.
        """
        if not isinstance(name, str) or name in self._by_name:
            return None
        for kind in self._kinds:
            if kind.matches(name):
                return kind
        return self._default

    def resolve(self, name: str) -> Agent:
        """The agent that budgets ``name``: the listed agent, else the template of its kind.

        Raises:
            UnknownAgent: ``name`` is not listed and no kind matches it.
        """
        agent = self._by_name.get(name) if isinstance(name, str) else None
        if agent is not None:
            return agent
        kind = self.kind_of(name)
        if kind is None:
            raise UnknownAgent(name, self._index)
        return kind.agent

    def __getitem__(self, name: str) -> Agent:
        """Return the agent called ``name``.

        Raises:
            UnknownAgent: no agent has that name.
        """
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise UnknownAgent(name, self._index) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._index
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents)

    def __len__(self) -> int:
        return len(self._agents)

    def index(self, name: str) -> int:
        """Return the position of agent ``name`` in execution order.

        Raises:
            UnknownAgent: no agent has that name.
        """
        if name not in self:
            raise UnknownAgent(name, self._index)
        return self._index[name]

    def downstream(self, name: str) -> tuple[str, ...]:
        """Return the agents that run after ``name``, directly or transitively.

        Args:
            name: an agent of this pipeline.

        Returns:
            Their names, in execution order.

        Raises:
            UnknownAgent: no agent has that name.
        """
        agent = self[name].name
        found = self._downstream.get(agent)
        if found is None:
            found = self._downstream[agent] = _downstream_of(self._agents, self._index, agent)
        return found

    def with_priorities(self, priorities: Mapping[str, Priority | str]) -> Pipeline:
        """Return a copy with some agents' priorities replaced.

        Args:
            priorities: new priority per agent name; agents not listed keep theirs.

        Raises:
            UnknownAgent: a name is not in the pipeline.
            SpecError: a priority is not valid (``key`` is ``priorities.NAME``).
        """
        for agent_name in priorities:
            self.index(agent_name)
        new = {
            name: _choice(Priority, value, f"priorities.{name}")
            for name, value in priorities.items()
        }
        templates = self._kind_names
        agents = [
            dataclasses.replace(agent, priority=new[agent.name]) if agent.name in new else agent
            for agent in self._agents
            if agent.name not in templates
        ]
        kinds = [
            _replace_kind(kind, new[kind.name]) if kind.name in new else kind
            for kind in self._kinds
        ]
        return Pipeline(agents, self._name, kinds)

    def to_dict(self) -> dict[str, Any]:
        """Return a YAML-ready mapping (see :meth:`Agent.to_dict`)."""
        templates = self._kind_names
        result: dict[str, Any] = {
            "name": self._name,
            "agents": [agent.to_dict() for agent in self._agents if agent.name not in templates],
        }
        if self._kinds:
            result["kinds"] = [kind.to_dict() for kind in self._kinds]
        return result

    def to_yaml(self, path: str | Path | None = None) -> str:
        """Return the pipeline as YAML that :meth:`from_yaml` reads back.

        Estimators other than :class:`LinearEstimator` are not written.

        Args:
            path: if given, also write the text to this file, atomically: whole, or not at
                all (a failed write leaves the previous file as it was).

        Returns:
            The YAML text.

        Raises:
            OSError: the file cannot be written (nothing is changed).
        """
        text: str = yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        if path is not None:
            write_atomic(path, text)
        return text

    @classmethod
    def from_dict(cls, data: Any, *, file: str | None = None) -> Pipeline:
        """Build a pipeline from a mapping shaped like the YAML format.

        Args:
            data: ``{"name": ..., "agents": [{...}, ...]}``; a :class:`YamlMap` from
                :func:`~apportion.yamlfile.load_yaml` gives errors with lines.
            file: the file name to put in errors when ``data`` does not carry its own.

        Raises:
            SpecError: the data is invalid; ``file``, ``line`` and ``key`` locate it.
        """
        root = _where_of(data, _Where(file, None, None))
        if not isinstance(data, Mapping):
            root.fail(
                "a pipeline must be a mapping with keys 'agents' and optionally 'name', "
                f"not {_describe(data)}"
            )
        _check_keys(data, root, _PIPELINE_KEYS, ("agents",))
        items = data["agents"]
        items_where = _child(data, root, "agents")
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            items_where.fail(f"must be a list of agents, not {_describe(items)}")
        agents = [_agent_from(item, _child(items, items_where, i)) for i, item in enumerate(items)]
        kinds: list[AgentKind] = []
        if "kinds" in data:
            found = data["kinds"]
            found_where = _child(data, root, "kinds")
            if isinstance(found, str | bytes) or not isinstance(found, Sequence):
                found_where.fail(f"must be a list of agent kinds, not {_describe(found)}")
            kinds = [
                _kind_from(item, _child(found, found_where, i)) for i, item in enumerate(found)
            ]
        try:
            return cls(agents, data.get("name", "pipeline"), kinds)
        except SpecError as error:
            raise _relocate(error, data, root) from error

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Read a pipeline from a YAML file.

        Raises:
            SpecError: the file cannot be read, is not valid YAML, or describes an invalid
                pipeline; ``file``, ``line`` and ``key`` locate the mistake.
        """
        return cls.from_dict(load_yaml(path), file=str(path))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pipeline):
            return NotImplemented
        return (self._name, self._agents, self._kinds) == (
            other._name,
            other._agents,
            other._kinds,
        )

    def __hash__(self) -> int:
        return hash((self._name, self._agents, self._kinds))

    def __repr__(self) -> str:
        if not self._kinds:
            return f"Pipeline({list(self._agents)!r}, name={self._name!r})"
        return (
            f"Pipeline({list(self._listed())!r}, name={self._name!r}, kinds={list(self._kinds)!r})"
        )

    def _listed(self) -> tuple[Agent, ...]:
        """The listed agents (the kinds' templates left out), in execution order."""
        templates = self._kind_names
        return tuple(a for a in self._agents if a.name not in templates)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Pipeline, (self._listed(), self._name, self._kinds))


def _check_kinds(kinds: Iterable[AgentKind]) -> tuple[AgentKind, ...]:
    """``kinds`` as a tuple, checked: kinds only, at most one default, no overlap."""
    if isinstance(kinds, str | bytes | Mapping | AgentKind) or not isinstance(kinds, Iterable):
        raise SpecError(f"must be a list of agent kinds, not {_describe(kinds)}", key="kinds")
    given = tuple(kinds)
    for i, kind in enumerate(given):
        if not isinstance(kind, AgentKind):
            raise SpecError(f"must be an AgentKind, not {_describe(kind)}", key=f"kinds[{i}]")
    for j, second in enumerate(given):
        for first in given[:j]:
            if first.default and second.default:
                raise KindConflict(
                    (first.name, second.name), ("*", "*"), "any-name", key=f"kinds[{j}].default"
                )
            for p in first.match:
                for q in second.match:
                    example = _glob_overlap(p, q)
                    if example is not None:
                        raise KindConflict(
                            (first.name, second.name), (p, q), example, key=f"kinds[{j}].match"
                        )
    return given


def _replace_kind(kind: AgentKind, priority: Priority) -> AgentKind:
    """``kind`` with another priority."""
    fields = {f.name: getattr(kind.agent, f.name) for f in dataclasses.fields(Agent)}
    fields.pop("name")
    fields["priority"] = priority
    return AgentKind(kind.name, kind.match, default=kind.default, **fields)


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for lists of plain values (``after: [a, b]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> Any:
    flow = all(isinstance(item, str | int | float | bool) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _topological_order(agents: tuple[Agent, ...], positions: dict[str, int]) -> list[int]:
    """Stable topological order of ``agents`` (indices), or SpecError naming a cycle."""
    waiting = [len(agent.after) for agent in agents]
    children: list[list[int]] = [[] for _ in agents]
    for i, agent in enumerate(agents):
        for upstream in agent.after:
            children[positions[upstream]].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in children[i]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    if len(order) < len(agents):
        _raise_cycle(agents, positions, {i for i, count in enumerate(waiting) if count > 0})
    return order


def _raise_cycle(agents: tuple[Agent, ...], positions: dict[str, int], stuck: set[int]) -> NoReturn:
    """Find a cycle among the ``stuck`` agents and raise SpecError showing it."""
    # Every stuck agent has a stuck upstream, so walking upstream must revisit an agent.
    path = [min(stuck)]
    seen = {path[0]: 0}
    while True:
        upstream = next(positions[u] for u in agents[path[-1]].after if positions[u] in stuck)
        if upstream in seen:
            cycle = path[seen[upstream] :]
            break
        seen[upstream] = len(path)
        path.append(upstream)
    # ``cycle`` follows ``after`` (downstream to upstream); show it in data-flow order,
    # starting and ending with the agent given first.
    cycle.reverse()
    start = cycle.index(min(cycle))
    cycle = cycle[start:] + cycle[:start]
    names = [agents[i].name for i in [*cycle, cycle[0]]]
    if len(names) > 8:
        names = [*names[:4], f"... ({len(cycle) - 6:,} more)", *names[-3:]]
    shown = " -> ".join(_short(n) for n in names)
    raise SpecError(
        f"the agents' 'after' form a cycle: {shown} (each runs after the one before it)",
        key=f"agents[{cycle[0]}].after",
    )


def _downstream_of(
    agents: tuple[Agent, ...], index: Mapping[str, int], name: str
) -> tuple[str, ...]:
    """The agents depending on ``name`` directly or transitively, in execution order.

    One pass over the agents after ``name`` (linear in agents and ``after`` links): an
    agent is downstream when one of its upstreams is ``name`` or downstream.
    """
    below = {name}
    for agent in agents[index[name] + 1 :]:
        if any(upstream in below for upstream in agent.after):
            below.add(agent.name)
    below.discard(name)
    return tuple(a.name for a in agents[index[name] + 1 :] if a.name in below)
