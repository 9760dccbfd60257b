"""Policies learn how often each agent runs and how many calls it makes per request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apportion import (
    Agent,
    AgentKind,
    Controller,
    EstimatePolicy,
    LearnedPolicy,
    Pipeline,
    Policy,
    PolicyStateError,
)
from apportion.policies import resolve_policy
from apportion.policies.occurrence import ALIKE_AT_LEAST, FEATURES_AFTER, CallCounts, teams


def _policy(name: str) -> Policy:
    """A fresh policy; ``learned`` seeded, so that a test repeats."""
    return LearnedPolicy(seed=3) if name == "learned" else resolve_policy(name)


def test_one_call_each_is_exactly_the_single_call_rule() -> None:
    counts = CallCounts(["a", "b"])
    assert counts.remaining("a", 0) == 1.0  # the prior: one call
    assert counts.remaining("a", 1) == 0.0
    for _ in range(50):
        counts.observe({"a": 1, "b": 1}, (1.0, 3.0))
    assert counts.remaining("a", 0, (1.0, 9.0)) == 1.0
    assert counts.remaining("a", 1) == 0.0
    assert counts.chance("b") == 1.0
    assert counts.once("a")


def test_a_plain_request_keeps_what_was_worked_out_and_any_other_does_not() -> None:
    counts = CallCounts(["a", "b"])
    assert counts.fixed() and counts.at_most_once_all() == (False, False)  # nothing seen
    counts.observe({"a": 1, "b": 1}, None, ["a", "b"])
    assert counts.at_most_once_all() == (True, True)  # the first request is news
    for _ in range(2):
        counts.observe({"a": 1, "b": 1}, None, ["a", "b"])
    assert counts.fixed()
    version = counts.version
    counts.observe({"a": 1, "b": 1}, None, ["b", "a"])  # every line once again
    assert counts.version == version  # nothing to work out again
    assert counts.fixed() and counts.remaining("b", 0) == 1.0
    assert counts.remaining_after("a", "b") == 1.0
    counts.observe({"a": 1, "b": 2}, None, ["a", "b"])  # b twice: the answers move
    assert counts.version > version
    assert not counts.fixed() and counts.remaining("b", 0) == pytest.approx(7 / 6)
    counts.observe({"a": 1}, None, ["a"])  # b not at all
    assert counts.chance("b") == pytest.approx(6 / 7)  # the prior counts as one request


def test_what_ran_after_what_adds_up_for_any_order() -> None:
    counts = CallCounts(["a", "b", "c"])
    orders = [["a", "b", "c"], ["b", "a", "c"], ["a", "b", "c"], ["c"], ["a", "b", "c"]]
    made = [{"a": 1, "b": 2, "c": 1}, {"a": 1, "b": 1, "c": 3}, {"a": 1, "b": 2, "c": 1}]
    made += [{"c": 2}, {"a": 1, "b": 2, "c": 1}]
    for order, calls in zip(orders, made, strict=True):
        counts.observe(calls, None, order)
    after = counts.document_after()
    # a began before b in 4 requests (b made 2 + 2 + 2; 1 in the one where b began first)
    assert after["a"]["b"] == [3, 6]
    assert after["b"]["a"] == [1, 1]
    assert after["c"] == {"a": [1, 0], "b": [1, 0]}  # c alone, a and b not at all
    assert after["a"]["c"] == [4, 6]


def test_probability_and_loops_are_learned() -> None:
    counts = CallCounts(["maybe", "loop"])
    for i in range(99):
        counts.observe({"maybe": 1 if i % 3 == 0 else 0, "loop": 10})
    assert counts.chance("maybe") == pytest.approx(34 / 100)
    assert counts.remaining("maybe", 0) == pytest.approx(34 / 100)
    assert not counts.once("maybe")
    assert counts.remaining("loop", 0) == pytest.approx((990 + 1) / 100)
    assert counts.remaining("loop", 3) == 7.0
    assert counts.remaining("loop", 10) == 0.0
    assert counts.remaining("loop", 12) == 0.0  # past anything seen


def test_features_predict_a_count_once_they_can() -> None:
    counts = CallCounts(["children"])
    for i in range(4 * FEATURES_AFTER):
        depth = 1 + i % 7
        counts.observe({"children": depth}, (1.0, float(depth)))
    few, many = (
        counts.remaining("children", 0, (1.0, 1.0)),
        counts.remaining("children", 0, (1.0, 7.0)),
    )
    assert few < 2.5 < 5.5 < many
    assert counts.remaining("children", 0) == pytest.approx(
        (sum(1 + i % 7 for i in range(4 * FEATURES_AFTER)) + 1) / (4 * FEATURES_AFTER + 1)
    )


def _first_grant(controller: Controller, agent: str, ceiling: int) -> int:
    with controller.request(ceiling=ceiling) as req:
        grant = req.begin(agent, input_tokens=6_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
    return grant.total


def _serve(controller: Controller, plan: list[tuple[str, int]], ceiling: int) -> None:
    with controller.request(ceiling=ceiling) as req:
        for agent, tokens in plan:
            grant = req.begin(agent, input_tokens=tokens)
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)


@pytest.mark.parametrize("policy", ["elastic", "estimate", "learned"])
def test_no_hold_back_for_an_agent_that_never_runs(policy: str) -> None:
    """The same pipeline, where "rare" never runs or always runs: only the latter is held
    back for (before, every listed agent was, whether it ran or not)."""
    grants = []
    for runs in (False, True):
        pipeline = Pipeline(
            [Agent("first"), Agent("rare", after=["first"]), Agent("last", after=["rare"])]
        )
        controller = Controller(pipeline, policy=_policy(policy))
        rare = [("rare", 2_000)] if runs else []
        for _ in range(60):
            _serve(controller, [("first", 2_000), *rare, ("last", 2_000)], 8_000)
        grants.append(_first_grant(controller, "first", 8_000))
    assert grants[0] >= grants[1] + 1_000


@pytest.mark.parametrize("policy", ["elastic", "estimate", "learned"])
def test_a_kind_leaves_room_for_the_members_still_to_come(policy: str) -> None:
    pipeline = Pipeline(
        [Agent("lead", "critical"), Agent("report", after=["worker"])],
        kinds=[AgentKind("worker", "worker:*", priority="critical", after=["lead"])],
    )
    controller = Controller(pipeline, policy=_policy(policy))
    team = [("lead", 300), *[(f"worker:{i}", 900) for i in range(10)], ("report", 900)]
    for _ in range(40):
        _serve(controller, team, 20_000)
    with controller.request(ceiling=20_000) as req:
        grant = req.begin("lead", input_tokens=300)
        req.finish(grant, input_tokens=300, output_tokens=100)
        grant = req.begin("worker:0", input_tokens=15_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
    # nine more members of about 1,000 tokens and the report are still to come
    assert grant.total <= 20_000 - 8_000


@pytest.mark.parametrize("policy", ["elastic", "estimate"])
def test_a_listed_agent_in_a_loop_is_not_squeezed_for_its_own_later_calls(policy: str) -> None:
    """On real logs (ChatDev: a programmer and a reviewer taking turns) holding back for a
    listed agent's later calls cost 0.27 of quality: a listed agent whose calls are
    apart is held back for once, until it starts."""
    pipeline = Pipeline(
        [Agent("review", "critical"), Agent("fix", after=["review"]), Agent("report")]
    )
    controller = Controller(pipeline, policy=policy)
    for _ in range(40):
        _serve(controller, [("review", 900), ("fix", 900)] * 5 + [("report", 900)], 20_000)
    with controller.request(ceiling=20_000) as req:
        grant = req.begin("review", input_tokens=15_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
    assert grant.context_tokens == 15_000  # fix's and report's ~1,000 each is all it leaves
    counts = controller.policy.call_counts(pipeline)  # type: ignore[attr-defined]
    assert not counts.in_a_row("review")


@pytest.mark.parametrize("policy", ["elastic", "estimate", "learned"])
def test_an_agent_whose_calls_come_in_a_row_leaves_room_for_its_later_ones(policy: str) -> None:
    """A loop's turns in a row (a tool loop, a coder's rewrites before the review): its
    first call leaves room for the calls it is still expected to make."""
    pipeline = Pipeline([Agent("review", "critical"), Agent("report", after=["review"])])
    controller = Controller(pipeline, policy=policy)
    for _ in range(40):
        _serve(controller, [("review", 900)] * 10 + [("report", 900)], 20_000)
    counts = controller.policy.call_counts(pipeline)  # type: ignore[attr-defined]
    assert counts.in_a_row("review") and not counts.in_a_row("report")
    # nine more calls of about 1,000 each, each worth a tenth of the line as the first is
    # (the prior's one request of one call still weighs as much as ten of them)
    assert counts.own_remaining("review", 1) == pytest.approx(40 * 9 / 10 / (40 / 10 + 1))
    with controller.request(ceiling=20_000) as req:
        grant = req.begin("review", input_tokens=15_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
    assert grant.context_tokens + grant.output_tokens <= 20_000 - 6 * 900  # held back for


def test_whether_a_line_s_calls_came_in_a_row_is_learned_and_kept() -> None:
    counts = CallCounts(["a", "b"])
    assert not counts.in_a_row("a")  # never seen calling more than once
    counts.observe({"a": 3, "b": 1}, order=["a", "a", "a", "b"])
    assert counts.in_a_row("a") and not counts.in_a_row("b")
    for _ in range(9):
        counts.observe({"a": 2, "b": 1}, order=["a", "a", "b"])
    counts.observe({"a": 2, "b": 1}, order=["a", "b", "a"])  # apart once in eleven
    assert counts.in_a_row("a")
    counts.observe({"a": 2, "b": 1}, order=["a", "b", "a"])  # twice in twelve: not any more
    assert not counts.in_a_row("a")
    document = counts.document_after()
    assert document["a"]["a"] == [12, 2]  # requests with several calls, of them apart
    again = CallCounts(["a", "b"])
    again.restore_after(document)
    assert again.document_after() == document and not again.in_a_row("a")
    assert again.in_a_row_all().tolist() == [False, False]


def test_a_kind_counts_its_members_on_one_line() -> None:
    pipeline = Pipeline(
        [Agent("lead"), Agent("merge", after=["helper"])],
        kinds=[AgentKind("helper", "helper:*", after=["lead"])],
    )
    controller = Controller(pipeline, policy="estimate")
    for i in range(30):
        _serve(controller, [("lead", 500), (f"helper:{i}", 500), (f"helper:{i + 1}", 500)], 9_000)
    policy = controller.policy
    counts = policy.call_counts(pipeline)  # type: ignore[attr-defined]
    assert counts.remaining("helper", 0) == pytest.approx((60 + 1) / 31)
    assert counts.remaining("merge", 0) == pytest.approx(1 / 31)


def test_what_was_learned_of_call_counts_is_saved_and_loaded(tmp_path: Path) -> None:
    pipeline = Pipeline([Agent("first"), Agent("rare", after=["first"])], name="p")
    policy = EstimatePolicy()
    controller = Controller(pipeline, policy=policy)
    for _ in range(20):
        _serve(controller, [("first", 300)], 5_000)
    path = tmp_path / "state.json"
    policy.save(path)
    again = EstimatePolicy.load(path)
    counts = again.call_counts(pipeline)
    assert counts.remaining("rare", 0) == pytest.approx(1 / 21)
    assert counts.remaining("first", 0) == 1.0
    again.save(tmp_path / "again.json")  # what was loaded and not used yet is kept
    assert EstimatePolicy.load(tmp_path / "again.json").call_counts(pipeline).remaining(
        "rare", 0
    ) == pytest.approx(1 / 21)
    document = json.loads(path.read_text())
    document["calls"]["p"]["rare"] = {"x": 1}
    path.write_text(json.dumps(document))
    with pytest.raises(PolicyStateError) as caught:
        EstimatePolicy.load(path)
    assert "calls.p" in str(caught.value)


def test_call_counts_are_warmed_from_telemetry(tmp_path: Path) -> None:
    """A team's calls recorded by telemetry (members' own names) count on their kind."""
    from apportion.analysis.warm_start import warm_from_telemetry
    from apportion.telemetry import flush

    pipeline = Pipeline(
        [Agent("lead"), Agent("rare", after=["lead"])],
        name="team",
        kinds=[AgentKind("expert", "expert:*", after=["lead"])],
    )
    url = f"sqlite:///{tmp_path / 't.db'}"
    controller = Controller(pipeline, policy="estimate", telemetry=url)
    for i in range(12):
        team = [("lead", 300), *[(f"expert:{i}:{k}", 300) for k in range(3)]]
        _serve(controller, team, 9_000)
    assert flush(30)
    policy = EstimatePolicy()
    assert warm_from_telemetry(policy, url, pipeline=pipeline)["calls"] == 48
    counts = policy.call_counts(pipeline)
    assert counts.remaining("expert", 0) == pytest.approx((36 + 1) / 13)
    assert counts.remaining("rare", 0) == pytest.approx(1 / 13)


def test_what_ran_after_what_is_warmed_from_telemetry(tmp_path: Path) -> None:
    """Warming from telemetry learns what ran after what (``calls_after``) as serving live
    did: a translator that ran only before the answer is no longer expected once the
    answer has begun (before, warming left it at its prior, one half)."""
    from apportion.analysis.warm_start import warm_from_telemetry
    from apportion.telemetry import flush

    pipeline = Pipeline(
        [Agent("lead"), Agent("translator", after=["lead"]), Agent("answer", after=["lead"])],
        name="optional",
    )
    url = f"sqlite:///{tmp_path / 't.db'}"
    controller = Controller(pipeline, policy="estimate", telemetry=url)
    for i in range(12):
        translated = [("translator", 300)] if i % 2 else []
        _serve(controller, [("lead", 300), *translated, ("answer", 300)], 9_000)
    assert flush(30)
    live = controller.policy.call_counts(pipeline)  # type: ignore[attr-defined]
    policy = EstimatePolicy()
    warm_from_telemetry(policy, url, pipeline=pipeline)
    warmed = policy.call_counts(pipeline)
    assert warmed.document_after() == live.document_after()
    assert warmed.remaining_after("translator", "answer") < 0.1


def _team_pipeline(members: int) -> Pipeline:
    return Pipeline(
        [
            Agent("lead", "critical"),
            *[Agent(f"worker:{i:02d}", after=["lead"]) for i in range(members)],
            Agent("report", after=[f"worker:{i:02d}" for i in range(members)]),
        ]
    )


def test_alike_listed_agents_are_one_team() -> None:
    """A pool listed name by name (same fields, same readers) is a team; a few alike agents
    (four searchers) are not, nor are agents that differ in a field a policy sees."""
    found = teams(_team_pipeline(20))
    assert set(found) == {f"worker:{i:02d}" for i in range(20)}
    assert len(set(found.values())) == 1
    assert teams(_team_pipeline(ALIKE_AT_LEAST - 1)) == {}
    mixed = Pipeline(
        [
            Agent("lead", "peripheral"),
            *[Agent(f"w{i}", "critical" if i % 2 else "standard") for i in range(20)],
        ]
    )
    assert all(len(team) == 10 for team in teams(mixed).values())


@pytest.mark.parametrize("policy", ["elastic", "estimate", "learned"])
def test_a_listed_team_is_held_back_for_by_the_calls_it_has_left(policy: str) -> None:
    """Ten of twenty alike listed workers run per request: once nine have run, the tenth
    is the team's last, and is not squeezed for the ten that did not run (before, each was
    held back for at its own chance, one half)."""
    pipeline = _team_pipeline(20)
    controller = Controller(pipeline, policy=_policy(policy))
    for r in range(60):
        drawn = [f"worker:{(r + 2 * i) % 20:02d}" for i in range(10)]
        _serve(controller, [("lead", 300), *[(w, 900) for w in drawn], ("report", 900)], 20_000)
    with controller.request(ceiling=20_000) as req:
        for agent in ["lead", *[f"worker:{i:02d}" for i in range(9)]]:
            grant = req.begin(agent, input_tokens=900)
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
        grant = req.begin("worker:09", input_tokens=15_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
    # about 10,000 left: the report's ~1,000 is what the last worker leaves room for
    assert grant.context_tokens >= 7_500


@pytest.mark.parametrize("policy", ["elastic", "estimate", "learned"])
def test_a_listed_teams_counts_are_saved_and_loaded(policy: str, tmp_path: Path) -> None:
    """A listed team's calls per request (and its members' prior) survive save and load:
    after loading, the second worker still leaves room for the eight after it (before,
    the team's counts were kept in memory only and a loaded policy held back for none)."""
    pipeline = _team_pipeline(20)
    trained = _policy(policy)
    controller = Controller(pipeline, policy=trained)
    for r in range(60):
        drawn = [f"worker:{(r + 2 * i) % 20:02d}" for i in range(10)]
        _serve(controller, [("lead", 300), *[(w, 900) for w in drawn], ("report", 900)], 20_000)
    path = tmp_path / "state.json"
    trained.save(path)  # type: ignore[attr-defined]
    assert "teams" in json.loads(path.read_text())
    loaded = type(trained).load(path)  # type: ignore[attr-defined]
    loaded.save(tmp_path / "again.json")  # loaded, not used yet: kept
    again = Controller(pipeline, policy=type(trained).load(tmp_path / "again.json"))  # type: ignore[attr-defined]
    with again.request(ceiling=20_000) as req:
        for agent in ["lead", "worker:00"]:
            grant = req.begin(agent, input_tokens=900)
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
        grant = req.begin("worker:01", input_tokens=15_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=100)
    # eight more workers of about 1,000 tokens and the report are still to come
    assert grant.total <= 20_000 - 7_000


def test_a_malformed_team_entry_is_refused(tmp_path: Path) -> None:
    pipeline = _team_pipeline(20)
    policy = EstimatePolicy()
    controller = Controller(pipeline, policy=policy)
    for r in range(3):
        drawn = [f"worker:{(r + 2 * i) % 20:02d}" for i in range(10)]
        _serve(controller, [("lead", 300), *[(w, 900) for w in drawn], ("report", 900)], 20_000)
    path = tmp_path / "state.json"
    policy.save(path)
    good = json.loads(path.read_text())
    for bad in ({"calls": {"worker:00": {"x": 1}}, "usage": {}}, {"usage": {"worker:00": [1]}}, 3):
        document = json.loads(json.dumps(good))
        document["teams"][pipeline.name] = bad
        path.write_text(json.dumps(document))
        with pytest.raises(PolicyStateError) as caught:
            EstimatePolicy.load(path)
        assert f"teams.{pipeline.name}" in str(caught.value)


def _team_day(controller: Controller, size: int, ceiling: int, last: int = 900) -> Any:
    """A lead, ``size`` workers writing 1,000 tokens each, and a report reading them all.

    Returns the last worker's grant (its input in hand: ``last``).
    """
    with controller.request(ceiling=ceiling) as req:
        grant = req.begin("lead", input_tokens=300)
        req.finish(grant, input_tokens=300, output_tokens=100)
        for i in range(size):
            grant = req.begin(f"worker:{i}", input_tokens=last if i == size - 1 else 900)
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=1_000)
        worker = grant
        grant = req.begin("report", input_tokens=300 + 1_000 * size)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=200)
    return worker


