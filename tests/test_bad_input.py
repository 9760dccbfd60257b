"""Every public entry point, given bad input, raises only ``ApportionError`` subclasses.

A property test per group of entry points: Hypothesis puts one odd value (a wrong type,
NaN, infinity, a bool, an integer of hundreds of digits, a negative, a lone surrogate, a
NUL byte, an empty or very long string ...) in one argument of an otherwise valid call.
The call may succeed (the value was fine after all) or raise an ``ApportionError``;
anything else fails the test. A refused operation leaves the ledger as it was.

The explicit examples below each reproduce one kind of foreign exception the fuzzing
pass found, so each stays fixed.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion import (
    POLICIES,
    Agent,
    ApportionError,
    AsyncController,
    Budget,
    Controller,
    ElasticPolicy,
    EstimatePolicy,
    InvalidArgument,
    IterativePolicy,
    Ledger,
    LinearEstimator,
    MemoryStore,
    Pipeline,
    Pool,
    Reaper,
    StaticPolicy,
)
from apportion.ledger import Grant
from apportion.policies.learned import LearnedPolicy
from apportion.policies.rollout import Rollout
from apportion.policies.routed import RoutedPolicy

ODD: list[Any] = [
    None,
    0.5,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    10**400,
    -(10**400),
    2**63,
    -1,
    0,
    "",
    "\ud800",
    "a\x00b",
    "x" * 100_000,
    "name",
    b"bytes",
    [],
    {},
    (),
    {"x": "\ud800"},
    {"\ud800": 1},
    {None: 1},
    ["\ud800"],
    [None],
    object(),
    1 + 2j,
]
BAD = st.one_of(
    st.sampled_from(ODD),
    st.builds(lambda: 10**5000),  # beyond what repr() and str() allow (never repr'd here)
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=4),
)

RANKS = {"lead": 2, "helper": 1, "notes": 0}
PIPELINE = Pipeline(
    [
        Agent("lead", priority="critical"),
        Agent("helper", after=["lead"]),
        Agent("notes", priority="peripheral", after=["helper"]),
    ]
)


def calls_cleanly(call: Callable[[], object]) -> bool:
    """Run ``call``: True if it succeeded, False if it raised an ApportionError."""
    try:
        call()
    except ApportionError as exc:
        assert len(str(exc)) < 2_000, f"{type(exc).__name__} quotes too much: {str(exc)[:200]}"
        return False
    except Exception as exc:  # anything else is the bug this file is about
        raise AssertionError(f"{type(exc).__name__} (not an ApportionError): {exc!r}") from exc
    return True


def with_bad(defaults: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    return {**defaults, name: value}


def _snapshot(ledger: Any) -> tuple[Any, ...]:
    return (ledger.to_dict(), dict(ledger.grants))


def unchanged(before: Any, after: Any, events: list[Any], seen: int, name: str) -> bool:
    """Whether a refused operation left the ledger as it was (its events were ``seen``).

    Every operation first expires the grants whose lease ended by its ``now`` (a refused
    one too, as documented): so a refusal with a valid, later ``now`` may expire them.
    """
    if _snapshot(after) == before and len(events) == seen:
        return True
    return name == "now" and {e.kind for e in events[seen:]} == {"expire"}


# ------------------------------------------------------------------ the pure ledger

LEDGER_NEW = {
    "request_id": "r",
    "ranks": RANKS,
    "ceiling": 1_000,
    "now": 0.0,
    "allocation": {"lead": 10},
    "reserve": {"lead": 5},
    "expires_at": 100.0,
    "ceiling_usd": None,
}


@given(name=st.sampled_from(sorted(LEDGER_NEW)), value=BAD)
def test_ledger_constructor(name: str, value: Any) -> None:
    calls_cleanly(lambda: Ledger(**with_bad(LEDGER_NEW, name, value)))


def _ledger() -> tuple[Ledger, Grant]:
    ledger = Ledger("r", RANKS, 1_000, 0.0)
    return ledger, ledger.begin("lead", 10, 10, 0.0, 30.0)


LEDGER_OPS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "begin": (
        Ledger.begin,
        {
            "agent": "helper",
            "context_tokens": 5,
            "output_tokens": 5,
            "now": 1.0,
            "lease_seconds": 30.0,
            "model": None,
            "prices": None,
            "asked": None,
        },
    ),
    "extend": (
        Ledger.extend,
        {"grant": "G", "output_tokens": 5, "now": 1.0, "lease_seconds": 30.0, "context_tokens": 0},
    ),
    "finish": (
        Ledger.finish,
        {
            "grant": "G",
            "input_tokens": 5,
            "output_tokens": 5,
            "now": 1.0,
            "truncated": False,
            "allocation": None,
        },
    ),
    "renew": (Ledger.renew, {"grant": "G", "now": 1.0, "lease_seconds": 30.0}),
    "release": (Ledger.release, {"grant": "G", "now": 1.0, "reason": "x"}),
    "close": (Ledger.close, {"now": 1.0, "status": "closed", "outcome": None}),
    "reap": (Ledger.reap, {"now": 1.0}),
}
LEDGER_SLOTS = [(op, name) for op, (_, args) in LEDGER_OPS.items() for name in args]


@given(slot=st.sampled_from(LEDGER_SLOTS), value=BAD)
def test_ledger_operations(slot: tuple[str, str], value: Any) -> None:
    op, name = slot
    ledger, grant = _ledger()
    method, defaults = LEDGER_OPS[op]
    args = {k: (grant if v == "G" else v) for k, v in with_bad(defaults, name, value).items()}
    before, seen = _snapshot(ledger), len(ledger.events)
    if not calls_cleanly(lambda: method(ledger, **args)):
        assert unchanged(before, ledger, ledger.events, seen, name), f"{op} refused, changed it"


# ------------------------------------------------------------------ the memory store

STORE_OPS: dict[str, dict[str, Any]] = {
    "open": {
        "request_id": "new",
        "ranks": RANKS,
        "ceiling": 500,
        "now": 0.0,
        "allocation": None,
        "reserve": None,
        "ttl": 100.0,
        "pool": None,
        "pool_priority": "standard",
        "ceiling_usd": None,
        "features": None,
    },
    "begin": {
        "request_id": "r",
        "agent": "helper",
        "context_tokens": 5,
        "output_tokens": 5,
        "now": 1.0,
        "lease_seconds": 30.0,
        "model": None,
        "prices": None,
        "asked": None,
    },
    "extend": {
        "request_id": "r",
        "grant": "G",
        "output_tokens": 5,
        "context_tokens": 0,
        "now": 1.0,
        "lease_seconds": 30.0,
    },
    "finish": {
        "request_id": "r",
        "grant": "G",
        "input_tokens": 5,
        "output_tokens": 5,
        "now": 1.0,
        "truncated": False,
        "allocation": None,
    },
    "release": {"request_id": "r", "grant": "G", "now": 1.0, "reason": "x"},
    "close": {"request_id": "r", "now": 1.0, "status": "closed", "outcome": None},
    "get": {"request_id": "r"},
    "events": {"request_id": "r"},
    "features": {"request_id": "r"},
    "get_with_features": {"request_id": "r"},
    "reap": {"now": 1.0},
    "get_pool": {"name": "p", "now": 1.0},
    "get_state": {"key": "k"},
    "put_state": {"key": "k", "data": b"x", "expected_version": 0},
    "open_children": {
        "parent_id": "r",
        "request_ids": ["r::k"],
        "ranks": RANKS,
        "now": 1.0,
        "priorities": ["standard"],
        "ceiling": 10,
        "share": None,
        "allocation": None,
        "reserve": None,
        "ttl": 100.0,
        "max_depth": 16,
        "features": None,
    },
}
STORE_SLOTS = [(op, name) for op, args in STORE_OPS.items() for name in args]


def check_store_operation(store: Any, slot: tuple[str, str], value: Any) -> None:
    op, name = slot
    store.define_pool(Pool("p", 10_000, 60.0))
    store.open("r", RANKS, 1_000, 0.0)
    grant, _ = store.begin("r", "lead", 10, 10, 0.0, 30.0)
    args = {k: (grant if v == "G" else v) for k, v in with_bad(STORE_OPS[op], name, value).items()}
    before, seen = _snapshot(store.get("r")), len(store.events("r"))
    if not calls_cleanly(lambda: getattr(store, op)(**args)):
        after = store.get("r")
        assert unchanged(before, after, store.events("r"), seen, name), f"{op} refused, changed it"


@given(slot=st.sampled_from(STORE_SLOTS), value=BAD)
def test_memory_store_operations(slot: tuple[str, str], value: Any) -> None:
    check_store_operation(MemoryStore(), slot, value)


@given(features=st.dictionaries(BAD.filter(lambda v: isinstance(v, str)), BAD, max_size=2))
def test_memory_store_features(features: Any) -> None:
    """Features a store cannot keep are refused, and nothing is opened."""
    store = MemoryStore()
    if not calls_cleanly(lambda: store.open("r", RANKS, 1_000, 0.0, features=features)):
        assert store.open_requests() == []


@given(value=BAD)
def test_memory_store_constructor(value: Any) -> None:
    calls_cleanly(lambda: MemoryStore(keep_closed=value))


# ------------------------------------------------------------------ spec, pools, policies

AGENT_NEW = {
    "name": "a",
    "priority": "standard",
    "after": (),
    "output_kind": "prose",
    "model": None,
    "min_output": 1,
    "max_output": None,
    "estimator": None,
    "typical_input": None,
    "typical_output": None,
}


@given(name=st.sampled_from(sorted(AGENT_NEW)), value=BAD)
def test_agent_constructor(name: str, value: Any) -> None:
    calls_cleanly(lambda: Agent(**with_bad(AGENT_NEW, name, value)))


@given(agents=BAD, name=BAD)
def test_pipeline_constructor(agents: Any, name: Any) -> None:
    calls_cleanly(lambda: Pipeline(agents))
    calls_cleanly(lambda: Pipeline([Agent("a")], name=name))
    calls_cleanly(lambda: Pipeline([agents]))


@given(value=BAD)
def test_pipeline_lookups(value: Any) -> None:
    calls_cleanly(lambda: PIPELINE[value])


POOL_NEW = {"name": "p", "capacity": 100, "window_seconds": 60.0, "reserve": {}}


@given(name=st.sampled_from(sorted(POOL_NEW)), value=BAD)
def test_pool_constructor(name: str, value: Any) -> None:
    calls_cleanly(lambda: Pool(**with_bad(POOL_NEW, name, value)))


POLICY_NEW: dict[Callable[..., Any], dict[str, Any]] = {
    ElasticPolicy: {"margin": 0.2, "store": None, "key": None, "sync_every": 32},
    EstimatePolicy: {"margin": 0.2, "store": None, "key": None, "sync_every": 32},
    IterativePolicy: {"first_share": 1.0, "margin": 0.0, "store": None, "key": None},
    StaticPolicy: {"budgets": {"lead": Budget(10, 10)}},
    LinearEstimator: {"base": 0.0, "per_feature": {}, "per_input": 0.0},
    Budget: {"context_tokens": 1, "output_tokens": 1},
    LearnedPolicy: {"price": 0.02, "key": "learned", "sync_every": 32, "seed": 1, "explore": 0.5},
    RoutedPolicy: {"margin": 0.2, "cost_weight": 1.0},
    Rollout: {
        "candidate": "uniform",
        "baseline": "elastic",
        "steps": (0.5, 1.0),
        "min_requests": 50,
        "guard_requests": 20,
        "alpha": 0.05,
        "rho": 0.02,
        "max_quality_drop": 0.05,
        "max_critical_cut_increase": 0.1,
        "max_cost_ratio": 1.5,
        "salt": "",
        "on_event": None,
        "name": None,
        "clock": lambda: 0.0,
    },
}
POLICY_SLOTS = [(cls, name) for cls, args in POLICY_NEW.items() for name in args]


@given(slot=st.sampled_from(POLICY_SLOTS), value=BAD)
def test_policy_constructors(slot: tuple[Callable[..., Any], str], value: Any) -> None:
    cls, name = slot
    calls_cleanly(lambda: cls(**with_bad(POLICY_NEW[cls], name, value)))


@given(value=BAD)
def test_static_budgets(value: Any) -> None:
    calls_cleanly(lambda: StaticPolicy({"lead": value}))
    calls_cleanly(lambda: StaticPolicy({"lead": {"context_tokens": value, "output_tokens": 1}}))
    if getattr(value, "__hash__", None) is not None:
        calls_cleanly(lambda: StaticPolicy({value: Budget(1, 1)}))


# ------------------------------------------------------------------ the controller

CONTROLLER_NEW = {
    "pipeline": PIPELINE,
    "policy": "elastic",
    "store": "memory://",
    "clock": lambda: 0.0,
    "lease_seconds": 600.0,
    "request_ttl": 3600.0,
    "telemetry": None,
    "catalog": None,
    "reap_every": 30.0,
    "max_depth": 16,
}


@given(name=st.sampled_from(sorted(CONTROLLER_NEW)), value=BAD)
def test_controller_constructor(name: str, value: Any) -> None:
    calls_cleanly(lambda: Controller(**with_bad(CONTROLLER_NEW, name, value)))


@given(value=BAD)
def test_a_clock_that_returns_nonsense(value: Any) -> None:
    controller = Controller(PIPELINE, policy="uniform", clock=lambda: value)

    def run() -> None:
        with controller.request(1_000) as req:
            grant = req.begin("lead", input_tokens=10)
            req.finish(grant, input_tokens=10, output_tokens=1)

    calls_cleanly(run)


REQUEST_NEW = {
    "ceiling": 1_000,
    "features": None,
    "request_id": None,
    "pool": None,
    "pool_priority": "standard",
    "ceiling_usd": None,
}


@given(name=st.sampled_from(sorted(REQUEST_NEW)), value=BAD)
def test_opening_a_request(name: str, value: Any) -> None:
    controller = Controller(PIPELINE, policy="elastic")
    calls_cleanly(lambda: controller.request(**with_bad(REQUEST_NEW, name, value)).open())


HASHABLE = BAD.filter(lambda v: getattr(type(v), "__hash__", None) is not None)


@given(features=st.dictionaries(HASHABLE, BAD, max_size=2))
def test_features(features: Any) -> None:
    controller = Controller(PIPELINE, policy="estimate")
    calls_cleanly(lambda: controller.request(1_000, features).open())


REQUEST_OPS: dict[str, dict[str, Any]] = {
    "begin": {"agent": "helper", "input_tokens": 10, "output_tokens": None, "model": None},
    "extend": {"grant": "G", "output_tokens": 5, "context_tokens": 0},
    "finish": {
        "grant": "G",
        "input_tokens": 5,
        "output_tokens": 5,
        "truncated": False,
        "text": None,
        "usage_estimated": False,
    },
    "release": {"grant": "G"},
    "renew": {"grant": "G"},
    "score": {"value": 0.5},
    "close": {"status": "closed"},
    "renewal_due": {"grant": "G"},
    "child": {
        "name": "kid",
        "ceiling": 100,
        "share": None,
        "priority": "standard",
        "features": None,
    },
    "fan_out": {
        "names_or_n": 2,
        "share": 0.5,
        "ceiling": None,
        "priority": "standard",
        "features": None,
    },
}
REQUEST_SLOTS = [(op, name) for op, args in REQUEST_OPS.items() for name in args]


@given(slot=st.sampled_from(REQUEST_SLOTS), value=BAD, policy=st.sampled_from(sorted(POLICIES)))
def test_request_operations(slot: tuple[str, str], value: Any, policy: str) -> None:
    op, name = slot
    budgets = {a: Budget(100, 100) for a in RANKS} if policy == "static" else None
    chosen: Any = StaticPolicy(budgets) if budgets else policy
    controller = Controller(PIPELINE, policy=chosen, clock=lambda: 0.0)
    req = controller.request(1_000).open()
    grant = req.begin("lead", input_tokens=10)
    args = {
        k: (grant if v == "G" else v) for k, v in with_bad(REQUEST_OPS[op], name, value).items()
    }
    store, rid = controller.store, req.request_id
    before, seen = _snapshot(store.get(rid)), len(store.events(rid))
    if not calls_cleanly(lambda: getattr(req, op)(**args)):
        assert unchanged(before, store.get(rid), store.events(rid), seen, name)


@given(slot=st.sampled_from(REQUEST_SLOTS), value=BAD)
def test_async_request_operations(slot: tuple[str, str], value: Any) -> None:
    op, name = slot
    controller = AsyncController(PIPELINE, policy="elastic", clock=lambda: 0.0)

    async def run() -> None:
        req = await controller.request(1_000).open()
        grant = await req.begin("lead", input_tokens=10)
        bad = with_bad(REQUEST_OPS[op], name, value)
        args = {k: (grant if v == "G" else v) for k, v in bad.items()}
        store, rid = controller.store, req.request_id
        before, seen = _snapshot(store.get(rid)), len(store.events(rid))
        try:
            result = getattr(req, op)(**args)
            if inspect.isawaitable(result):
                await result
        except ApportionError:
            assert unchanged(before, store.get(rid), store.events(rid), seen, name)

    calls_cleanly(lambda: asyncio.run(run()))


@given(value=BAD)
def test_attaching_to_a_request(value: Any) -> None:
    controller = Controller(PIPELINE, policy="uniform")
    calls_cleanly(lambda: controller.attach(value))


@given(every=BAD)
def test_reapers(every: Any) -> None:
    calls_cleanly(lambda: Reaper(lambda: 0, every))
    controller = Controller(PIPELINE, policy="uniform")

    def start() -> None:
        controller.start_reaper(every).stop()

    calls_cleanly(start)


@given(fields=st.dictionaries(st.sampled_from(["model", "cost_usd", "x", "finish_reason"]), BAD))
def test_annotate(fields: dict[str, Any]) -> None:
    controller = Controller(PIPELINE, policy="uniform", clock=lambda: 0.0)
    req = controller.request(1_000).open()
    grant = req.begin("lead", input_tokens=10)
    calls_cleanly(lambda: req.annotate(grant, **fields))
    calls_cleanly(lambda: req.finish(grant, input_tokens=1, output_tokens=1))
    calls_cleanly(req.close)


COMPLETION = {
    "agent": "lead",
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 10,
    "n": 1,
    "max_extensions": 1,
}


@given(name=st.sampled_from(sorted(COMPLETION)), value=BAD)
def test_completion_argument_checks(name: str, value: Any) -> None:
    """The engine's own checks run before any model is called (no network is used)."""
    from apportion.integrations.chat import ChatCall

    args = with_bad(COMPLETION, name, value)
    params = {k: args[k] for k in ("max_tokens", "n")}

    def complete() -> None:
        ChatCall(
            args["agent"],
            args["model"],
            args["messages"],
            params,
            counter="approximate",
            max_extensions=args["max_extensions"],
        )

    calls_cleanly(complete)


