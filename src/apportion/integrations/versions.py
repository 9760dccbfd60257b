"""The framework versions an adapter supports: one check for every adapter."""

from __future__ import annotations

import importlib.metadata

from apportion.errors import MissingExtra, UnsupportedVersion

__all__ = ["installed", "within"]


def _release(version: str) -> tuple[int, ...]:
    """``"1.5.2rc1"`` as ``(1, 5, 2)``: the leading numbers of each part, padded to three."""
    parts = []
    for part in version.split(".")[:3]:
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def within(package: str, version: str, supported: str, extra: str | None = None) -> None:
    """Refuse ``version`` of ``package`` unless it is in ``supported`` (``">=1.5,<2"``).

    Raises:
        UnsupportedVersion: outside the range (the error names it, and the extra).
    """
    fits = bool(version) and version[0].isdigit()
    found = _release(version) if fits else ()
    for bound in supported.split(","):
        bound = bound.strip()
        if bound.startswith(">="):
            fits = fits and found >= _release(bound[2:])
        elif bound.startswith("<"):
            fits = fits and found < _release(bound[1:])
    if not fits:
        raise UnsupportedVersion(package, version, supported, extra)


def installed(package: str, extra: str) -> str:
    """The installed version of ``package`` (a distribution's name).

    Raises:
        MissingExtra: it is not installed (the error names ``extra``).
    """
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingExtra(package, extra) from error
