"""A small event set whose report was computed by hand (see the numbers in the tests).

Agents (grants are ``(context, output)``; usage ``(input, output)``):

- planner, sized right: four calls granted (100, 50), using (80, 20), (100, 40), (60, 30),
  (90, 50), none cut; plus one grant released unused in r1.
- critic, over-budgeted: two calls granted (1000, 1000), using (100, 50) and (200, 150).
- writer, under-budgeted: four calls granted (100, 100), using (100, 100) truncated in r1,
  (100, 60) in r2, (100, 70) in r3, and (100, 50) in r4 with its input cut (50 dropped).

Requests r1..r4 have outcomes 0.9, 0.5, 0.7, 0.4; r1 and r2 at clock 1000, r3 and r4 at
clock 2000.
"""

from __future__ import annotations

from apportion.telemetry.records import CallUsage, RequestUsage

OUTCOMES = {"r1": 0.9, "r2": 0.5, "r3": 0.7, "r4": 0.4}
TIMES = {"r1": 1000.0, "r2": 1000.0, "r3": 2000.0, "r4": 2000.0}


def _call(
    rid: str,
    gid: int,
    agent: str,
    granted: tuple[int, int],
    used: tuple[int, int] | None,
    **extra: object,
) -> CallUsage:
    at = TIMES[rid]
    return CallUsage(
        request_id=rid,
        grant_id=gid,
        agent=agent,
        granted_context=granted[0],
        granted_output=granted[1],
        used_input=None if used is None else used[0],
        used_output=None if used is None else used[1],
        truncated=None if used is None else bool(extra.pop("truncated", False)),
        settled="finish" if used is not None else "release",
        began_at=at,
        at=at + 1,
        **extra,  # type: ignore[arg-type]
    )


def hand_records() -> list[RequestUsage]:
    calls: dict[str, list[CallUsage]] = {rid: [] for rid in OUTCOMES}
    for rid, used in zip(OUTCOMES, [(80, 20), (100, 40), (60, 30), (90, 50)], strict=True):
        calls[rid].append(_call(rid, 1, "planner", (100, 50), used))
    calls["r1"].append(_call("r1", 9, "planner", (100, 50), None))
    calls["r1"].append(_call("r1", 2, "critic", (1000, 1000), (100, 50)))
    calls["r2"].append(_call("r2", 2, "critic", (1000, 1000), (200, 150)))
    calls["r1"].append(_call("r1", 3, "writer", (100, 100), (100, 100), truncated=True))
    calls["r2"].append(_call("r2", 3, "writer", (100, 100), (100, 60)))
    calls["r3"].append(_call("r3", 3, "writer", (100, 100), (100, 70)))
    calls["r4"].append(
        _call("r4", 3, "writer", (100, 100), (100, 50), input_cut=True, dropped_tokens=50)
    )
    return [
        RequestUsage(
            request_id=rid,
            pipeline="hand",
            ceiling=5_000,
            consumed=sum(c.used or 0 for c in calls[rid]),
            outcome=OUTCOMES[rid],
            opened_at=TIMES[rid],
            closed_at=TIMES[rid] + 2,
            calls=tuple(sorted(calls[rid], key=lambda c: c.grant_id)),
        )
        for rid in OUTCOMES
    ]


def write_hand_set(url: str) -> None:
    from apportion.telemetry.sql import Database

    with Database(url, create=True) as db:
        db.write(hand_records())
