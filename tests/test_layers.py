"""Layers point one way: the import graph of the ``apportion`` package, read from its source.

Every test here reads the source with :mod:`ast` (nothing is imported), so an import that
runs only in a function, only under ``TYPE_CHECKING`` or only on one platform counts just
the same as one at the top of a module.

Which edges count (see :func:`_edges`):

* every ``import apportion.x`` and ``from apportion.x import y`` (relative ones resolved),
  wherever it stands: at module level, in a function, under ``if TYPE_CHECKING:``. A lazy
  import still ties the two modules together (and one under ``TYPE_CHECKING`` is a
  dependency mypy and every reader follow), so it may not close a circle either;
* ``from apportion.x import y`` is an edge to the module ``apportion.x.y`` when ``y`` is a
  module, else to ``apportion.x`` (whose ``__init__`` then runs and must define ``y``);
* not counted: the parent packages Python initializes on the way to a module (importing
  ``apportion.policies.base`` first runs ``apportion/policies/__init__.py``). A package's
  ``__init__`` re-exporting its modules, which import one another, is the ordinary shape of a
  package and no circle; a module that imports its own package by name (``from
  apportion.policies import POLICIES`` inside ``apportion.policies.predicting``) is.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import apportion.controller
from apportion import Agent, Controller, Pipeline
from apportion.policies import UniformPolicy
from apportion.policies.base import Policy
from apportion.policies.rollout import Rollout

if TYPE_CHECKING:
    from apportion.policies.base import DecisionLog

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "apportion"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"version", "limits"}),  # leaves: they import nothing of apportion
    frozenset({"redaction"}),  # quotes a short excerpt of what it cannot read
    frozenset({"errors"}),
    frozenset({"files"}),
    frozenset({"yamlfile"}),
    frozenset({"features"}),  # a request's features, as a store keeps them
    frozenset({"ledger", "spec", "tokens", "ambient"}),
    frozenset({"ledger_view", "calls", "catalog", "pools", "reaper", "retry"}),
    frozenset({"summary", "policies", "stores"}),
    frozenset({"telemetry"}),
    frozenset({"integrations"}),
    frozenset({"controller"}),
    frozenset({"sim", "testing"}),
    frozenset({"analysis", "demo"}),
    frozenset({""}),  # the package itself: apportion/__init__.py, the curated public API
    frozenset({"serve"}),  # the gateway: a shell over the public API
    frozenset({"cli"}),  # the command line (``apportion serve`` runs the gateway)
)
"""The units of the package, lowest first (DESIGN.md, "Layout").

A unit is a top-level module or sub-package of ``apportion``. A module may import its own
unit's modules and those of units in lower layers, never a higher layer's nor another unit
of its own layer: policies, stores and the summary know nothing of each other; telemetry
records what policies saw (:class:`~apportion.policies.base.Observation`) and decided; the
integrations' call engine drives any request-like object and sits below the controller,
whose ``req.completion(...)`` and ``req.openai(...)`` hand a request to it. The curated
public API (``apportion/__init__.py``) sits above everything it re-exports, the gateway
above it as any other user of that API, and the command line on top (``apportion serve``
starts the gateway).
"""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(imported apportion module, line)`` for every import statement in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "apportion" or target.startswith("apportion."):
                while target not in modules:  # ``import apportion.x.attr``-style leftovers
                    target = target.rpartition(".")[0]
                yield target, node.lineno


def _edges() -> dict[str, dict[str, int]]:
    """Module -> {imported module: first line}, within the package."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        out: dict[str, int] = {}
        for target, line in _imports(path, modules):
            if target != name:
                out.setdefault(target, line)
        graph[name] = out
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    for rank, units in enumerate(LAYERS):
        if unit in units:
            return rank
    raise AssertionError(f"apportion.{unit} is in no layer: give it one in LAYERS")


