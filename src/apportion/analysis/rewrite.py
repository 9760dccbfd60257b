"""Writing the priorities a sweep found back into a pipeline or workload file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from apportion.files import write_atomic
from apportion.spec import Pipeline


def write_priorities(source: str | Path, priorities: Mapping[str, str], out: str | Path) -> None:
    """Write a copy of ``source`` (a pipeline or workload YAML) with ``priorities`` set.

    A workload keeps every other key; its comments are not kept. A pipeline file is
    written through :class:`~apportion.Pipeline`, so it is validated on the way.
    """
    data: Any = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    if (
        isinstance(data, dict)
        and isinstance(data.get("agents"), list)
        and any(isinstance(a, dict) and ("input" in a or "output" in a) for a in data["agents"])
    ):
        for agent in data["agents"]:
            if agent.get("name") in priorities:
                agent["priority"] = priorities[agent["name"]]
        header = f"# {Path(source).name} with priorities from apportion sweep\n"
        write_atomic(out, header + yaml.safe_dump(data, sort_keys=False))
        return
    pipeline = Pipeline.from_yaml(source).with_priorities(priorities)
    write_atomic(out, pipeline.to_yaml())