@pytest.mark.parametrize("policy", ["elastic", "estimate"])
def test_a_reader_is_held_back_for_the_answers_its_team_wrote(policy: str) -> None:
    """Teams of 2 or 10 workers, each writing 1,000 tokens a report reads (6,300 on
    average, 10,300 after ten): the tenth worker, with 9,000 tokens of input, leaves room
    for the report of ten answers, not of the mean team's (held back for the mean team,
    it leaves 6,000 with ``elastic``, 7,000 with ``estimate``). ``elastic`` leaves the
    critical report its whole need; ``estimate``, blind to priorities, shares what the
    two inputs lack between them (:meth:`PredictingPolicy.budget`)."""
    pipeline = Pipeline(
        [Agent("lead", "critical"), Agent("report", "critical", after=["worker"])],
        kinds=[AgentKind("worker", "worker:*", after=["lead"])],
    )
    controller = Controller(pipeline, policy=_policy(policy))
    for r in range(60):
        _team_day(controller, 2 if r % 2 else 10, 40_000)
    grant = _team_day(controller, 10, 40_000, last=9_000)
    left = 40_000 - 400 - 9 * 1_900 - grant.total
    assert left >= (9_500 if policy == "elastic" else 7_800)


def test_features_predict_the_calls_left_after_the_first() -> None:
    """A fan-out of ``depth`` children: after two, a request of depth 7 has about five
    left and one of depth 3 about one (before, the features counted only before the first
    call, and both were told the mean of every request with at least two)."""
    counts = CallCounts(["children"])
    for i in range(8 * FEATURES_AFTER):
        depth = 1 + i % 7
        counts.observe({"children": depth}, (1.0, float(depth)))
    deep = counts.remaining("children", 2, (1.0, 7.0))
    shallow = counts.remaining("children", 2, (1.0, 3.0))
    assert deep > 4.0
    assert shallow < 1.6
    assert counts.remaining("children", 7, (1.0, 3.0)) >= 0.0


