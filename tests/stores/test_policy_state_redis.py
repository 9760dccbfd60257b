"""What predicting policies learn, shared through a real redis-server: restarts start warm."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from apportion import Controller, ElasticPolicy, EstimatePolicy
from apportion.policies import LearnedPolicy
from apportion.policies.predicting import PredictingPolicy
from apportion.sim.needs import draw_needs
from apportion.sim.runner import controller_for, run_request
from apportion.sim.workload import Workload, load_workload
from apportion.stores.redis import RedisStore

WORKLOAD = Path(__file__).parents[2] / "examples" / "workloads" / "seed-scenario.yaml"
FORK = multiprocessing.get_context("fork")


def workload() -> Workload:
    return load_workload(WORKLOAD)


def fresh(server: RedisServer) -> RedisStore:
    store = RedisStore(server.url)
    store._client.flushdb()
    return store


def play(controller: Controller, requests: range) -> None:
    work = workload()
    for r in requests:
        run_request(controller, work, draw_needs(work, work.seed, r), work.ceiling)


def decisions(controller: Controller, r: int) -> list[tuple[str, str, int, int]]:
    work = workload()
    outcome = run_request(controller, work, draw_needs(work, work.seed, r), work.ceiling)
    return [
        (e.kind, str(e.agent), e.context_tokens, e.output_tokens)
        for e in controller.store.events(outcome.request_id)
        if e.kind in ("begin", "extend")
    ]


@pytest.mark.parametrize(
    ("cls", "options"),
    [(EstimatePolicy, {}), (ElasticPolicy, {}), (LearnedPolicy, {"seed": 2, "explore": 0.0})],
)
def test_a_restarted_worker_decides_as_the_trained_one(
    redis_server: RedisServer, cls: type[PredictingPolicy], options: dict[str, Any]
) -> None:
    store = fresh(redis_server)
    trained = controller_for(workload(), cls(store=store, sync_every=1, **options))
    play(trained, range(33))
    if isinstance(trained.policy, LearnedPolicy):
        trained.policy.outcome_model(trained.pipeline)._posterior = None  # a refreshed cache
    # a new process would open its own connection: a new client, a new policy object
    restarted = controller_for(workload(), cls(store=RedisStore(redis_server.url), **options))
    assert decisions(restarted, 33) == decisions(trained, 33)
    cold = controller_for(workload(), cls(**options))
    assert decisions(cold, 33) != decisions(restarted, 33)


def _worker(url: str, start: int) -> None:
    policy = EstimatePolicy(store=RedisStore(url), sync_every=5)
    controller = controller_for(workload(), policy)
    play(controller, range(start, start + 10))


def test_processes_add_up_what_they_learn(redis_server: RedisServer) -> None:
    store = fresh(redis_server)
    workers = [FORK.Process(target=_worker, args=(redis_server.url, 10 * i)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    got = store.get_state("estimate.needs")
    assert got is not None
    model = json.loads(got[1])["pipelines"]["seed-scenario"]
    # every call of the 40 requests, merged by compare-and-set from four processes
    assert {name: entry["count"] for name, entry in model["output"].items()} == dict.fromkeys(
        model["agents"], 40
    )
    joiner = EstimatePolicy(store=store)
    pipeline = controller_for(workload(), joiner).pipeline
    assert joiner.needs(pipeline).seen(pipeline["reasoner"]) == 40
