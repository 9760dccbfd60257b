"""The one version check every framework adapter uses."""

from __future__ import annotations

import pytest

from apportion.errors import MissingExtra, UnsupportedVersion
from apportion.integrations.versions import installed, within


@pytest.mark.parametrize("version", ["1.5.0", "1.5.2", "1.9", "1.10.3rc1", "1.99.99"])
def test_a_version_in_range_passes(version: str) -> None:
    within("langchain", version, ">=1.5,<2", "langchain")


@pytest.mark.parametrize("version", ["1.4.9", "2.0.0", "2", "0.24", "", "dev", "1.5.0"[:0]])
def test_a_version_out_of_range_names_the_range_and_the_extra(version: str) -> None:
    with pytest.raises(UnsupportedVersion) as refused:
        within("langchain", version, ">=1.5,<2", "langchain")
    assert refused.value.supported == ">=1.5,<2" and refused.value.version == version
    assert 'pip install "apportion[langchain]"' in str(refused.value)


def test_a_narrow_range() -> None:
    within("openai-agents", "0.24.3", ">=0.24,<0.25")
    with pytest.raises(UnsupportedVersion):
        within("openai-agents", "0.25.0", ">=0.24,<0.25")


def test_a_missing_package_names_its_extra() -> None:
    assert installed("pytest", "dev")
    with pytest.raises(MissingExtra, match=r"apportion\[crewai\]"):
        installed("no-such-distribution-apportion", "crewai")