def test_an_agent_seen_only_before_the_running_one_is_no_longer_expected() -> None:
    """A translator that runs in a fifth of the requests, always before the answer:
    once the answer has begun without it, it is not expected any more."""
    counts = CallCounts(["triage", "translator", "answer"])
    for i in range(50):
        ran = i % 5 == 0
        order = ["triage", "translator", "answer"] if ran else ["triage", "answer"]
        counts.observe({"triage": 1, "translator": int(ran), "answer": 1}, None, order)
    assert counts.remaining("translator", 0) == pytest.approx(11 / 51)
    assert counts.remaining_after("translator", "triage") == pytest.approx((10 + 11 / 51) / 51)
    assert counts.remaining_after("translator", "answer") < 0.01
    assert counts.remaining_after("answer", "triage") == pytest.approx(1.0)


@pytest.mark.parametrize("policy", ["elastic", "estimate", "learned"])
def test_no_hold_back_for_an_optional_agent_that_did_not_run_before(
    policy: str, tmp_path: Path
) -> None:
    """Optional "extra" (half the requests) runs only before "answer": once "answer" has
    begun without it, "answer" reads its whole input (before, it left room for half of
    the extra's need to the end); what ran after what is saved and loaded."""
    pipeline = Pipeline(
        [Agent("first"), Agent("extra", after=["first"]), Agent("answer", after=["first"])]
    )
    trained = _policy(policy)
    controller = Controller(pipeline, policy=trained)
    for r in range(60):
        extra = [("extra", 3_000)] if r % 2 else []
        _serve(controller, [("first", 500), *extra, ("answer", 2_000)], 12_000)
    path = tmp_path / "state.json"
    trained.save(path)  # type: ignore[attr-defined]
    assert "calls_after" in json.loads(path.read_text())
    again = Controller(pipeline, policy=type(trained).load(path))  # type: ignore[attr-defined]
    with again.request(ceiling=5_000) as req:
        grant = req.begin("first", input_tokens=500)
        req.finish(grant, input_tokens=500, output_tokens=100)
        grant = req.begin("answer", input_tokens=4_200)
    assert grant.context_tokens >= 3_900  # before: under 3,000


