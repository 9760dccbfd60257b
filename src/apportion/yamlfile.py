"""YAML loading that remembers where every key came from.

``load_yaml`` returns plain Python values, except that mappings are :class:`YamlMap`
(a ``dict`` that knows its file, its own line, and the line of each key) and sequences are
:class:`YamlList` (a ``list`` that knows the line of each item). Validators use
:func:`fail` to raise a :class:`~apportion.errors.SpecError` naming the file, the line and
the dotted key, so a user can jump straight to the mistake.

Any file is safe to load: bytes that are not UTF-8, nesting deeper than
:data:`~apportion.limits.MAX_DEPTH`, aliases that would expand past
:data:`MAX_ALIAS_NODES` nodes (a "billion laughs" bomb: refused while composing, before
anything is expanded), integers out of 64-bit range and strings with lone surrogates are
all a :class:`~apportion.errors.SpecError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.composer import ComposerError

from apportion.errors import SpecError
from apportion.files import read_text
from apportion.limits import MAX_DEPTH, MAX_INTEGER, excerpt


class YamlMap(dict[str, Any]):
    """A mapping read from YAML, with the position of each key.

    Attributes:
        file: the source file, or ``None``.
        line: 1-based line where the mapping starts.
        path: dotted key path of this mapping inside the document (``""`` for the root).
        key_lines: 1-based line of each key.
    """

    file: str | None
    line: int | None
    path: str
    key_lines: dict[str, int]

    def key_path(self, key: str) -> str:
        """Dotted path of ``key`` inside the document."""
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str | None, problem: str) -> NoReturn:
        """Raise a SpecError about ``key`` of this mapping (or the mapping itself)."""
        if key is None:
            raise SpecError(problem, file=self.file, line=self.line, key=self.path or None)
        line = self.key_lines.get(key, self.line)
        raise SpecError(problem, file=self.file, line=line, key=self.key_path(key))

    def check_keys(
        self, allowed: set[str] | frozenset[str], required: tuple[str, ...] = ()
    ) -> None:
        """Fail on the first unknown key, then on the first missing required key."""
        for key in self:
            if key not in allowed:
                self.fail(key, f"unknown key {excerpt(key)}; allowed: {', '.join(sorted(allowed))}")
        for key in required:
            if key not in self:
                self.fail(None, f"missing required key '{key}'")


class YamlList(list[Any]):
    """A sequence read from YAML, with the line of each item."""

    file: str | None
    line: int | None
    path: str
    item_lines: list[int]

    def item_path(self, index: int) -> str:
        """Dotted path of item ``index`` inside the document."""
        return f"{self.path}[{index}]"

    def fail(self, index: int | None, problem: str) -> NoReturn:
        """Raise a SpecError about item ``index`` of this list (or the list itself)."""
        if index is None:
            raise SpecError(problem, file=self.file, line=self.line, key=self.path or None)
        raise SpecError(
            problem, file=self.file, line=self.item_lines[index], key=self.item_path(index)
        )


MAX_ALIAS_NODES = 10_000
"""Most nodes the aliases of one document may add when expanded (a "billion laughs" file
of a few hundred bytes would add a billion): counted at compose time, never built."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_TAG = "tag:yaml.org,2002:int"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and alias bombs while composing.

    Nesting past :data:`MAX_DEPTH`, and aliases expanding past :data:`MAX_ALIAS_NODES`
    nodes (or into themselves), are refused before anything is built.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._added = 0
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height) expanded

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # the scanner runs ahead of the composer: stop ``[[[[...`` before it is scanned
        if self.flow_level >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event: Any = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._size.get(id(target))
                if size is None:
                    raise ComposerError(
                        None,
                        None,
                        f"alias *{excerpt(event.anchor)[1:-1]} is inside the node it names "
                        "(a recursive alias)",
                        event.start_mark,
                    )
                self._added += size[0]
                if self._added > MAX_ALIAS_NODES:
                    raise ComposerError(
                        None,
                        None,
                        f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes",
                        event.start_mark,
                    )
                if self._depth + size[1] > MAX_DEPTH:
                    raise ComposerError(
                        None, None, f"nested more than {MAX_DEPTH} deep", event.start_mark
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} deep", self.get_mark())
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is None:
            return None
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        sizes = [self._size[id(child)] for child in children]
        self._size[id(node)] = (
            1 + sum(n for n, _ in sizes),
            1 + max((h for _, h in sizes), default=0),
        )
        return node


