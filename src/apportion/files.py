"""Input files read as text in one clear error, and output files that appear whole or not at all.

:func:`read_text` reads a file named by a user as UTF-8 text: a missing file, a directory,
an unreadable one or bytes that are not UTF-8 (a PNG, a Latin-1 export) all raise one
:class:`~apportion.errors.SpecError` naming the file (and, for bad bytes, the line);
:func:`load_json` parses JSON as safely (no ``NaN``, no nesting or integers out of bounds).

:func:`write_atomic` writes to a temporary file in the target's own directory, flushes it
to disk, then renames it over the target with :func:`os.replace` (atomic on POSIX and on
Windows within one file system). A reader sees either the previous file or the new one,
never a partial write; on any error the temporary file is removed and the target is left
as it was.

Produce the data completely *before* calling it (render a figure to bytes in memory, dump
JSON to a string): a failure while producing it then leaves no file behind at all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from apportion.errors import SpecError
from apportion.limits import MAX_DEPTH, MAX_INTEGER, excerpt

__all__ = ["load_json", "read_text", "write_atomic"]


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of the file at ``path``, decoded as UTF-8 (newlines as they are).

    Raises:
        SpecError: the file is missing, a directory or unreadable, or is not UTF-8 text;
            ``file`` is the path and, for bytes that are not UTF-8, ``line`` their line.
    """
    name = os.fsdecode(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror or exc}", file=name) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        hint = " (a binary file?)" if b"\0" in data[:1024] or data[:8].startswith(_MAGIC) else ""
        raise SpecError(
            f"not UTF-8 text: byte 0x{byte:02x} at offset {exc.start:,}{hint}",
            file=name,
            line=line,
        ) from None


def load_json(text: str | bytes, file: str | None = None, *, line: int | None = None) -> Any:
    """One JSON document, checked as any input file is.

    Args:
        text: the document (bytes: UTF-8).
        file: its file, for errors.
        line: the line ``text`` starts on in that file (one document per line), if known.

    Raises:
        SpecError: not valid JSON, ``NaN`` or ``Infinity``, nesting deeper than
            :data:`~apportion.limits.MAX_DEPTH`, an integer past
            :data:`~apportion.limits.MAX_INTEGER`, or a string with a lone surrogate.
    """

    def integer(digits: str) -> int:
        if len(digits.lstrip("-")) > len(str(MAX_INTEGER)) or abs(int(digits)) > MAX_INTEGER:
            raise _Refused(f"integer {excerpt(digits)} is out of range: beyond 2**63 - 1")
        return int(digits)

    def number(digits: str) -> float:
        value = float(digits)
        if not math.isfinite(value):
            raise _Refused(f"number {excerpt(digits)} is out of range")
        return value

    def constant(name: str) -> float:
        raise _Refused(f"{name} is not a JSON number")

    try:
        document = json.loads(text, parse_int=integer, parse_float=number, parse_constant=constant)
    except json.JSONDecodeError as exc:
        where = exc.lineno if line is None else line
        raise SpecError(f"not valid JSON: {exc.msg}", file=file, line=where) from None
    except _Refused as exc:
        raise SpecError(f"not valid JSON: {exc}", file=file, line=line) from None
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        raise SpecError(problem, file=file, line=line) from None
    except RecursionError:
        problem = f"not valid JSON: nested more than {MAX_DEPTH} deep"
        raise SpecError(problem, file=file, line=line) from None
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                problem = f"not valid JSON: {excerpt(value)} holds a lone surrogate"
                raise SpecError(problem, file=file, line=line)
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                problem = f"not valid JSON: nested more than {MAX_DEPTH} deep"
                raise SpecError(problem, file=file, line=line)
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return document


class _Refused(ValueError):
    """A JSON value :func:`load_json` does not accept."""


_SURROGATE = re.compile("[\ud800-\udfff]")

# the first bytes of common binary files: PNG, JPEG, GIF, PDF, ZIP, gzip
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"%PDF", b"PK\x03\x04", b"\x1f\x8b")


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    The file gets the permissions of the file it replaces, or, for a new file, the
    ordinary ones (``0o666`` less the umask), as :func:`open` would give it.

    Args:
        path: the file to (re)place; its directory must exist.
        data: the content; ``str`` is encoded as UTF-8 (newlines are written as given).

    Returns:
        The path written, as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``data`` is neither ``str`` nor ``bytes``.
        IsADirectoryError: ``path`` is a directory.
        OSError: the directory does not exist or cannot be written to (nothing is left
            behind).
    """
    if isinstance(data, str):
        payload = data.encode("utf-8")
    elif isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
    else:
        raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory")
    directory = target.parent
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = None
    temp = directory / f".{target.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never reuse someone else's file; 0o666 lets the umask apply as for open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return target
