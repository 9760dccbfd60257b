"""The Lua code of the Redis store: one function per operation, as a library and as scripts.

The code is package data (``apportion/stores/lua/*.lua``): ``common.lua`` (the helpers of
every request operation), ``tree.lua`` (those of the operations that close request trees)
and one body per operation. It is read once, on first use, and run in one of two forms:

* **A Redis Functions library** (Redis 7 and later; the default): every body becomes one
  function of one library (:data:`_LIBRARY`, named after its own digest, so versions
  coexist on a server), loaded once with ``FUNCTION LOAD`` and called with ``FCALL``. The
  helpers are built once, when the library loads; a call runs its body alone.
* **Scripts** (servers without functions): a request script is ``common.lua`` (and
  ``tree.lua`` for ``close`` and ``reap``) followed by its body, run with ``EVALSHA``
  (loaded with ``SCRIPT LOAD`` when the server lacks it), so every call builds the helpers
  again (about 5 us of server time a call on the machine of the README's figures).

In both, a request operation's body starts with ``start()`` (``common.lua``), and reads
``KEYS`` and ``ARGV``: a script's globals, or the library's own locals that each function
sets from its arguments.
"""

from __future__ import annotations

import hashlib
from importlib import resources

SCRIPTS = (
    "open",
    "children",
    "begin",
    "extend",
    "finish",
    "release",
    "close",
    "reap",
    "note",
    "pool_draw",
    "pool_return",
    "pool_void",
    "read",
)
"""The Lua scripts, one per operation (request scripts start with ``common.lua``)."""

_PUT_STATE = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'd', ARGV[2])
return v + 1
"""
"""Compare-and-set of a policy's state (small enough to stay inline)."""

_REQUEST_SCRIPTS = frozenset(
    {"open", "children", "begin", "extend", "finish", "release", "close", "reap", "note"}
)


_TREE_SCRIPTS = frozenset({"close", "reap"})
"""The request scripts that close request trees (``tree.lua`` holds their helpers)."""


def _read(name: str) -> str:
    return (resources.files("apportion.stores") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def _body(name: str) -> str:
    """An operation's own code (``start()`` first for a request operation)."""
    body = _read(name)
    return f"start()\n{body}" if name in _REQUEST_SCRIPTS else body


def _script_source(name: str) -> str:
    """An operation as a script: the helpers it uses, then its body."""
    if name not in _REQUEST_SCRIPTS:
        return _body(name)
    parts = ["common", "tree"] if name in _TREE_SCRIPTS else ["common"]
    return "\n".join([*(_read(part) for part in parts), _body(name)])


def _library_source() -> tuple[str, dict[str, str]]:
    """The library of every operation, and each operation's function name."""
    code = "\n".join([_read("common"), _read("tree")])
    digest = hashlib.sha1(
        "\n".join([code, *(_body(name) for name in SCRIPTS)]).encode("utf-8")
    ).hexdigest()[:16]
    library = f"apportion_{digest}"
    names = {name: f"{library}_{name}" for name in SCRIPTS}
    functions = [
        f"redis.register_function('{names[name]}', function(keys, args)\n"
        f"KEYS, ARGV = keys, args\n{_body(name)}\nend)"
        for name in SCRIPTS
    ]
    head = f"#!lua name={library}\nlocal KEYS, ARGV -- the call's (each function sets them)"
    return "\n".join([head, code, *functions]) + "\n", names


_SOURCES: dict[str, str] = {}
"""Each script's source, by name (filled by :func:`_load_sources`)."""
_SHAS: dict[str, str] = {}
"""Each script's SHA-1 digest, by name (what ``EVALSHA`` takes)."""
_LIBRARY: list[str] = []
"""The library's source, once read (what ``FUNCTION LOAD`` takes)."""
_FUNCTIONS: dict[str, str] = {}
"""Each operation's function name in the library, by operation (what ``FCALL`` takes)."""


def _load_sources() -> None:
    """Read every script and its digest, once."""
    if not _SOURCES:
        for name in SCRIPTS:
            source = _script_source(name)
            _SHAS[name] = hashlib.sha1(source.encode("utf-8")).hexdigest()
            _SOURCES[name] = source
        library, names = _library_source()
        _FUNCTIONS.update(names)
        _LIBRARY.append(library)
