"""Generated telemetry for comparing the report's two paths (Python and SQL).

Every shape the report tells apart, drawn from a seeded generator: agents listed and
agents of a kind (``expert:*``), calls finished, released, expired, cut, with their input
cut, extended, over their lease, with and without grants, statuses and models and costs,
refused begins (with kinds), scored requests, two pipelines, request trees, calls with no
time, and times spread over ``DAYS`` days from ``START`` (UTC midnight).
"""

from __future__ import annotations

import math
import random
from typing import Any

from sqlalchemy import text, update

from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.rollups import RELATIVE_ERROR
from apportion.telemetry.sql import Database

START = 1_750_032_000.0  # a UTC midnight
DAYS = 6
AGENTS = ("planner", "writer", "critic", "expert:ada", "expert:bob", "judge:x")
STATUSES = (None, "completed", "cut", "wrapped_up", "late", "")
MODELS = (None, "", "gpt-a", "gpt-b")


def _call(rng: random.Random, rid: str, gid: int, at: float | None) -> CallUsage:
    agent = rng.choice(AGENTS)
    kind = agent.split(":")[0] if ":" in agent else None
    settled = rng.choices(["finish", "release", "expire", "close"], [12, 2, 1, 1])[0]
    finished = settled == "finish"
    used_in = int(rng.lognormvariate(6, 1.2)) if finished else None
    used_out = int(rng.lognormvariate(4, 1.0)) if finished else None
    if finished and rng.random() < 0.05:
        used_in = 0
    sized = rng.random() < 0.8
    truncated = rng.choice([True, False, False, False, None]) if finished else None
    input_cut = rng.choice([True, False, False, None, None]) if finished else None
    return CallUsage(
        request_id=rid,
        grant_id=gid,
        agent=agent,
        kind=kind,
        granted_context=rng.randint(100, 5000) if sized else None,
        granted_output=rng.randint(50, 800) if sized else None,
        used_input=used_in,
        used_output=used_out,
        truncated=truncated,
        input_cut=input_cut,
        dropped_tokens=rng.randint(1, 500) if input_cut else None,
        overuse=rng.choice([0, 0, 0, 7]),
        extensions=rng.choice([0, 0, 1]),
        settled=settled,
        model=rng.choice(MODELS),
        cost_usd=round(rng.random() / 100, 6) if rng.random() < 0.5 else None,
        began_at=None if at is None else at - 1,
        at=at,
        status=rng.choice(STATUSES),
    )


def generated(seed: int, requests: int = 300) -> list[RequestUsage]:
    """``requests`` flat requests, and some trees, spread over ``DAYS`` days."""
    rng = random.Random(seed)
    out: list[RequestUsage] = []
    for number in range(requests):
        rid = f"q{seed}-{number:05d}"
        untimed = rng.random() < 0.03
        opened = None if untimed else START + rng.random() * DAYS * 86_400
        calls = tuple(
            _call(rng, rid, gid, None if opened is None else opened + gid * 7)
            for gid in range(1, rng.randint(1, 6))
        )
        refused = {rng.choice(AGENTS): rng.randint(1, 2)} if rng.random() < 0.1 else {}
        kinds = {a: a.split(":")[0] for a in refused if ":" in a}
        tree = rng.random() < 0.15
        outcome = round(rng.random(), 3) if rng.random() < 0.6 else None
        record = RequestUsage(
            request_id=rid,
            pipeline=rng.choice(["support", "support", "sales"]),
            ceiling=20_000,
            consumed=sum(c.used or 0 for c in calls),
            overflow=rng.choice([0, 0, 0, 40]),
            outcome=outcome,
            opened_at=opened,
            closed_at=None if opened is None else opened + 60,
            calls=calls,
            refused=refused,
            refused_kinds=kinds,
            root_id=rid if tree else None,
        )
        out.append(record)
        if tree:
            for k in range(rng.randint(1, 3)):
                kid = f"{rid}::helper#{k}" if k else f"{rid}::checker"
                kcalls = tuple(
                    _call(rng, kid, gid, None if opened is None else opened + 30 + gid)
                    for gid in range(1, rng.randint(1, 3))
                )
                out.append(
                    RequestUsage(
                        request_id=kid,
                        pipeline=record.pipeline,
                        ceiling=4_000,
                        consumed=sum(c.used or 0 for c in kcalls),
                        opened_at=None if opened is None else opened + 30,
                        closed_at=None if opened is None else opened + 50,
                        calls=kcalls,
                        parent_id=rid,
                        root_id=rid,
                        depth=1,
                    )
                )
    return out


def make_version_4(url: str) -> None:
    """Turn a database back into what version 4 wrote: no rollups table."""
    with Database(url) as db, db.engine.begin() as conn:
        conn.execute(text("DROP TABLE apportion_daily"))
        conn.execute(
            update(db.tables.meta).where(db.tables.meta.c.key == "schema_version").values(value="4")
        )


def close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def agree_within_the_bound(raw: dict[str, Any], rolled: dict[str, Any]) -> None:
    """Counts, sums, maxima and rates equal; percentiles within the bound."""
    assert raw["calls"] == rolled["calls"]
    assert raw["statuses"] == rolled["statuses"]
    assert list(raw["agents"]) == list(rolled["agents"])
    assert list(raw["kinds"]) == list(rolled["kinds"])
    for group in ("agents", "kinds"):
        for name, a in raw[group].items():
            b = rolled[group][name]
            for key in (
                "calls",
                "released",
                "granted_calls",
                "ceiling_hits",
                "ceiling_known_calls",
                "overuse",
                "statuses",
                "models",
                "over_budgeted",
                "under_budgeted",
            ):
                assert a[key] == b[key], (group, name, key)
            for key in ("utilization", "ceiling_hit_rate", "truncation_rate", "cost_usd"):
                assert close(a[key], b[key], 1e-9), (group, name, key)
            for side in ("input", "output"):
                assert a[side]["max"] == b[side]["max"]
                assert close(a[side]["mean"], b[side]["mean"], 1e-12)
                for q in ("p50", "p90", "p99"):
                    assert close(a[side][q], b[side][q], RELATIVE_ERROR * (1 + 1e-9)), (
                        group,
                        name,
                        side,
                        q,
                    )
