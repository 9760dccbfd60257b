"""The Lua scripts of the Redis store: their names, sources and SHA-1 digests.

The scripts are package data (``apportion/stores/lua/*.lua``), one per operation; a request
script is ``common.lua`` followed by its own body (``tree.lua`` between them for the scripts
that close request trees). They are read once, on first use, and
run with ``EVALSHA`` (loaded with ``SCRIPT LOAD`` when the server lacks them).
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


def _script_source(name: str) -> str:
    folder = resources.files("apportion.stores") / "lua"
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if name in _REQUEST_SCRIPTS:
        parts = ["common", "tree"] if name in _TREE_SCRIPTS else ["common"]
        head = [(folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts]
        return "\n".join([*head, body])
    return body


_SOURCES: dict[str, str] = {}
"""Each script's source, by name (filled by :func:`_load_sources`)."""
_SHAS: dict[str, str] = {}
"""Each script's SHA-1 digest, by name (what ``EVALSHA`` takes)."""


def _load_sources() -> None:
    """Read every script and its digest, once."""
    if not _SOURCES:
        for name in SCRIPTS:
            source = _script_source(name)
            _SHAS[name] = hashlib.sha1(source.encode("utf-8")).hexdigest()
            _SOURCES[name] = source
