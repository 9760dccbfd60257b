"""The report aggregated in the database gives the figures of the Python path.

:func:`~apportion.analysis.report.build_report` over what ``Database.load`` reads (the
reference: every call in memory) and
:func:`~apportion.analysis.window_report.report_database` (aggregates in SQL) on the same
generated database, SQLite and PostgreSQL: counts, flags, statuses, models, budgets and
percentiles equal; floats that are sums of floats (cost, outcome means and their
intervals) within ``1e-9`` relative (the database adds them in another order, and the
interval comes from sums of squares).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from apportion.analysis.figures import SPREAD_PERCENTILES
from apportion.analysis.page import report_page
from apportion.analysis.report import Thresholds, agent_calls, build_report
from apportion.analysis.window_report import report_database
from apportion.cli import app
from apportion.errors import InvalidArgument
from apportion.telemetry.sql import Database, open_database
from report_data import START, generated

TOLERANCE = 1e-9


def same(old: Any, new: Any, path: str = "") -> list[str]:
    """Where two documents differ (floats within ``TOLERANCE`` relative)."""
    if isinstance(old, dict) and isinstance(new, dict):
        if list(old) != list(new):
            return [f"{path}: keys {list(old)} != {list(new)}"]
        return [d for k in old for d in same(old[k], new[k], f"{path}.{k}")]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} items != {len(new)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for d in same(a, b, f"{path}[{i}]")
        ]
    if isinstance(old, float) and isinstance(new, float):
        if math.isclose(old, new, rel_tol=TOLERANCE, abs_tol=1e-12):
            return []
        return [f"{path}: {old!r} != {new!r}"]
    if type(old) is not type(new) or old != new:
        return [f"{path}: {old!r} != {new!r}"]
    return []


def write(url: str, seed: int) -> None:
    with Database(url, create=True) as db:
        db.write(generated(seed))


@pytest.mark.parametrize(
    "window",
    [
        {},
        {"since": START + 86_400 * 1.5},
        {"pipeline": "sales"},
        {"since": START + 3_600, "pipeline": "support"},
    ],
    ids=["all", "since", "pipeline", "both"],
)
def test_sql_and_python_reports_agree(db_url: str, window: dict[str, Any]) -> None:
    write(db_url, seed=3)
    thresholds = Thresholds(percentile=80, margin=0.2)
    with open_database(db_url) as db:
        data = db.load(since=window.get("since"), pipeline=window.get("pipeline"))
    old = build_report(data, thresholds=thresholds, **window)
    new = report_database(db_url, thresholds=thresholds, **window).document
    assert old["agents"] and old["kinds"] and old["trees"]["trees"]
    assert same(old, new) == []
    # the JSON text too, but for the last digits of sums of floats
    assert json.dumps(old, sort_keys=False).count(":") == json.dumps(new).count(":")


def test_the_figures_of_the_page_are_the_python_ones(tmp_path: Path) -> None:
    import numpy as np

    url = f"sqlite:///{tmp_path / 't.db'}"
    write(url, seed=5)
    with open_database(url) as db:
        data = db.load()
    found = report_database(url)
    for agent, calls in agent_calls(c for c in data.calls if c.used is not None).items():
        for side in ("input", "output"):
            values = np.maximum([getattr(c, f"used_{side}") for c in calls], 1)
            want = [float(np.percentile(values, q)) for q in SPREAD_PERCENTILES]
            assert found.spreads[agent][side] == pytest.approx(want, rel=1e-12)
    page = report_page(found.document, spreads=found.spreads)
    assert "Tokens used per call" in page or "<svg" in page


def test_a_window_has_an_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    write(url, seed=8)
    since, until = START + 86_400, START + 3 * 86_400
    with open_database(url) as db:
        data = db.load(since=since)
    inside = [c for c in data.calls if (c.at if c.at is not None else c.began_at) < until]
    document = report_database(url, since=since, until=until).document
    finished = [c for c in inside if c.used is not None and c.settled == "finish"]
    assert document["calls"] == len(finished)
    assert document["until"] == until


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"since": float("nan")}, "since"),
        ({"since": 10.0, "until": 5.0}, "until"),
        ({"rollups": "sometimes"}, "rollups"),
    ],
)
def test_bad_windows_are_refused_with_fields(
    tmp_path: Path, arguments: dict[str, Any], field: str
) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    write(url, seed=1)
    with pytest.raises(InvalidArgument) as caught:
        report_database(url, **arguments)
    assert caught.value.argument == field


def test_the_command_writes_the_same_json_as_before(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    write(url, seed=11)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app, ["report", url, "--json", str(out), "--html", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0, result.output
    with open_database(url) as db:
        old = build_report(db.load())
    assert same(old, json.loads(out.read_text())) == []
    assert (tmp_path / "r.html").read_text().count("<svg") >= 3


def test_a_request_prefix_keeps_one_tenants_calls_only(db_url: str) -> None:
    import dataclasses

    write(db_url, seed=3)
    write(db_url, seed=4)  # another tenant's requests, ids q4-...
    with open_database(db_url) as db:
        data = db.load()
    mine = dataclasses.replace(
        data,
        calls=tuple(c for c in data.calls if c.request_id.startswith("q3-")),
        requests={k: v for k, v in data.requests.items() if k.startswith("q3-")},
    )
    old = build_report(mine)
    new = report_database(db_url, request_prefix="q3-").document
    everyone = report_database(db_url).document
    assert 0 < old["requests"] < everyone["requests"]
    assert same(old, new) == []
    # the prefix is text, not a LIKE pattern: "_" matches only itself
    assert report_database(db_url, request_prefix="q3_").document["requests"] == 0
    with pytest.raises(InvalidArgument):
        report_database(db_url, request_prefix="")
