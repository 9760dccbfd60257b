"""Request trees in a usage report: each tree rolled up, and children by name.

A child request (``req.child``, ``req.fan_out``) is recorded on its own, with its parent,
its tree's root and its depth (:class:`~apportion.telemetry.records.RequestUsage`). Its
calls are its own: a tree's calls are those of its requests, each counted once.

Definitions (over the calls and requests of the period):

- ``tokens``: tokens used (input plus output) by the calls that finished with usage;
  ``calls``: those calls; ``cost_usd``: their cost, when known; ``statuses``: every call
  by how it ended plus the refused begins (:func:`~apportion.analysis.statuses.statuses_of`).
- Per tree (``roots``, the trees with at least one child in the period, the largest by
  rolled-up tokens first, at most :data:`TREES_SHOWN`): the root's ``own`` figures (its
  own calls) and the ``rolled_up`` ones (its own plus every descendant's, so rolled-up
  tokens are the root's own plus the sum of its children's); the root's ``consumed`` as
  its ledger counted it (its children's usage folds back into it), ``None`` when the root
  is not in the period; and each descendant (``children``, in tree order), with its own
  figures, ``subtree_tokens`` (its own and its descendants') and ``ran_out``.
- A child *ran out* when one of its own calls was ``cut`` or ``wrapped_up``, or one of
  its begins was ``refused``: it handed back less than a whole answer.
- Per child name (``children``): the name a child was given (the last part of its id,
  without the ``#n`` that tells apart children given the same name), over every child of
  that name at any depth: how many, their calls, tokens (in all and per child: P50, P90,
  mean, max), cost, statuses, how many ran out (``ran_out``, ``ran_out_rate``) and the
  share of their calls that completed (``success_rate``).

Building them is one pass over the requests, and one over the calls only when some
request is in a tree: flat telemetry costs nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from apportion.analysis.stats import percentile
from apportion.analysis.statuses import ordered, status_of
from apportion.telemetry.records import CallUsage, RequestUsage, child_name, root_of
from apportion.telemetry.sql import Dataset

__all__ = [
    "CHILD_CAPTION",
    "CHILD_COLUMNS",
    "RAN_OUT",
    "TREES_SHOWN",
    "TREE_CAPTION",
    "TREE_COLUMNS",
    "CallCounts",
    "build_trees",
    "child_rows",
    "shown_columns",
    "tree_rows",
]

TREES_SHOWN: Final = 50
"""Trees the report lists one by one (the largest by rolled-up tokens)."""

RAN_OUT: Final = frozenset({"cut", "wrapped_up", "refused"})
"""Statuses that mean a request handed back less than a whole answer."""


class _Node:
    """One request of a tree and what its own calls add up to."""

    __slots__ = (
        "children",
        "cost",
        "costed",
        "finished",
        "record",
        "request_id",
        "statuses",
        "tokens",
    )

    def __init__(self, request_id: str, record: RequestUsage | None) -> None:
        self.request_id = request_id
        self.record = record
        self.children: list[_Node] = []
        self.cost = 0.0  # USD of its finished calls whose cost is known
        self.costed = False  # some of its finished calls have a cost
        self.tokens = 0  # used by its finished calls
        self.finished = 0  # its calls that finished with usage
        refused = sum(record.refused.values()) if record is not None else 0
        self.statuses: dict[str, int] = {"refused": refused} if refused else {}

    def add(self, call: CallUsage) -> None:
        """Count one of its calls."""
        status = status_of(call)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        used_input, used_output = call.used_input, call.used_output
        if call.settled == "finish" and used_input is not None and used_output is not None:
            self.tokens += used_input + used_output
            self.finished += 1
            if call.cost_usd is not None:
                self.cost += call.cost_usd
                self.costed = True

    def add_counts(self, counts: CallCounts) -> None:
        """Count its calls of one status, summed up (in the database)."""
        _, status, calls, finished, tokens, cost, costed = counts
        self.statuses[status] = self.statuses.get(status, 0) + calls
        self.tokens += tokens
        self.finished += finished
        if costed:
            self.cost += cost
            self.costed = True

    @property
    def ran_out(self) -> bool:
        return any(self.statuses.get(s) for s in RAN_OUT)


def _root(record: RequestUsage) -> str:
    """A request's tree root (from its id and depth when not recorded)."""
    return record.root_id or root_of(record.request_id, record.depth)


CallCounts = tuple[str, str, int, int, int, float, int]
"""A request's calls of one status, summed up: request id, status, calls, finished calls,
their tokens, their cost (over the finished calls whose cost is known) and how many
those are."""


