"""A request tree's telemetry on the Redis store (a real server): each record names its
parent, root and depth, and a child drawn through a handle on another process's request
is marked so that sinks do not wait for that parent's record."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from redis_server import RedisServer

from apportion import Agent, BudgetExceeded, Controller, Pipeline
from apportion.stores.redis import RedisStore
from apportion.telemetry import flush

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "telemetry"))
from telemetry_helpers import ListSink, child_left_open

PIPELINE = Pipeline([Agent("lead", priority="critical"), Agent("worker")], name="tree")


def test_tree_records_on_redis(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    store._client.flushdb()
    sink, worker_sink = ListSink(), ListSink()
    controller = Controller(PIPELINE, policy="uniform", store=store, telemetry=sink)
    worker = Controller(PIPELINE, policy="uniform", store=store, telemetry=worker_sink)
    with controller.request(10_000) as req:
        with req.child("local", ceiling=2_000) as local, local.child("deep", ceiling=500) as deep:
            g = deep.begin("worker", 50, 50)
            deep.finish(g, input_tokens=50, output_tokens=20)
        with worker.attach(req.request_id).child("remote", ceiling=1_000) as remote:
            g = remote.begin("worker", 100, 50)
            remote.finish(g, input_tokens=100, output_tokens=30)
    assert flush(30)
    root = req.request_id
    here = {r.request_id: (r.parent_id, r.root_id, r.depth, r.parent_local) for r in sink.records}
    assert here == {
        root: (None, root, 0, False),
        f"{root}::local": (root, root, 1, True),
        f"{root}::local::deep": (f"{root}::local", root, 2, True),
    }
    (far,) = worker_sink.records
    assert (far.request_id, far.parent_id, far.root_id, far.depth) == (
        f"{root}::remote",
        root,
        root,
        1,
    )
    assert far.parent_local is False  # its parent's record is another process's to send


def test_what_another_process_left_is_recorded_at_close_on_redis(
    redis_server: RedisServer,
) -> None:
    """A child another process opened and left open, and a begin it had refused."""
    store = RedisStore(redis_server.url)
    store._client.flushdb()
    pipeline = Pipeline([Agent("lead", priority="critical", min_output=3_000), Agent("worker")])
    sink = ListSink()
    controller = Controller(pipeline, policy="uniform", store=store, telemetry=sink)
    worker = Controller(pipeline, policy="uniform", store=store)
    with controller.request(2_000) as req:
        remote = child_left_open(worker, req.request_id, "remote", 1_000, (100, 30))
        with pytest.raises(BudgetExceeded):
            worker.attach(req.request_id).begin("lead", 100)
    assert flush(30)
    records = {r.request_id: r for r in sink.records}
    assert set(records) == {req.request_id, remote.request_id}
    assert [c.used for c in records[remote.request_id].calls] == [130]
    assert records[req.request_id].refused == {"lead": 1}
    assert records[req.request_id].consumed == 130