def test_where_a_listed_agent_loops_optional_agents_keep_their_chance() -> None:
    """The same optional "extra", in a pipeline whose first agent loops (three calls, a
    check after each): the answer still leaves room for the extra's chance. On the
    ChatDev log (roles that take turns many times) what the optional roles no longer held
    back went to the early calls of the critical looping programmer, not held back for
    its own later calls: elastic 0.721 -> 0.705, estimate 0.703 -> 0.681."""
    pipeline = Pipeline(
        [
            Agent("first"),
            Agent("check", after=["first"]),
            Agent("extra", after=["first"]),
            Agent("answer", after=["first"]),
        ]
    )
    controller = Controller(pipeline, policy="estimate")
    for r in range(60):
        extra = [("extra", 3_000)] if r % 2 else []
        turns = [("first", 500), ("check", 100)] * 3
        _serve(controller, [*turns, *extra, ("answer", 2_000)], 16_000)
    with controller.request(ceiling=5_000) as req:
        grant = req.begin("first", input_tokens=500)
        req.finish(grant, input_tokens=500, output_tokens=100)
        grant = req.begin("answer", input_tokens=4_200)
    assert grant.context_tokens < 3_500


def test_where_a_listed_agent_s_calls_come_in_a_row_what_ran_after_what_counts() -> None:
    """The first agent's three calls in a row are held back for as a kind's are: the
    pipeline is not one whose loops keep optional agents their plain chance, and the
    extra, seen only before the answer, is not expected once the answer has begun."""
    pipeline = Pipeline(
        [Agent("first"), Agent("extra", after=["first"]), Agent("answer", after=["first"])]
    )
    controller = Controller(pipeline, policy="estimate")
    for r in range(60):
        extra = [("extra", 3_000)] if r % 2 else []
        _serve(controller, [("first", 500)] * 3 + [*extra, ("answer", 2_000)], 16_000)
    with controller.request(ceiling=7_000) as req:  # 5,200 left for the answer
        for _ in range(3):
            grant = req.begin("first", input_tokens=500)
            req.finish(grant, input_tokens=500, output_tokens=100)
        grant = req.begin("answer", input_tokens=4_200)
    assert grant.context_tokens > 4_000  # half the extra's 3,000 held back: under 3,800


