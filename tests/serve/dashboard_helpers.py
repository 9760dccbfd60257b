"""What the dashboard tests share: a gateway whose pipeline has a hostile agent name."""

from __future__ import annotations

from pathlib import Path

from apportion.serve import ServeConfig
from conftest import write_config

EVIL = "<script>alert(1)</script>"
"""An agent name that must render as text, never run."""

PIPELINE = f"""\
name: dash
agents:
  - name: planner
    priority: critical
  - name: "{EVIL}"
    priority: peripheral
  - name: writer
    priority: standard
"""


def dashboard_config_file(tmp_path: Path, store: str = "memory://") -> Path:
    """A serve.yaml: three tenants (ops is admin) on ``store``, serving the pipeline above."""
    (tmp_path / "dash.yaml").write_text(PIPELINE, encoding="utf-8")
    extra = "pipelines:\n  dash:\n    path: dash.yaml\n    policy: elastic\n    ceiling: 20000\n"
    return write_config(tmp_path, store=store, extra=extra)


def dashboard_config(tmp_path: Path, store: str = "memory://") -> ServeConfig:
    """The config of :func:`dashboard_config_file`."""
    return ServeConfig.from_yaml(dashboard_config_file(tmp_path, store))
