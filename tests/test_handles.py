"""A handle closing a request learns what was done through other handles.

In the gateway every call takes a handle of its own (``Controller.attach``): the begin, the
finish and the close of one request come through different handles, often different
processes. The handle that closes the request reads the calls and the refused begins from
the store (:func:`apportion.calls.records_of` over the ledger's events, and the store's
notes), so the policy learns from every call and telemetry records them all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from apportion import (
    Agent,
    BudgetExceeded,
    Controller,
    InvalidArgument,
    MemoryStore,
    Pipeline,
    Request,
)
from apportion.calls import records_of
from apportion.policies import Policy, resolve_policy
from apportion.policies.learned import LearnedPolicy

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
    ],
    name="support",
)
LEDGER_FIELDS = (
    "agent",
    "model",
    "grant_id",
    "input_asked",
    "context_granted",
    "output_cap",
    "began_at",
    "extensions",
    "extension_context",
    "input_used",
    "output_used",
    "truncated",
    "overuse",
    "settled_at",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


def test_the_ledger_events_tell_the_calls_as_the_process_that_made_them_kept_them() -> None:
    clock = Clock()
    controller = Controller(PIPELINE, policy="elastic", clock=clock, lease_seconds=10)
    with controller.request(30_000) as req:
        g = req.begin("triage", 300, 64)
        req.finish(g, input_tokens=300, output_tokens=64, truncated=True)  # cut
        g = req.begin("reasoner", 4_000, 1_000, model="house-model")  # not in the catalog
        g = req.extend(g, 200, context_tokens=50) or g
        req.finish(g, input_tokens=4_050, output_tokens=1_100)  # extended
        g = req.begin("formatter", 500, 100)
        req.release(g)  # released
        late = req.begin("reasoner", 900, 100)
        clock.now += 20
        controller.reap()  # expired ...
        req.finish(late, input_tokens=900, output_tokens=80)  # ... then finished late
        g = req.begin("triage", 200, 50)
        g = req.extend(g, 10**6) or g  # all there is ...
        assert req.extend(g, 10**6) is None  # ... and then nothing: it wraps up
        req.finish(g, input_tokens=200, output_tokens=50)
        req.begin("formatter", 200, 50)  # still open at close: closed
    told = records_of(controller.store.history(req.request_id))
    kept = list(req.calls.values())
    assert list(told) == [c.grant_id for c in kept]
    statuses = ["cut", "completed", "released", "late", "wrapped_up", "closed"]
    assert [c.status for c in kept] == statuses
    for record in kept:
        mine = dataclasses.asdict(record)
        theirs = dataclasses.asdict(told[record.grant_id])
        assert {f: theirs[f] for f in LEDGER_FIELDS} == {f: mine[f] for f in LEDGER_FIELDS}
        assert theirs["status"] == record.status


def _calls(controller: Controller, req: Request, scale: int, *, handles: bool) -> list[Any]:
    """Each agent's call of one request, through a handle of its own or the request.

    Returns the grants made.
    """
    usage = {"triage": (300, 40), "reasoner": (3_000, 900), "formatter": (1_200, 150)}
    grants = []
    for agent, (inp, out) in usage.items():
        grant = (controller.attach(req.request_id) if handles else req).begin(agent, inp * scale)
        (controller.attach(req.request_id) if handles else req).finish(
            grant,
            input_tokens=grant.context_tokens,
            output_tokens=min(out * scale, grant.output_tokens),
        )
        grants.append((grant.context_tokens, grant.output_tokens))
    return grants


def _policy(name: str) -> Policy:
    return LearnedPolicy(seed=7) if name == "learned" else resolve_policy(name)


@pytest.mark.parametrize("name", ["elastic", "estimate", "learned"])
def test_a_request_run_through_handles_is_budgeted_and_teaches_as_one_request(
    name: str, tmp_path: Path
) -> None:
    """The features given at open reach every handle's plan and the learning at close."""
    learned, granted = [], []
    for handles in (False, True):
        controller = Controller(PIPELINE, policy=_policy(name), clock=Clock())
        grants = []
        for i in range(12):
            scale = 1 + i % 3  # the calls grow with the request's messages
            req = controller.request(20_000, {"messages": 10 * scale}).open()
            grants.append(_calls(controller, req, scale, handles=handles))
            (controller.attach(req.request_id) if handles else req).close()
        granted.append(grants)
        policy: Any = controller.policy
        policy.save(tmp_path / f"{handles}.json")
        learned.append((tmp_path / f"{handles}.json").read_text())
    fresh: Any = _policy(name)
    fresh.save(tmp_path / "fresh.json")
    assert learned[0] != (tmp_path / "fresh.json").read_text()  # it learned
    assert learned[1] == learned[0]  # the same, through handles
    assert granted[1] == granted[0]  # and every call budgeted the same


def test_the_closing_handle_holds_what_other_handles_did() -> None:
    pipeline = Pipeline([Agent("reasoner"), Agent("auditor", min_output=50_000)])
    controller = Controller(pipeline, policy="uniform")
    req = controller.attach(controller.request(20_000).open().request_id)
    grant = req.begin("reasoner", 1_000, 500)  # begun here ...
    controller.attach(req.request_id).finish(grant, input_tokens=1_000, output_tokens=300)
    with pytest.raises(BudgetExceeded):  # refused elsewhere
        controller.attach(req.request_id).begin("auditor", 100)
    req.close()  # ... finished elsewhere
    (record,) = req.calls.values()
    assert (record.status, record.output_used) == ("completed", 300)
    assert [(r.agent, r.input_asked, r.status) for r in req.refused] == [
        ("auditor", 100, "refused")
    ]


@pytest.mark.parametrize("name", ["elastic", "learned"])
def test_an_expired_request_teaches_its_calls_and_not_how_often_agents_run(name: str) -> None:
    """A request nobody closed (a proxy client that never does, a worker that died):
    whoever reaps it learns its finished calls' needs, not its call counts."""
    clock = Clock()
    store = MemoryStore()
    worker = Controller(PIPELINE, policy="uniform", store=store, clock=clock, request_ttl=60)
    dead = worker.request(20_000, {"messages": 30}).open()
    for agent, used in (("triage", 200), ("reasoner", 900)):
        grant = dead.begin(agent, 1_000)
        dead.finish(grant, input_tokens=1_000, output_tokens=used)
    dead.begin("formatter", 500)  # ... and the worker is gone
    reaper = Controller(PIPELINE, policy=_policy(name), store=store, clock=clock, reap_every=1)
    policy: Any = reaper.policy
    counts_before = policy.call_counts(PIPELINE).document()
    clock.now += 61
    assert reaper.reap() >= 1 and store.get(dead.request_id).status == "expired"
    outputs = policy.needs(PIPELINE).document()["output"]
    seen = {a: outputs[a]["count"] + len(outputs[a]["pending"]) for a in outputs}
    assert seen == {"triage": 1, "reasoner": 1, "formatter": 0}  # the finished calls
    assert outputs["reasoner"]["pending"][-1][0][:2] == [1.0, 30.0]  # with its features
    assert policy.call_counts(PIPELINE).document() == counts_before  # not the counts


def test_reaps_for_takes_controllers_only() -> None:
    controller = Controller(PIPELINE, policy="uniform")
    for bad in (None, "abc", [controller, 3]):
        with pytest.raises(InvalidArgument):
            controller.reaps_for(bad)  # type: ignore[arg-type]
    controller.reaps_for([controller])  # itself: nothing to hand over
