"""Rollout decisions as telemetry: the SQL sink's table, old databases, ``apportion report``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from apportion import Controller
from apportion.analysis.report import build_report
from apportion.cli import app
from apportion.policies import resolve_policy
from apportion.policies.rollout import Rollout
from apportion.sim.needs import draw_needs
from apportion.sim.runner import catalog_of, controller_for, pipeline_of, run_request
from apportion.sim.workload import load_workload
from apportion.telemetry import SCHEMA_VERSION, decision_log, flush
from apportion.telemetry.records import RequestUsage, RolloutRecord
from apportion.telemetry.sql import Database, open_database

WORKLOADS = Path(__file__).parent.parent.parent / "examples" / "workloads"


def _rollout(db_url: str) -> Rollout:
    """A rollout of ``estimate`` against ``iterative`` run under a controller with telemetry."""
    workload = load_workload(WORKLOADS / "seed-scenario.yaml")
    policies = {}
    for name in ("estimate", "iterative"):
        policies[name] = resolve_policy(name)
        warm = controller_for(workload, policies[name])
        for r in range(300):
            run_request(warm, workload, draw_needs(workload, 2, r), 20_000)
    clock = iter(range(1_000_000, 2_000_000))
    rollout = Rollout(
        policies["estimate"],
        policies["iterative"],
        steps=(0.25, 0.5, 1.0),
        min_requests=30,
        name="estimate-trial",
        clock=lambda: float(next(clock)),
    )
    controller = Controller(
        pipeline_of(workload),
        policy=rollout,
        store="memory://",
        catalog=catalog_of(workload),
        telemetry=db_url,
    )
    for r in range(3000):
        # fixed ids: the rollout's traffic split (a hash of the id) is the same every run
        run_request(
            controller, workload, draw_needs(workload, 1, r), 20_000, request_id=f"request-{r}"
        )
        if rollout.status != "running":
            break
    assert flush(30)
    return rollout


def test_rollout_decisions_reach_the_database_and_the_report(db_url: str, tmp_path: Path) -> None:
    rollout = _rollout(db_url)
    kinds = [e.kind for e in rollout.events]
    assert kinds[0] == "start" and "promote" in kinds and kinds[-1] == "complete"
    with open_database(db_url) as db:
        assert db.version == SCHEMA_VERSION
        data = db.load()
    assert [r.kind for r in data.rollouts] == kinds
    first, last = data.rollouts[0], data.rollouts[-1]
    assert (first.rollout, first.candidate, first.baseline) == (
        "estimate-trial",
        "estimate",
        "iterative",
    )
    assert first.share == 0.25 and first.lower is None and first.at == 1_000_000
    assert last.share == 1.0 and last.lower is not None and last.lower > 0
    document = build_report(data)
    (entry,) = document["rollouts"]
    assert entry["status"] == "complete" and entry["share"] == 1.0
    assert [d["kind"] for d in entry["decisions"]] == kinds
    json.dumps(document, allow_nan=False)

    out = tmp_path / "report.json"
    page = tmp_path / "report.html"
    result = CliRunner().invoke(
        app, ["report", db_url, "--json", str(out), "--html", str(page)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "Rollouts" in result.output and "estimate-trial" in result.output
    assert json.loads(out.read_text())["rollouts"][0]["rollout"] == "estimate-trial"
    assert "Rollouts" in page.read_text() and "complete" in page.read_text()


def test_explicit_telemetry_and_since(db_url: str) -> None:
    rollout = Rollout("estimate", "elastic", telemetry=decision_log(db_url), clock=lambda: 50.0)
    assert flush(30)
    with open_database(db_url) as db:
        (record,) = db.load().rollouts
        assert db.load(since=51).rollouts == ()
    assert record.kind == "start" and record.rollout == "estimate-vs-elastic"
    assert record.reason == rollout.events[0].reason


def test_a_version_1_database_is_read_and_upgraded(tmp_path: Path) -> None:
    from sqlalchemy import text, update

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Database(url, create=True) as db:
        db.write([RequestUsage("r1", "p", 100, 10)])
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE apportion_rollout_events"))
            meta = db.tables.meta
            conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="1"))
    with open_database(url) as db:  # a reader leaves it as it is
        assert db.version == 1
        data = db.load()
    assert set(data.requests) == {"r1"} and data.rollouts == ()
    record = RolloutRecord("x", "a", "b", "start", 0.01, "go", 0, at=5.0)
    with Database(url, create=True) as db:  # a writer adds the table
        assert db.version == SCHEMA_VERSION
        db.write_rollouts([record])
    with open_database(url) as db:
        assert db.load().rollouts == (record,)


def test_a_decision_that_cannot_be_recorded_is_a_warning_not_an_error() -> None:
    import pytest

    from apportion.telemetry import DecisionRecorder, TelemetryWarning

    rollout = Rollout("estimate", "elastic")
    rollout.candidate = object()  # type: ignore[assignment]  # no name: no record
    with pytest.warns(TelemetryWarning, match="not recorded"):
        DecisionRecorder([]).record(rollout, rollout.events[0])
    DecisionRecorder([]).record(rollout, "not a decision it keeps")  # passed over
