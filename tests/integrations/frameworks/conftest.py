"""Shared helpers for the framework adapter tests."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module_name: str) -> ModuleType:
    """Import a framework: skip the module's tests if it is missing, unless
    ``APPORTION_REQUIRE_FRAMEWORKS`` is set (CI), where a missing framework fails."""
    if not os.environ.get("APPORTION_REQUIRE_FRAMEWORKS"):
        return pytest.importorskip(module_name)
    return importlib.import_module(module_name)
