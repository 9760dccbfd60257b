"""Without their framework installed, the AutoGen and CrewAI adapters name the extra."""

from __future__ import annotations

import importlib.metadata

import pytest

from apportion.errors import MissingExtra
from apportion.integrations import autogen, crewai


def _not_installed(name: str) -> str:
    raise importlib.metadata.PackageNotFoundError(name)


def test_a_missing_framework_names_its_extra(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", _not_installed)
    with pytest.raises(MissingExtra, match=r"apportion\[autogen\]") as caught:
        autogen.budgeted(object(), agent="triage")
    assert caught.value.extra == "autogen"
    with pytest.raises(MissingExtra, match=r"apportion\[crewai\]") as caught:
        crewai.budgeted_llm("gpt-4o-mini")
    assert caught.value.extra == "crewai"
