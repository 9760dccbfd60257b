"""The grant's model and cost per call reach the records and the SQL sink."""

from __future__ import annotations

import pytest
from telemetry_helpers import PIPELINE, ListSink, ticking_clock

from apportion import Controller
from apportion.analysis.report import build_report
from apportion.catalog import Catalog, ModelInfo
from apportion.telemetry import flush
from apportion.telemetry.sql import open_database

CATALOG = Catalog(
    [
        ModelInfo("large", 3.0, 15.0, capability={"reasoning": 1.0}),
        ModelInfo("small", 0.15, 0.6, capability={"reasoning": 0.5}),
    ],
    litellm=False,
)


def _request(telemetry: object) -> None:
    ctl = Controller(
        PIPELINE, policy="elastic", telemetry=telemetry, clock=ticking_clock(), catalog=CATALOG
    )
    with ctl.request(ceiling=20_000, ceiling_usd=0.5) as req:
        g = req.begin("triage", input_tokens=1_000, output_tokens=100, model="small")
        req.finish(g, input_tokens=1_000, output_tokens=50)
        g = req.begin("reasoner", input_tokens=2_000, output_tokens=500, model="large")
        req.annotate(g, cost_usd=0.5)  # an integration's own figure wins
        req.finish(g, input_tokens=2_000, output_tokens=400)
        g = req.begin("formatter", input_tokens=100, output_tokens=100, model="small")
        req.release(g)


def test_records_carry_the_grants_model_and_cost():
    sink = ListSink()
    _request(sink)
    assert flush(30)
    (record,) = sink.records
    calls = {c.agent: c for c in record.calls}
    assert calls["triage"].model == "small"
    assert calls["triage"].cost_usd == pytest.approx((1_000 * 0.15 + 50 * 0.6) / 1e6)
    assert (calls["reasoner"].model, calls["reasoner"].cost_usd) == ("large", 0.5)
    assert calls["formatter"].model == "small" and calls["formatter"].cost_usd is None


def test_sql_sink_and_report_show_the_cost_per_agent(db_url: str):
    _request(db_url)
    assert flush(30)
    with open_database(db_url) as db:
        data = db.load()
    triage = next(c for c in data.calls if c.agent == "triage")
    assert triage.model == "small"
    assert triage.cost_usd == pytest.approx(0.00018)
    report = build_report(data)
    agents = report["agents"]
    assert agents["triage"]["cost_usd"] == pytest.approx(0.00018)
    assert agents["triage"]["models"] == ["small"]
