"""The report's numbers against hand-computed values, and its flags (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from analysis_helpers import write_hand_set

from apportion.analysis.report import (
    REPORT_COLUMNS,
    Thresholds,
    build_report,
    parse_since,
    report_rows,
)
from apportion.analysis.stats import mean_ci, percentile, t_quantile_975
from apportion.telemetry.records import CallUsage
from apportion.telemetry.sql import Database, Dataset, open_database

approx = pytest.approx


def _report(url: str, **load: Any) -> dict[str, Any]:
    with open_database(url) as db:
        data = db.load(**load)
    return build_report(data, since=load.get("since"))


def test_numbers_match_the_hand_computation(db_url: str) -> None:
    write_hand_set(db_url)
    report = _report(db_url)
    assert (report["requests"], report["requests_scored"], report["calls"]) == (4, 4, 10)
    assert list(report["agents"]) == ["critic", "planner", "writer"]

    planner = report["agents"]["planner"]
    assert (planner["calls"], planner["released"]) == (4, 1)
    assert planner["input"] == approx({"p50": 85, "p90": 97, "p99": 99.7, "mean": 82.5, "max": 100})
    assert planner["output"] == approx({"p50": 35, "p90": 47, "p99": 49.7, "mean": 35, "max": 50})
    assert planner["utilization"] == approx(470 / 600)
    assert planner["ceiling_hit_rate"] == 0
    assert planner["recommended"] == {"context_tokens": 107, "output_tokens": 52, "censored": False}
    uncut = planner["quality"]["uncut"]
    assert uncut == approx(
        {"mean": 0.625, "ci_low": 0.272174, "ci_high": 0.977826, "requests": 4}, abs=1e-5
    )
    assert planner["quality"]["cut"] == {
        "mean": None,
        "ci_low": None,
        "ci_high": None,
        "requests": 0,
    }

    critic = report["agents"]["critic"]
    assert critic["input"] == approx({"p50": 150, "p90": 190, "p99": 199, "mean": 150, "max": 200})
    assert critic["output"] == approx({"p50": 100, "p90": 140, "p99": 149, "mean": 100, "max": 150})
    assert critic["utilization"] == approx(0.125)
    assert critic["recommended"] == {"context_tokens": 209, "output_tokens": 154, "censored": False}
    assert critic["quality"]["uncut"] == approx(
        {"mean": 0.7, "ci_low": -1.84124, "ci_high": 3.24124, "requests": 2}, abs=1e-5
    )

    writer = report["agents"]["writer"]
    assert writer["output"] == approx({"p50": 65, "p90": 91, "p99": 99.1, "mean": 70, "max": 100})
    assert writer["input"]["p90"] == 100
    assert writer["utilization"] == approx(680 / 800)
    assert writer["ceiling_hit_rate"] == 0.5
    assert writer["truncation_rate"] == 0.25
    # the P90 of what was needed (input + dropped), 135 -> 149, and of the output, 91 -> 101,
    # are raised to the largest cut call plus 10%: 150 -> 165 and 100 -> 110
    assert writer["recommended"] == {"context_tokens": 165, "output_tokens": 110, "censored": True}
    assert writer["quality"]["cut"] == approx(
        {"mean": 0.65, "ci_low": -2.52655, "ci_high": 3.82655, "requests": 2}, abs=1e-5
    )
    assert writer["quality"]["uncut"] == approx(
        {"mean": 0.6, "ci_low": -0.67062, "ci_high": 1.87062, "requests": 2}, abs=1e-5
    )


def test_flags_of_constructed_agents(db_url: str) -> None:
    write_hand_set(db_url)
    agents = _report(db_url)["agents"]
    flags = {a: (f["over_budgeted"], f["under_budgeted"]) for a, f in agents.items()}
    assert flags == {
        "planner": (False, False),  # 78% used, no call cut
        "critic": (True, False),  # 12.5% used
        "writer": (False, True),  # half of its calls cut
    }


def test_the_thresholds_are_the_issues(db_url: str) -> None:
    write_hand_set(db_url)
    report = _report(db_url)
    assert report["thresholds"]["over_utilization"] == 0.5
    assert report["thresholds"]["under_hit_rate"] == 0.10


def test_since_keeps_the_later_calls(db_url: str) -> None:
    write_hand_set(db_url)
    report = _report(db_url, since=1500.0)
    assert list(report["agents"]) == ["planner", "writer"]
    assert report["agents"]["planner"]["calls"] == 2
    assert report["requests"] == 2


def test_calls_without_known_grants_have_unknown_flags() -> None:
    calls = tuple(CallUsage("r", i, "a", used_input=10 * i, used_output=i) for i in range(1, 4))
    report = build_report(Dataset("x", calls, {}))
    a = report["agents"]["a"]
    assert (a["utilization"], a["ceiling_hit_rate"]) == (None, None)
    assert (a["over_budgeted"], a["under_budgeted"]) == (None, None)
    assert a["recommended"]["output_tokens"] == 4  # P90 of 1, 2, 3 is 2.8, plus 10%


def test_an_empty_database_says_so(db_url: str) -> None:
    with Database(db_url, create=True):
        pass
    report = _report(db_url)
    assert report["empty"] and report["agents"] == {}
    assert "holds no telemetry" in report["message"]
    write_hand_set(db_url)
    later = _report(db_url, since=10_000.0)
    assert later["empty"] and "no finished calls since" in later["message"]


def test_the_terminal_table_has_one_row_per_agent(db_url: str) -> None:
    from rich.console import Console

    from apportion.cli.tables import quality_table, report_table

    write_hand_set(db_url)
    console = Console(width=200, record=True)
    report = _report(db_url)
    console.print(report_table(report))
    console.print(quality_table(report))
    text = console.export_text()
    assert "under-budgeted" in text and "over-budgeted" in text
    assert "85 / 97 / 100" in text  # planner's input P50 / P90 / P99 (99.7 shown whole)
    assert "0.65 [-2.53, 3.83]" in text


def test_custom_thresholds() -> None:
    calls = tuple(
        CallUsage(
            "r",
            i,
            "a",
            granted_context=100,
            granted_output=100,
            used_input=50,
            used_output=10,
            truncated=i == 1,
        )
        for i in range(1, 6)
    )
    report = build_report(
        Dataset("x", calls, {}), thresholds=Thresholds(over_utilization=0.2, under_hit_rate=0.3)
    )
    assert report["agents"]["a"]["over_budgeted"] is False  # 30% used
    assert report["agents"]["a"]["under_budgeted"] is False  # 20% cut


# --------------------------------------------------------------- statistics


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_is_numpys_linear(q: float) -> None:
    rng = np.random.default_rng(3)
    for size in (1, 2, 7, 100):
        values = rng.integers(0, 10_000, size).tolist()
        assert percentile(values, q) == approx(float(np.percentile(values, q)))


def test_t_quantiles() -> None:
    expected = {1: 12.7062, 2: 4.3027, 10: 2.2281, 30: 2.0423, 31: 2.0395, 60: 2.0003, 120: 1.9799}
    for df, t in expected.items():
        assert t_quantile_975(df) == approx(t, abs=2e-4)


def test_mean_ci() -> None:
    assert mean_ci([]) == (None, None, None, 0)
    assert mean_ci([0.5]) == (0.5, None, None, 1)
    mean, low, high, n = mean_ci([1.0, 2.0, 3.0])  # s = 1, se = 1/sqrt(3), t(2) = 4.3027
    assert (mean, n) == (2.0, 3)
    assert low == approx(2 - 4.3027 / 3**0.5) and high == approx(2 + 4.3027 / 3**0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", 1_000_000 - 1800), ("2d", 1_000_000 - 172_800), ("1234.5", 1234.5)],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=1_000_000) == expected


def test_parse_since_dates_and_mistakes() -> None:
    assert parse_since("2024-01-01T00:00:00+00:00") == 1_704_067_200
    with pytest.raises(ValueError, match="duration"):
        parse_since("last tuesday")


def test_an_agent_whose_input_was_cut_is_raised_never_lowered(tmp_path: Any) -> None:
    """The issue's Quickstart shape: grants that cut an agent's input with tokens unspent."""
    from apportion import Agent, Controller, Pipeline
    from apportion.analysis.profile import profile_budgets
    from apportion.telemetry import flush

    url = f"sqlite:///{tmp_path / 'cut.db'}"
    pipeline = Pipeline(
        [
            Agent("triage", priority="peripheral", output_kind="structured"),
            Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
            Agent("formatter", priority="peripheral", after=["reasoner"]),
        ],
        name="quick",
    )
    controller = Controller(pipeline, policy="uniform", telemetry=url)
    for _ in range(3):
        with controller.request(ceiling=12_000) as req:
            for agent, held, wrote in (("triage", 600, 60), ("reasoner", 7_900, 1_300)):
                grant = req.begin(agent, input_tokens=held)
                req.finish(grant, input_tokens=grant.context_tokens, output_tokens=wrote)
        assert req.summary().agents["reasoner"].input_cut_calls == 1  # 4,000 a share
        assert req.summary().free > 3_000  # while tokens went unspent
    assert flush(10)
    with open_database(url) as db:
        data = db.load()
    reasoner = build_report(data)["agents"]["reasoner"]
    assert reasoner["input_cut_rate"] == 1.0 and reasoner["under_budgeted"]
    assert reasoner["over_budgeted"] is False
    assert reasoner["recommended"]["context_tokens"] >= 7_900  # the input it had in hand
    budget = profile_budgets(data)["reasoner"]
    assert budget["input_cut_calls"] == 3 and budget["context_tokens"] >= 7_900


def test_a_call_that_outlived_its_lease_is_in_the_report(tmp_path: Any) -> None:
    from apportion import Agent, Controller, Pipeline
    from apportion.telemetry import flush

    url = f"sqlite:///{tmp_path / 'late.db'}"
    now = [1000.0]
    pipeline = Pipeline([Agent("writer")], name="late")
    controller = Controller(pipeline, telemetry=url, clock=lambda: now[0], lease_seconds=10)
    with controller.request(ceiling=1_000) as req:
        grant = req.begin("writer", input_tokens=300, output_tokens=200)
        now[0] += 60  # a long stream: the lease ran out, its tokens were reclaimed
        controller.reap()
        req.finish(grant, input_tokens=300, output_tokens=900)  # beyond the ceiling too
    assert flush(10)
    with open_database(url) as db:
        data = db.load()
    (call,) = data.calls
    assert (call.settled, call.overuse, call.used) == ("finish", 1_200, 1_200)
    report = build_report(data)
    assert report["agents"]["writer"]["overuse"] == 1_200
    assert report["overflow"] == 200  # 1,200 used where 1,000 was the ceiling
    row = dict(zip(REPORT_COLUMNS, report_rows(report)[0], strict=True))
    assert row["over-use"] == "1,200"
