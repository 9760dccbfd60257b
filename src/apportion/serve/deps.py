"""The ``serve`` extra's libraries, imported only when the gateway is used."""

from __future__ import annotations

import importlib

from apportion.errors import MissingExtra

__all__ = ["require_serve"]

_MODULES = ("fastapi", "starlette", "uvicorn", "httpx")


def require_serve() -> None:
    """Check the gateway's libraries import.

    Raises:
        MissingExtra: one is missing (``pip install "apportion[serve]"``).
    """
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise MissingExtra(name, "serve") from error