def test_a_line_s_own_later_calls_count_as_much_as_they_weigh() -> None:
    """Long loops rare but long: after the first call, the mean loop has 3.5 calls to go,
    but in a request of n calls each weighs 1/n, and the short loops weigh most."""
    counts = CallCounts(["a"])
    for n, requests in ((1, 30), (3, 40), (10, 30)):
        for _ in range(requests):
            counts.observe({"a": n})
    # with the prior's one request of one call
    assert counts.remaining("a", 1) == pytest.approx((40 * 2 + 30 * 9) / 101)
    weighed = (40 * 2 / 3 + 30 * 9 / 10) / (30 + 40 / 3 + 30 / 10 + 1)
    assert counts.own_remaining("a", 1) == pytest.approx(weighed)
    assert counts.own_remaining("a", 0) == counts.remaining("a", 0)  # before any call
    # ten calls made: only the loops of ten were that long, and they are over
    assert counts.own_remaining("a", 10) == counts.remaining("a", 10) == 0


def test_calls_in_a_row_are_saved_and_loaded_with_the_policy(tmp_path: Path) -> None:
    pipeline = Pipeline([Agent("tool"), Agent("answer", after=["tool"])], name="p")
    policy = EstimatePolicy()
    controller = Controller(pipeline, policy=policy)
    for _ in range(5):
        _serve(controller, [("tool", 300)] * 4 + [("answer", 300)], 9_000)
    assert policy.call_counts(pipeline).in_a_row("tool")
    policy.save(tmp_path / "state.json")
    again = EstimatePolicy.load(tmp_path / "state.json").call_counts(pipeline)
    assert again.in_a_row("tool") and not again.in_a_row("answer")
