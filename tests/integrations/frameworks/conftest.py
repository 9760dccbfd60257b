"""Shared helpers of the framework adapter tests."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

SEPARATE: frozenset[str] = frozenset({"crewai"})
"""Frameworks that cannot share the main environment (CrewAI pins ``openai<3``): CI tests
them in one of their own (``.ci/run``), so ``CI`` alone does not require them."""


def require(module_name: str) -> ModuleType:
    """Import a framework: skip the module's tests without it, unless they must run.

    They must with ``APPORTION_REQUIRE_FRAMEWORKS`` set, or with ``CI`` set (for every
    framework but those of :data:`SEPARATE`): a missing framework then fails instead.
    """
    required = os.environ.get("APPORTION_REQUIRE_FRAMEWORKS") or (
        os.environ.get("CI") and module_name not in SEPARATE
    )
    if not required:
        return pytest.importorskip(module_name)
    return importlib.import_module(module_name)