def build_trees(
    dataset: Dataset, *, shown: int = TREES_SHOWN, counts: Iterable[CallCounts] | None = None
) -> dict[str, Any]:
    """The ``trees`` part of a report (see the module docstring).

    Args:
        dataset: what :meth:`~apportion.telemetry.sql.Database.load` read.
        shown: how many trees to list one by one.
        counts: the calls summed up per request and status (by the database), read
            instead of ``dataset.calls``.

    Returns:
        ``{"trees", "requests", "shown", "roots": [...], "children": {NAME: {...}}}``.
    """
    requests = dataset.requests
    members: dict[str, str] = {}  # request id: its root, for the requests of a tree
    for rid, record in requests.items():
        if record.parent_id is not None:
            top_id = _root(record)
            members[rid] = top_id
            members.setdefault(top_id, top_id)
    if not members:
        return {"trees": 0, "requests": 0, "shown": 0, "roots": [], "children": {}}
    nodes = {rid: _Node(rid, requests.get(rid)) for rid in members}
    if counts is not None:
        for row in counts:
            node = nodes.get(row[0])
            if node is not None:
                node.add_counts(row)
    else:
        for call in dataset.calls:
            node = nodes.get(call.request_id)
            if node is not None:
                node.add(call)
    groups: dict[str, list[_Node]] = {}  # root id: the other requests of its tree
    for rid, node in nodes.items():
        kept = node.record
        if kept is None or kept.parent_id is None or rid == members[rid]:
            continue  # a root
        groups.setdefault(members[rid], []).append(node)
        parent = nodes.get(kept.parent_id)
        if parent is not None and parent is not node:
            parent.children.append(node)
    top = set(members.values())
    listed = []
    for rid in sorted(top):
        root = nodes[rid]
        below = _walk(root, groups.get(rid, []))
        listed.append((root.tokens + sum(n.tokens for n, _ in below), root, below))
    listed.sort(key=lambda entry: (-entry[0], entry[1].request_id))
    return {
        "trees": len(listed),
        "requests": len(nodes),
        "shown": min(shown, len(listed)),
        "roots": [_tree(root, below) for _, root, below in listed[:shown]],
        "children": _by_name(n for n in nodes.values() if n.request_id not in top),
    }


def _walk(root: _Node, group: Sequence[_Node]) -> list[tuple[_Node, int]]:
    """The other requests of ``root``'s tree in tree order, each once, with subtree tokens.

    A request's subtree tokens are its own and its descendants'. A request whose parent is
    not in the period, or whose parent links never reach the root (links that loop, in
    hand-made or ingested records), hangs on the root.
    """
    seen = {root.request_id}
    order: list[_Node] = []
    via: list[int] = []  # the position in ``order`` of the node each was reached from
    for start in [root, *sorted(group, key=lambda n: n.request_id)]:
        if start is not root:
            if start.request_id in seen:
                continue
            seen.add(start.request_id)
            order.append(start)
            via.append(-1)
        here = len(order) - 1 if start is not root else -1
        stack = [(kid, here) for kid in sorted(start.children, key=_key, reverse=True)]
        while stack:
            node, came_from = stack.pop()
            if node.request_id in seen:
                continue
            seen.add(node.request_id)
            order.append(node)
            via.append(came_from)
            at = len(order) - 1
            stack.extend((kid, at) for kid in sorted(node.children, key=_key, reverse=True))
    subtree = [n.tokens for n in order]
    for at in range(len(order) - 1, -1, -1):  # children come after their parent
        if via[at] >= 0:
            subtree[via[at]] += subtree[at]
    return list(zip(order, subtree, strict=True))


def _key(node: _Node) -> str:
    return node.request_id


def _figures(nodes: Sequence[_Node]) -> dict[str, Any]:
    """Tokens, calls, cost and statuses summed over ``nodes``."""
    costed = [n.cost for n in nodes if n.costed]
    statuses: dict[str, int] = {}
    for node in nodes:
        for status, count in node.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "tokens": sum(n.tokens for n in nodes),
        "calls": sum(n.finished for n in nodes),
        "cost_usd": math.fsum(costed) if costed else None,
        "statuses": ordered(statuses),
    }


def _tree(root: _Node, walked: Sequence[tuple[_Node, int]]) -> dict[str, Any]:
    record = root.record
    below = [n for n, _ in walked]
    return {
        "root": root.request_id,
        "pipeline": None if record is None else record.pipeline,
        "status": None if record is None else record.status,
        "ceiling": None if record is None else record.ceiling,
        "consumed": None if record is None else record.consumed,
        "requests": 1 + len(below),
        "depth": max((_depth(n) for n in below), default=0),
        "own": _figures([root]),
        "rolled_up": _figures([root, *below]),
        "ran_out": sum(1 for n in below if n.ran_out),
        "children": [_child(n, tokens) for n, tokens in walked],
    }


def _depth(node: _Node) -> int:
    record = node.record
    return 0 if record is None else record.depth


