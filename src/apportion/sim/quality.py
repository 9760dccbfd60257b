"""The hidden response model: how much quality a request gets from what it was granted.

Implements "Quality" and step 1 of "One request, step by step" in
``docs/workload-spec.md``. Policies never see these functions' inputs
(``need_in``, ``need_out``, ``input_sensitivity``, ``influence``); they are told only the
request quality ``Q`` when the request closes.

- Input coverage ``x = min(1, ctx / need_in)``, ``q_in = x ** input_sensitivity``
  (with ``0 ** 0 = 1``: an agent with sensitivity 0 does not care about its input).
- Output coverage ``y = min(1, out / need_out)``; ``q_out`` is ``1 if y == 1 else 0``
  for ``structured``, ``y`` for ``prose``, ``1 if y == 1 else 0.5 * y`` for ``reasoning``.
- Agent quality ``q = capability * q_in * q_out``; request quality
  ``Q = prod(q ** influence)``, an agent of influence 0 contributing a factor 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from apportion.sim.workload import OutputKind

__all__ = ["agent_quality", "available_input", "output_quality", "request_quality"]


def available_input(need_in: int, cuts: Iterable[int] = ()) -> int:
    """Context tokens an agent can be given: its need minus what upstream cuts removed.

    For an agent whose input has ``upstream: true``, ``avail_in = need_in - sum(need_out_u
    - out_u)`` over the upstream agents ``u`` it lists in ``after``; for any other agent,
    pass no cuts (``avail_in = need_in``).

    Args:
        need_in: the agent's context-token need.
        cuts: for each upstream agent, ``need_out_u - out_u`` (0 when not cut).

    Returns:
        The available input, at least 0. (``need_in`` carries its own noise, so upstream
        cuts can in principle exceed it; the result is then 0, not negative.)

    Raises:
        ValueError: a cut is negative.
    """
    removed = 0
    for cut in cuts:
        if cut < 0:
            raise ValueError(f"an upstream cut is need_out - out >= 0, got {cut}")
        removed += cut
    return max(0, need_in - removed)


def output_quality(kind: OutputKind, out: int, need_out: int) -> float:
    """``q_out`` for an agent that wrote ``out`` of the ``need_out`` tokens it would.

    Args:
        kind: ``structured``, ``prose`` or ``reasoning``.
        out: output tokens written (after extensions).
        need_out: output tokens the agent would write unconstrained (>= 1).

    Returns:
        ``q_out`` in [0, 1].

    Raises:
        ValueError: ``kind`` is unknown or ``need_out`` < 1.
    """
    if need_out < 1:
        raise ValueError(f"need_out must be at least 1, got {need_out}")
    if out >= need_out:
        if kind not in ("structured", "prose", "reasoning"):
            raise ValueError(f"unknown output kind {kind!r}")
        return 1.0
    y = max(0, out) / need_out
    if kind == "structured":
        return 0.0
    if kind == "prose":
        return y
    if kind == "reasoning":
        return 0.5 * y
    raise ValueError(f"unknown output kind {kind!r}")


def agent_quality(
    kind: OutputKind,
    ctx: int,
    need_in: int,
    out: int,
    need_out: int,
    input_sensitivity: float,
    capability: float = 1.0,
) -> float:
    """Quality ``q = capability * q_in * q_out`` of one agent call.

    Args:
        kind: the agent's output kind.
        ctx: context tokens granted (and read).
        need_in: context tokens it needed to see everything relevant (>= 1).
        out: output tokens written, after extensions.
        need_out: output tokens it would write unconstrained (>= 1).
        input_sensitivity: beta, the exponent of input coverage.
        capability: the model's capability for ``kind`` (1 for the implicit model).

    Returns:
        ``q`` in [0, capability].

    Raises:
        ValueError: ``kind`` is unknown or a need is below 1.
    """
    if need_in < 1:
        raise ValueError(f"need_in must be at least 1, got {need_in}")
    x = min(1.0, max(0, ctx) / need_in)
    q_in = 1.0 if input_sensitivity == 0 else x**input_sensitivity
    return capability * q_in * output_quality(kind, out, need_out)


def request_quality(agent_qualities: Sequence[float], influences: Sequence[float]) -> float:
    """Request quality ``Q = prod(q ** influence)``.

    Args:
        agent_qualities: each agent's ``q``, in agent order.
        influences: each agent's influence (>= 0), in the same order.

    Returns:
        ``Q`` in [0, 1]; an agent with influence 0 contributes 1 whatever its ``q``.

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(agent_qualities) != len(influences):
        raise ValueError(f"{len(agent_qualities)} agent qualities but {len(influences)} influences")
    result = 1.0
    for q, weight in zip(agent_qualities, influences, strict=True):
        if weight == 0:
            continue
        if q <= 0:
            return 0.0
        result *= q**weight
    return result