# ------------------------------------------------------------------ telemetry


def _in_text(value: Any) -> str:
    """``value`` as it would be written inside a URL (a huge integer's digits, in full)."""
    if type(value) is int and value.bit_length() > 4000:
        return "9" * 5000
    return f"{value}"


@given(value=BAD)
def test_telemetry_urls_and_sinks(value: Any) -> None:
    from apportion.telemetry import open_sinks
    from apportion.telemetry.otel import OTelSink
    from apportion.telemetry.prometheus import PrometheusSink
    from apportion.telemetry.sql import SQLSink, open_database

    calls_cleanly(lambda: open_sinks(value))
    calls_cleanly(lambda: open_sinks([value]))
    calls_cleanly(lambda: SQLSink(value))
    calls_cleanly(lambda: open_database(value))
    calls_cleanly(lambda: OTelSink(value))
    from prometheus_client import CollectorRegistry

    calls_cleanly(lambda: PrometheusSink(CollectorRegistry(), namespace=value))
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
        # never a real port: that would serve metrics
        calls_cleanly(lambda: PrometheusSink(CollectorRegistry(), port=value, addr="127.0.0.1"))
        calls_cleanly(lambda: open_sinks(f"prometheus://127.0.0.1:{_in_text(value)}"))
    calls_cleanly(lambda: open_sinks(f"postgresql://u:{_in_text(value)}@h/db"))


