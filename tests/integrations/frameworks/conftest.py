"""Shared helpers of the framework adapter tests."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module_name: str) -> ModuleType:
    """Import a framework: skip the module without it, unless CI requires the frameworks.

    With ``APPORTION_REQUIRE_FRAMEWORKS`` set, a missing framework fails the tests instead.
    """
    if not os.environ.get("APPORTION_REQUIRE_FRAMEWORKS"):
        return pytest.importorskip(module_name)
    return importlib.import_module(module_name)
