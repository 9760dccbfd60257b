"""Helpers of the telemetry tests: a sink that keeps records, a pipeline, a request."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from apportion import Agent, Controller, Pipeline, Request


class ListSink:
    """A sink that keeps what it is given."""

    name = "list"

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def write(self, batch: Sequence[Any]) -> None:
        self.batches.append(list(batch))

    @property
    def records(self) -> list[Any]:
        return [r for batch in self.batches for r in batch]


PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
    ],
    name="support",
)


def ticking_clock(start: float = 1_700_000_000.0) -> Callable[[], float]:
    """A clock that moves one second per reading."""
    counter = itertools.count()
    return lambda: start + next(counter)


def make_controller(telemetry: Any, **kwargs: Any) -> Controller:
    kwargs.setdefault("clock", ticking_clock())
    return Controller(PIPELINE, policy="elastic", telemetry=telemetry, **kwargs)


def run_request(controller: Controller, *, score: float | None = 0.75) -> str:
    """One request: triage cut, reasoner extended and annotated, formatter released."""
    with controller.request(ceiling=20_000, features={"messages": 4}) as req:
        g = req.begin("triage", input_tokens=300, output_tokens=64)
        req.finish(g, input_tokens=300, output_tokens=64, truncated=True)
        g = req.begin("reasoner", input_tokens=4_000, output_tokens=1_000)
        g = req.extend(g, 200) or g
        req.annotate(
            g,
            model="gpt-4o",
            cost_usd=0.012,
            input_cut=True,
            dropped_tokens=120,
            finish_reason="stop",
            usage_estimated=False,
        )
        req.finish(g, input_tokens=4_000, output_tokens=1_100)
        g = req.begin("formatter", input_tokens=500, output_tokens=100)
        req.release(g)
        if score is not None:
            req.score(score)
    return req.request_id


def give_up_when_unreachable(controller: Controller, timeout: float = 30.0) -> None:
    """Wait until each sink found its database unreachable, then drop what it kept.

    A sink that cannot be reached keeps its records and tries again (see
    :mod:`apportion.telemetry.channel`): a test of an unreachable database waits for the
    first failed try (and its warning), then gives the records up so no worker is left
    retrying.
    """
    import time

    deadline = time.monotonic() + timeout
    for channel in controller.sinks:
        while channel.retries == 0 and channel.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert channel.retries or not channel.pending, "the sink was never tried"
        channel.discard()
        assert channel.flush(timeout)


def child_left_open(
    controller: Controller, parent_id: str, name: str, ceiling: int, used: tuple[int, int]
) -> Request:
    """A child of ``parent_id`` opened through a handle (as another process would), whose
    ``worker`` made one call that used ``used`` (input, output), left open."""
    kid = controller.attach(parent_id).child(name, ceiling=ceiling)
    kid.open()
    grant = kid.begin("worker", used[0], used[0])
    kid.finish(grant, input_tokens=used[0], output_tokens=used[1])
    return kid