@given(value=BAD)
def test_store_urls(value: Any) -> None:
    from apportion.policies import resolve_policy
    from apportion.stores import open_store

    calls_cleanly(lambda: open_store(value))
    calls_cleanly(lambda: resolve_policy(value))
    text = _in_text(value)
    calls_cleanly(lambda: open_store(f"redis://127.0.0.1:1/0?buckets={text}"))
    calls_cleanly(lambda: open_store(f"redis://127.0.0.1:{text}/0"))
    calls_cleanly(lambda: open_store(f"redis://127.0.0.1:1/{text}"))


# ------------------------------------------------------------------ found by fuzzing


def _request() -> Any:
    controller = Controller(PIPELINE, policy="uniform", clock=lambda: 0.0)
    return controller.request(1_000).open()


def _prometheus(namespace: str) -> Any:
    from prometheus_client import CollectorRegistry

    from apportion.telemetry.prometheus import PrometheusSink

    return PrometheusSink(CollectorRegistry(), namespace=namespace)


def _database_url(url: str) -> Any:
    from apportion.telemetry.urls import database_url

    return database_url(url)


FOUND: dict[str, Callable[[], object]] = {
    "AttributeError-ledger-allocation": lambda: Ledger("r", RANKS, 10, 0.0, allocation=0.5),  # type: ignore[arg-type]
    "AttributeError-renewal_due": lambda: _request().renewal_due(None),
    "AttributeError-pool-reserve": lambda: Pool("p", 10, reserve=None),  # type: ignore[arg-type]
    "AttributeError-static-budgets": lambda: StaticPolicy(0.5),  # type: ignore[arg-type]
    "OverflowError-ledger-now": lambda: Ledger("r", RANKS, 10, 0.0).begin("lead", 1, 1, 10**400, 1),
    "OverflowError-score": lambda: _request().score(10**400),
    "OverflowError-pool-window": lambda: Pool("p", 10, 10**400),
    "OverflowError-estimator": lambda: LinearEstimator(base=10**400),
    "OverflowError-lease": lambda: Controller(PIPELINE, lease_seconds=10**400),
    "OverflowError-store-now": lambda: MemoryStore().open("r", RANKS, 10, 10**400),
    "TypeError-ledger-ranks": lambda: Ledger("r", None, 10, 0.0),  # type: ignore[arg-type]
    "TypeError-ledger-now": lambda: Ledger("r", RANKS, 10, 0.0).begin("lead", 1, 1, None, 1),  # type: ignore[arg-type]
    "TypeError-feature-name": lambda: Controller(PIPELINE).request(10, {None: 1}).open(),  # type: ignore[dict-item]
    "TypeError-pipeline": lambda: Controller(None),  # type: ignore[arg-type]
    "TypeError-request-id": lambda: MemoryStore().begin([], "lead", 1, 1, 0.0, 1.0),  # type: ignore[arg-type]
    "TypeError-margin": lambda: ElasticPolicy(margin=None),  # type: ignore[arg-type]
    "ValueError-status": lambda: Ledger("r", RANKS, 10, 0.0).close(0.0, status=None),  # type: ignore[arg-type]
    "ValueError-pool-name": lambda: Pool(None, 10),  # type: ignore[arg-type]
    "ValueError-lease": lambda: Controller(PIPELINE, lease_seconds=None),  # type: ignore[arg-type]
    "ValueError-score": lambda: _request().score(None),  # type: ignore[arg-type]
    "ValueError-database-url": lambda: _database_url(""),
    "UnicodeEncodeError-prometheus": lambda: _prometheus("\ud800"),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_found_by_fuzzing(case: str) -> None:
    """Each kind of foreign exception the fuzzing pass found, now an ApportionError."""
    with pytest.raises(ApportionError) as caught:
        FOUND[case]()
    assert caught.value.fields  # says what was wrong, as fields


# ------------------------------------------------------------------ token counting, fitting

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
FIT = {"messages": MESSAGES, "budget": 100, "strategy": "keep-recent", "tools": None}


@given(name=st.sampled_from(sorted(FIT)), value=BAD, where=st.sampled_from(["top", "message"]))
def test_counting_and_fitting(name: str, value: Any, where: str) -> None:
    from apportion.tokens import ApproximateCounter, count_messages, counter_for, fit_messages

    counter = ApproximateCounter("gpt-4o")
    args = with_bad(FIT, name, value)
    if where == "message":  # the bad value inside a message instead
        args = {**FIT, "messages": [MESSAGES[0], {"role": "user", name: value}]}
    calls_cleanly(lambda: fit_messages(args.pop("messages"), args.pop("budget"), counter, **args))
    calls_cleanly(lambda: count_messages("gpt-4o", [{"role": "user", "content": value}]))
    calls_cleanly(lambda: count_messages("gpt-4o", value, counter="approximate"))
    calls_cleanly(lambda: counter_for(value, "approximate"))
    calls_cleanly(lambda: counter_for("gpt-4o", value))


def test_a_long_name_beside_a_bad_value_is_quoted_short() -> None:
    """The argument's name quotes an excerpt of a long key (found by the features test)."""
    long = "x" * 100_000
    with pytest.raises(InvalidArgument) as ranks:
        MemoryStore().open("r", {long: 5_000}, 100, 0.0)
    with pytest.raises(InvalidArgument) as features:
        MemoryStore().open("r", RANKS, 100, 0.0, features={long: [1]})
    with pytest.raises(InvalidArgument) as requested:
        Controller(PIPELINE, policy="uniform").request(100, {long: float("inf")})
    for error in (ranks, features, requested):
        assert len(str(error.value)) < 200 and "100,000 characters" in error.value.argument
