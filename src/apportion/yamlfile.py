"""YAML loading that remembers where every key came from.

``load_yaml`` returns plain Python values, except that mappings are :class:`YamlMap`
(a ``dict`` that knows its file, its own line, and the line of each key) and sequences are
:class:`YamlList` (a ``list`` that knows the line of each item). Validators use
:func:`fail` to raise a :class:`~apportion.errors.SpecError` naming the file, the line and
the dotted key, so a user can jump straight to the mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import yaml

from apportion.errors import SpecError


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
                self.fail(key, f"unknown key '{key}'; allowed: {', '.join(sorted(allowed))}")
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


def load_yaml(source: str | Path, *, text: str | None = None) -> Any:
    """Load one YAML document, keeping key positions.

    Args:
        source: path of the file to read (also used in error messages).
        text: the document's text; when given, ``source`` is only its name.

    Returns:
        The document, with mappings as :class:`YamlMap` and sequences as :class:`YamlList`.

    Raises:
        SpecError: the file cannot be read, is not valid YAML, or repeats a key.
    """
    name = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read file: {exc.strerror or exc}", file=name) from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the file is empty", file=name)
        return _build(loader, node, name, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise SpecError(f"not valid YAML: {exc.problem or exc}", file=name, line=line) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=name) from exc
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, file: str, path: str) -> Any:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result = YamlMap()
        result.file, result.line, result.path, result.key_lines = file, line, path, {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise SpecError(
                    f"key {key!r} is not a string", file=file, line=key_line, key=path or None
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
    return loader.construct_object(node, deep=True)