def _child(node: _Node, subtree: int) -> dict[str, Any]:
    record = node.record
    return {
        "request_id": node.request_id,
        "name": child_name(node.request_id),
        "parent_id": None if record is None else record.parent_id,
        "depth": _depth(node),
        "status": None if record is None else record.status,
        "ceiling": None if record is None else record.ceiling,
        "tokens": node.tokens,
        "subtree_tokens": subtree,
        "calls": node.finished,
        "cost_usd": node.cost if node.costed else None,
        "statuses": ordered(node.statuses),
        "ran_out": node.ran_out,
    }


def _by_name(children: Iterable[_Node]) -> dict[str, Any]:
    groups: dict[str, list[_Node]] = {}
    for node in children:
        if node.record is not None:
            groups.setdefault(child_name(node.request_id), []).append(node)
    out: dict[str, Any] = {}
    for name in sorted(groups):
        nodes = groups[name]
        figures = _figures(nodes)
        per_child = [n.tokens for n in nodes]
        ran_out = sum(1 for n in nodes if n.ran_out)
        statuses = figures["statuses"]
        known = sum(n for s, n in statuses.items() if s != "unknown")
        out[name] = {
            "children": len(nodes),
            "calls": figures["calls"],
            "tokens": figures["tokens"],
            "tokens_per_child": {
                "p50": percentile(per_child, 50),
                "p90": percentile(per_child, 90),
                "mean": math.fsum(per_child) / len(per_child),
                "max": max(per_child),
            },
            "cost_usd": figures["cost_usd"],
            "statuses": statuses,
            "ran_out": ran_out,
            "ran_out_rate": ran_out / len(nodes),
            "success_rate": statuses.get("completed", 0) / known if known else None,
        }
    return out


# ------------------------------------------------------------------ rendering

TREE_COLUMNS: Final = (
    "root",
    "requests",
    "depth",
    "own tokens",
    "rolled-up tokens",
    "calls",
    "cost USD",
    "done/wrapped/cut/refused",
    "ran out",
)
"""The columns of the request-trees table (terminal and HTML)."""

TREE_CAPTION: Final = (
    "Each request tree (a request and the children it opened with req.child or fan_out, "
    "at any depth), the largest first. own: the root's own calls; rolled up: the root's "
    "and every descendant's calls (tokens used, finished calls, cost, how they ended: "
    "completed, wrapped up, cut, refused begins). ran out: its children with a call cut or "
    "wrapped up, or a begin refused, of its children."
)

CHILD_COLUMNS: Final = (
    "child name",
    "children",
    "calls",
    "tokens",
    "per child P50/P90/max",
    "cost USD",
    "done/wrapped/cut/refused",
    "ran out",
    "success",
)
"""The columns of the children-by-name table (terminal and HTML)."""

CHILD_CAPTION: Final = (
    "Child requests grouped by the name they were given (any depth; fan_out's numbered "
    "children by number). done/wrapped/cut/refused: their calls completed, wrapped up (a "
    "partial answer), cut at the cap, and their refused begins. ran out: children with a "
    "call cut or wrapped up, or a begin refused; success: completed calls over the calls "
    "whose ending is known, refused begins included."
)


def _tokens(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def shown_columns(
    columns: Sequence[str], rows: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """``columns`` and ``rows`` without the cost column when no cost is known."""
    keep = [i for i, c in enumerate(columns) if c != "cost USD" or any(r[i] != "-" for r in rows)]
    return [columns[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _endings(counts: Mapping[str, int]) -> str:
    """Completed, wrapped up, cut and refused, as ``a/b/c/d``."""
    return "/".join(str(counts.get(s, 0)) for s in ("completed", "wrapped_up", "cut", "refused"))


def tree_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per listed tree, in the order of :data:`TREE_COLUMNS`."""
    rows = []
    for tree in report.get("trees", {}).get("roots", []):
        rolled = tree["rolled_up"]
        counts = rolled["statuses"]
        rows.append(
            [
                tree["root"],
                str(tree["requests"]),
                str(tree["depth"]),
                _tokens(tree["own"]["tokens"]),
                _tokens(rolled["tokens"]),
                str(rolled["calls"]),
                _usd(rolled["cost_usd"]),
                _endings(counts),
                f"{tree['ran_out']} of {tree['requests'] - 1}",
            ]
        )
    return rows


def child_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per child name, in the order of :data:`CHILD_COLUMNS`."""
    rows = []
    for name, f in report.get("trees", {}).get("children", {}).items():
        spread = f["tokens_per_child"]
        counts = f["statuses"]
        rows.append(
            [
                name,
                str(f["children"]),
                str(f["calls"]),
                _tokens(f["tokens"]),
                " / ".join(_tokens(spread[k]) for k in ("p50", "p90", "max")),
                _usd(f["cost_usd"]),
                _endings(counts),
                f"{f['ran_out']} ({_share(f['ran_out_rate'])})",
                _share(f["success_rate"]),
            ]
        )
    return rows