def load_yaml(source: str | Path, *, text: str | None = None) -> Any:
    """Load one YAML document, keeping key positions.

    Args:
        source: path of the file to read (also used in error messages).
        text: the document's text; when given, ``source`` is only its name.

    Returns:
        The document, with mappings as :class:`YamlMap` and sequences as :class:`YamlList`.

    Raises:
        SpecError: the file cannot be read, is not UTF-8 text, is not valid YAML, repeats a
            key, nests deeper than :data:`~apportion.limits.MAX_DEPTH`, has aliases that
            expand past :data:`MAX_ALIAS_NODES` nodes, an integer past
            :data:`~apportion.limits.MAX_INTEGER` or a string that is not Unicode text.
    """
    name = str(source)
    if text is None:
        text = read_text(source)
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the file is empty", file=name)
        return _build(loader, node, name, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(exc.problem or exc).split())
        raise SpecError(f"not valid YAML: {problem}", file=name, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        shown = f"U+{exc.character:04X}" if isinstance(exc.character, int) else "?"
        problem = f"not valid YAML: character {shown} is not allowed in YAML text"
        raise SpecError(problem, file=name, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {' '.join(str(exc).split())}", file=name) from None
    finally:
        if loader is not None:
            loader.dispose()


def _scalar(loader: yaml.SafeLoader, node: yaml.Node, file: str, path: str) -> Any:
    """The value of a scalar node, or SpecError for one no file of ours can hold."""
    line = node.start_mark.line + 1
    if node.tag == _INT_TAG and len(str(node.value)) > 2 * len(str(MAX_INTEGER)):
        value: Any = None  # digits enough to be out of range: do not even convert it
    else:
        try:
            value = loader.construct_object(node, deep=True)
        except (ValueError, OverflowError, TypeError) as exc:
            problem = f"cannot read {excerpt(node.value)}: {' '.join(str(exc).split())}"
            raise SpecError(excerpt(problem, 200), file=file, line=line, key=path or None) from None
        if not isinstance(value, int) or isinstance(value, bool) or abs(value) <= MAX_INTEGER:
            if isinstance(value, str) and _SURROGATE.search(value):
                raise SpecError(
                    f"{excerpt(value)} holds a lone surrogate: not Unicode text",
                    file=file,
                    line=line,
                    key=path or None,
                )
            return value
    raise SpecError(
        f"integer {excerpt(node.value)} is out of range: beyond 2**63 - 1",
        file=file,
        line=line,
        key=path or None,
    )


def _build(loader: yaml.SafeLoader, node: yaml.Node, file: str, path: str) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result = YamlMap()
        result.file, result.line, result.path, result.key_lines = file, line, path, {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(
                    "a key must be a string, not a list or mapping",
                    file=file,
                    line=key_line,
                    key=path or None,
                )
            key = _scalar(loader, key_node, file, path)
            if not isinstance(key, str):
                raise SpecError(
                    f"key {excerpt(key)} is not a string",
                    file=file,
                    line=key_line,
                    key=path or None,
                )
            child = f"{path}.{key}" if path else key
            if key in result:
                raise SpecError(f"key '{key}' appears twice", file=file, line=key_line, key=child)
            result[key] = _build(loader, value_node, file, child)
            result.key_lines[key] = key_line
        return result
    if isinstance(node, yaml.SequenceNode):
        items = YamlList()
        items.file, items.line, items.path, items.item_lines = file, line, path, []
        for index, item in enumerate(node.value):
            items.append(_build(loader, item, file, f"{path}[{index}]"))
            items.item_lines.append(item.start_mark.line + 1)
        return items
    return _scalar(loader, node, file, path)
