"""``/metrics`` counts the telemetry records a process dropped, by sink and reason."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from apportion.serve import create_app
from apportion.telemetry.channel import Channel


class Refusing:
    name = "refusing-sink"

    def write(self, batch: Sequence[Any]) -> None:
        raise ValueError("no")


def _scrape(app: Any) -> str:
    async def get() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return (await client.get("/metrics")).text

    return asyncio.run(get())


def _dropped(text: str) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name == "apportion_telemetry_dropped":
            for s in family.samples:
                if s.name.endswith("_total"):
                    found[(s.labels["sink"], s.labels["reason"])] = s.value
    return found


def test_metrics_count_the_dropped_telemetry_records() -> None:
    app = create_app()  # open mode: /metrics public; a prometheus:// sink is added
    before = _dropped(_scrape(app)).get(("refusing-sink", "failed"), 0.0)
    channel = Channel(Refusing())
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for i in range(3):
            channel.submit(i)
        assert channel.flush(10)
    after = _dropped(_scrape(app))
    assert after[("refusing-sink", "failed")] == before + 3