def test_the_graph_reader_sees_every_kind_of_import() -> None:
    """The reader itself: lazy, TYPE_CHECKING, relative and package imports are edges."""
    graph = _edges()
    learned = graph["apportion.policies.learned"]
    assert "apportion.policies.base" in learned
    assert "apportion.policies.state" in graph["apportion.policies.predicting"]  # x import mod
    assert "apportion.telemetry" in graph["apportion.controller"]  # in a function
    assert "apportion.policies" in graph["apportion.controller"]  # a package's __init__
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [
        ["a", "b", "c"]
    ]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_policies_import_neither_stores_nor_telemetry() -> None:
    """A policy decides from what it is given: stores and telemetry are layers above it."""
    graph = _edges()
    wrong = [
        f"{module} imports {target} (line {line})"
        for module, targets in graph.items()
        if module == "apportion.policies" or module.startswith("apportion.policies.")
        for target, line in targets.items()
        if _unit(target) in {"stores", "telemetry"}
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _edges()
    described = []
    for component in _cycles(graph):
        members = set(component)
        links = [
            f"{a} -> {b} (line {line})"
            for a in component
            for b, line in sorted(graph[a].items())
            if b in members
        ]
        described.append(f"{', '.join(component)}: {'; '.join(links)}")
    assert not described, "\n".join(described)


def test_layers_import_downward_only() -> None:
    graph = _edges()
    wrong = []
    for module, targets in sorted(graph.items()):
        unit = _unit(module)
        for target, line in sorted(targets.items()):
            other = _unit(target)
            if other != unit and _layer(other) >= _layer(unit):
                wrong.append(f"{module} imports {target} (line {line})")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------ the rollout's telemetry hook


def test_the_telemetry_hook_is_part_of_the_policy_contract() -> None:
    hook = Policy.__dict__.get("attach_telemetry")
    assert callable(hook) and inspect.getdoc(hook)
    assert not getattr(hook, "__isabstractmethod__", False)
    assert UniformPolicy().attach_telemetry(_Log()) is None  # the default does nothing
    assert "attach_telemetry" in Rollout.__dict__


def test_the_controller_calls_the_contract_not_getattr() -> None:
    """Asked by name (``getattr(policy, "attach_telemetry")``), a misspelt hook never runs."""
    tree = ast.parse(inspect.getsource(apportion.controller))
    hooks = {"attach_telemetry", "routes"}
    probed = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"getattr", "hasattr"}
        and any(isinstance(a, ast.Constant) and a.value in hooks for a in node.args)
    ]
    assert probed == []


class _Log:
    """A decision log that keeps what it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[Policy, object]] = []

    def record(self, policy: Policy, decision: object) -> None:
        self.seen.append((policy, decision))


class _Hooked(UniformPolicy):
    def __init__(self) -> None:
        self.logs: list[DecisionLog] = []

    def attach_telemetry(self, log: DecisionLog) -> None:
        self.logs.append(log)


class _Sink:
    def __init__(self) -> None:
        self.batches: list[object] = []

    def write(self, batch: object) -> None:
        self.batches.append(batch)

    def write_rollouts(self, batch: object) -> None:
        self.batches.append(batch)


def test_a_controller_with_telemetry_hands_every_policy_a_decision_log() -> None:
    pipeline = Pipeline([Agent("a")])
    policy = _Hooked()
    Controller(pipeline, policy=policy, store="memory://", telemetry=[_Sink()])
    (log,) = policy.logs
    assert callable(log.record)
    quiet = _Hooked()
    Controller(pipeline, policy=quiet, store="memory://")
    assert quiet.logs == []  # no telemetry, no log


def test_a_rollout_writes_its_decisions_to_the_log_it_is_given() -> None:
    log = _Log()
    rollout = Rollout("estimate", "elastic", telemetry=log, clock=lambda: 7.0)
    ((policy, first),) = log.seen
    assert policy is rollout and first is rollout.events[0]
    later = _Log()
    rollout.attach_telemetry(later)  # its own log was given: a controller's is not used
    assert later.seen == []
    attached = Rollout("estimate", "elastic", clock=lambda: 7.0)
    attached.attach_telemetry(later)  # decisions made before are written too
    assert [d for _, d in later.seen] == attached.events


def test_a_rollout_refuses_telemetry_it_would_have_to_open_itself() -> None:
    """A URL is opened by the telemetry layer (``decision_log``), not by a policy."""
    from apportion import PolicyConfigError

    try:
        Rollout("estimate", "elastic", telemetry="sqlite:///x.db")  # type: ignore[arg-type]
    except PolicyConfigError as exc:
        assert "decision_log" in str(exc)
    else:
        raise AssertionError("a URL was accepted")


def test_ledger_view_lives_beside_the_ledger() -> None:
    import apportion.ledger_view
    import apportion.stores
    import apportion.stores.base

    view = apportion.ledger_view.LedgerView
    assert apportion.stores.base.LedgerView is view and apportion.stores.LedgerView is view
    assert view.__module__ == "apportion.ledger_view"
