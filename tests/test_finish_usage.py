"""``req.finish`` when the usage is not known: never settled silently as 0.

A caller whose provider reported no usage says so (``output_tokens=None``, with the text
to count, or ``usage_estimated=True`` for its own estimate); a reported 0 output beside an
answer's text is counted instead. Each is flagged ``usage_estimated`` on the call record
and in telemetry, and the guessed cases warn with :class:`~apportion.UsageWarning`.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest

from apportion import (
    Agent,
    AsyncController,
    Controller,
    InvalidArgument,
    InvalidTokenCount,
    Pipeline,
    UsageWarning,
)
from apportion.tokens.counting import counter_for

ANSWER = "The refund was approved on the third of May and will reach the account soon."


def pipeline() -> Pipeline:
    return Pipeline([Agent("writer", model="gpt-4o-mini"), Agent("other")])


def counted(text: str) -> int:
    return counter_for("gpt-4o-mini").count_text(text)


def test_reported_zero_output_beside_text_is_counted_warned_and_flagged() -> None:
    with Controller(pipeline()).request(2_000) as req:
        grant = req.begin("writer", 100, 200)
        with pytest.warns(UsageWarning, match="0 output tokens") as caught:
            req.finish(grant, input_tokens=100, output_tokens=0, text=ANSWER)
        assert caught[0].message.agent == "writer"  # type: ignore[union-attr]
        record = req.calls[grant.grant_id]
        assert record.output_used == counted(ANSWER) > 0
        assert record.notes["usage_estimated"] is True
        assert req.summary().consumed == 100 + counted(ANSWER)


def test_unknown_output_is_counted_from_the_text() -> None:
    with Controller(pipeline()).request(2_000) as req:
        grant = req.begin("writer", 100, 200)
        with pytest.warns(UsageWarning, match="no usage"):
            req.finish(grant, input_tokens=100, output_tokens=None, text=ANSWER)
        record = req.calls[grant.grant_id]
        assert (record.input_used, record.output_used) == (100, counted(ANSWER))
        assert record.notes["usage_estimated"] is True


def test_unknown_usage_without_text_settles_the_whole_grant() -> None:
    with Controller(pipeline(), policy="uniform").request(2_000) as req:
        grant = req.begin("writer", 100, 200)
        with pytest.warns(UsageWarning):
            req.finish(grant, input_tokens=None, output_tokens=None)
        record = req.calls[grant.grant_id]
        assert (record.input_used, record.output_used) == (
            grant.context_tokens,
            grant.output_tokens,
        )
        assert record.notes["usage_estimated"] is True


def test_the_callers_own_estimate_is_flagged_without_a_warning() -> None:
    with Controller(pipeline()).request(2_000) as req:
        grant = req.begin("writer", 100, 200)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            req.finish(grant, input_tokens=90, output_tokens=40, usage_estimated=True)
        record = req.calls[grant.grant_id]
        assert (record.output_used, record.notes["usage_estimated"]) == (40, True)


def test_reported_usage_stays_as_reported_and_unflagged() -> None:
    with Controller(pipeline()).request(2_000) as req:
        grant = req.begin("writer", 100, 200)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            req.finish(grant, input_tokens=100, output_tokens=17, text=ANSWER)
            other = req.begin("writer", 10, 20)
            req.finish(other, input_tokens=10, output_tokens=0, text="  ")  # no text: 0 is right
        assert req.calls[grant.grant_id].output_used == 17
        assert "usage_estimated" not in req.calls[grant.grant_id].notes
        assert req.calls[other.grant_id].output_used == 0


def test_a_model_without_a_tokenizer_is_counted_approximately() -> None:
    with Controller(pipeline()).request(2_000) as req:
        grant = req.begin("other", 100, 200)  # no model: about 4 characters a token
        with pytest.warns(UsageWarning):
            req.finish(grant, input_tokens=100, output_tokens=None, text="x" * 40)
        assert req.calls[grant.grant_id].output_used == 10


def test_bad_usage_arguments_are_refused_and_change_nothing() -> None:
    with Controller(pipeline()).request(2_000) as req:
        grant = req.begin("writer", 100, 200)
        before = req.summary()
        for kwargs, error in [
            ({"input_tokens": 1, "output_tokens": 1, "text": 3}, InvalidArgument),
            ({"input_tokens": 1, "output_tokens": 1, "usage_estimated": "yes"}, InvalidArgument),
            ({"input_tokens": -1, "output_tokens": None}, InvalidTokenCount),
            ({"input_tokens": 1, "output_tokens": 1.5}, InvalidTokenCount),
        ]:
            with pytest.raises(error):
                req.finish(grant, **kwargs)  # type: ignore[arg-type]
            assert req.summary() == before
        assert req.calls[grant.grant_id].status == "open"


def test_telemetry_carries_the_estimated_flag() -> None:
    from apportion.telemetry import flush

    records: list[object] = []

    class Sink:
        def write(self, batch: list[object]) -> None:
            records.extend(batch)

    with Controller(pipeline(), telemetry=Sink()).request(2_000) as req:
        guessed = req.begin("writer", 100, 200)
        with pytest.warns(UsageWarning):
            req.finish(guessed, input_tokens=100, output_tokens=0, text=ANSWER)
        reported = req.begin("writer", 100, 200)
        req.finish(reported, input_tokens=100, output_tokens=5)
    assert flush(10)
    (record,) = [r for r in records if getattr(r, "request_id", None) == req.request_id]
    calls = {c.grant_id: c for c in record.calls}  # type: ignore[attr-defined]
    assert calls[guessed.grant_id].estimated is True
    assert calls[guessed.grant_id].used_output == counted(ANSWER)
    assert not calls[reported.grant_id].estimated


def test_async_finish_counts_unknown_output() -> None:
    async def main() -> None:
        async with AsyncController(pipeline()).request(2_000) as req:
            grant = await req.begin("writer", 100, 200)
            with pytest.warns(UsageWarning):
                await req.finish(grant, input_tokens=100, output_tokens=0, text=ANSWER)
            assert req.calls[grant.grant_id].output_used == counted(ANSWER)

    asyncio.run(main())
