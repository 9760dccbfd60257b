"""Replaying logged model calls through the real Controller (``apportion replay``).

A call log is a CSV file with one row per model call: ``run``, ``call``, ``agent``,
``prompt_tokens`` and ``completion_tokens`` are required; ``split`` (``train``/``test``),
``max_tokens`` (the output cap the system sent) and any other columns (``phase`` ...) are
optional. :func:`load_calls` reads and checks it; every mistake raises
:class:`~apportion.errors.SpecError` naming the file, the line and the column (``key``):
a missing column (line 1), an empty file or one without a single call, a value that is not
a non-negative integer, an agent the pipeline does not have (neither listed nor matched by
one of its agent kinds), a call number repeated in a run, a run whose rows disagree on their
split. An agent matched by a kind (``expert:ada`` by ``expert:*``) is played under its own
name and budgeted as its kind, as the controller does in production; ``static`` profiles
it on its kind's line.

How a run is replayed (:func:`replay_run`), following the spirit of "One request, step by
step" of the workload spec:

- One run is one request. Its ceiling is ``--ceiling N`` tokens, or ``--ceiling-ratio R``
  times the tokens the run really used (the sum of ``prompt_tokens + completion_tokens``
  over its calls), rounded down; ``R = 0.8`` by default, so every run is 20% short.
- The calls are played in ``call`` order, each through ``req.begin`` of the real
  controller. The logged prompt is the available input (``input_tokens``), the logged
  completion is the output need. The call reads ``ctx`` (what the policy granted) and
  writes ``min(cap, completion_tokens)``.
- While a call is cut, it asks for as much output again as it was granted (at most
  :data:`~apportion.sim.runner.MAX_EXTENSIONS` times), resending its context: each
  extension also reads ``ctx + out`` so far, because ChatDev-like systems resend the
  conversation. Then the call settles with ``req.finish``.
- A call refused outright (nothing left for its agent) counts as cut, with quality 0.
- Prompts are taken as logged: a cut earlier answer does not shorten a later prompt (the
  log says how long the prompts were, not what they were made of).
- What policies see when a run opens: ``features = {}``. Nothing in a call log is known
  before the run starts (not its number of phases, review rounds or calls), so an honest
  replay tells the policy nothing but the ceiling and the pipeline; inputs are counted at
  each call as in production.

Figures per policy (over the reported runs):

- ``cut_rate``: calls whose input or output was cut (refused calls included), over all
  calls; ``critical_cut_rate`` the same over calls of ``critical`` agents.
- ``unused_mean``: per run, tokens granted (context plus output, extensions included)
  minus tokens consumed, summed over its calls and averaged over runs: budget held for
  calls that never used it. Being summed over calls, it can exceed the ceiling (a policy
  that grants every call a large cap holds the same tokens again and again), exactly as
  the log's caps do.
- ``extensions_mean``: extensions granted per run.
- ``quality_mean``: **simulated** quality. Each call gets
  ``q = agent_quality(kind, ctx, prompt, out, completion, input_sensitivity=1.0)`` (the
  response model of the workload spec, the spec's default beta, the output kind from the
  pipeline file); a run's quality is the mean of its calls' ``q``: how much of the run's
  work came out whole. Not the spec's product, nor a geometric mean: over the ~25 calls of
  a run either is 0 as soon as one call is worthless (a cut structured answer, a refused
  call), which hides every difference between policies on a tight ceiling.
  ``quality_simulated: true`` says so in the JSON.

``log``: what the logged ``max_tokens`` caps did, on the calls that logged one (a blank
cell means the cap was not logged for that call). A call is cut when
``completion_tokens >= max_tokens`` (it hit its cap); ``unused_mean`` is, per run whose
every call logged its cap, the sum of ``max_tokens - completion_tokens`` (output granted
and never used; the prompt is read whole, so it adds nothing), averaged over those runs.
Without a ``max_tokens`` column, or without a single logged cap among the reported
calls, ``log`` is ``null``.

Learning and splits: runs are reported on ``--split`` (``test`` by default when the file
has a ``split`` column). Policies are fitted on the ``train`` runs first: ``static`` gets
budgets from :meth:`~apportion.policies.StaticPolicy.from_usage` over the train calls
(P90 of prompt and completion tokens, plus 10%, as ``bench`` profiles it); a policy that
learns (``estimate``, ``elastic``, ``iterative``: any policy overriding ``learn``) first
replays every train run through the same controller, learning online from the settled
calls as it would in production, then plays the reported runs; ``uniform`` needs nothing.
Reporting on ``train`` itself, or on a file without a ``split`` column (where ``--split``
filters nothing and every run is reported), fits on the reported runs: in-sample, and the
JSON says so (``fit.in_sample``).
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apportion.controller import Controller
from apportion.errors import PolicyConfigError, SpecError
from apportion.files import read_text
from apportion.limits import MAX_TOKENS, excerpt, listing
from apportion.policies import (
    POLICIES,
    Policy,
    StaticPolicy,
    check_policy_names,
    resolve_policy,
    rule_policies,
)
from apportion.sim.quality import agent_quality
from apportion.sim.runner import MAX_EXTENSIONS, play_call
from apportion.spec import Pipeline, Priority

__all__ = [
    "DEFAULT_CEILING_RATIO",
    "REQUIRED_COLUMNS",
    "CallLog",
    "LoggedCall",
    "LoggedRun",
    "RunOutcome",
    "check_replay",
    "load_calls",
    "log_figures",
    "replay_run",
    "replay_steps",
    "replay_upper_bound",
    "run_ceiling",
    "run_replay",
    "select_runs",
]

REQUIRED_COLUMNS = ("run", "call", "agent", "prompt_tokens", "completion_tokens")
"""Columns every call log must have."""

DEFAULT_CEILING_RATIO = 0.8
"""Each run's ceiling, as a share of the tokens it really used, unless told otherwise."""

SPLITS = ("train", "test")
"""The values ``--split`` accepts."""

_INTEGER = re.compile(r"[+-]?[0-9]+")

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class LoggedCall:
    """One logged model call.

    Attributes:
        call: its 1-based order in its run.
        agent: the agent that made it.
        prompt_tokens: input tokens billed (the available input of the replay).
        completion_tokens: output tokens billed (the output need of the replay).
        max_tokens: the output cap that was sent, or ``None`` when not logged.
        line: the file's line the call was read from.
    """

    call: int
    agent: str
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int | None
    line: int


@dataclass(frozen=True, slots=True)
class LoggedRun:
    """One logged run: one request of the replay.

    Attributes:
        name: the run's name.
        split: its split (``train``/``test``), or ``None`` without a split column.
        calls: its calls, in ``call`` order.
    """

    name: str
    split: str | None
    calls: tuple[LoggedCall, ...]

    @property
    def tokens(self) -> int:
        """Tokens the run really used: prompt plus completion over its calls."""
        return sum(c.prompt_tokens + c.completion_tokens for c in self.calls)


@dataclass(frozen=True, slots=True)
class CallLog:
    """A checked call log.

    Attributes:
        file: the file it was read from.
        runs: its runs, in order of first appearance.
        has_split: whether the file has a ``split`` column.
        has_max_tokens: whether the file has a ``max_tokens`` column.
    """

    file: str
    runs: tuple[LoggedRun, ...]
    has_split: bool
    has_max_tokens: bool

    @property
    def calls(self) -> int:
        """Number of calls over all runs."""
        return sum(len(r.calls) for r in self.runs)


def load_calls(path: str | Path, pipeline: Pipeline | None = None) -> CallLog:
    """Read and check a call log.

    Args:
        path: the CSV file.
        pipeline: if given, every ``agent`` must be one of its agents.

    Returns:
        The call log, runs in order of first appearance, calls sorted by ``call``.

    Raises:
        SpecError: the file cannot be read or breaks the format; ``file``, ``line`` and
            ``key`` (the column) locate the mistake.
    """
    text = read_text(path)
    return _parse(csv.DictReader(io.StringIO(text, newline="")), str(path), pipeline)


def _parse(reader: csv.DictReader[str], file: str, pipeline: Pipeline | None) -> CallLog:
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise SpecError(f"not valid CSV: {exc}", file=file, line=reader.line_num) from exc
    if not header:
        raise SpecError("the file is empty: expected a header line", file=file, line=1)
    columns = [column.strip() for column in header]
    seen_columns: set[str] = set()
    for column in columns:
        if column in seen_columns:
            raise SpecError(
                f"column {excerpt(column)} appears twice", file=file, line=1, key=excerpt(column)
            )
        seen_columns.add(column)
    for column in REQUIRED_COLUMNS:
        if column not in columns:
            raise SpecError(
                f"missing column '{column}'; required: {', '.join(REQUIRED_COLUMNS)}",
                file=file,
                line=1,
                key=column,
            )
    has_split, has_cap = "split" in columns, "max_tokens" in columns
    rename = dict(zip(header, columns, strict=True))
    runs: dict[str, list[LoggedCall]] = {}
    splits: dict[str, tuple[str, int]] = {}
    seen: dict[tuple[str, int], int] = {}
    try:
        for raw in reader:
            line = reader.line_num
            if None in raw:
                raise SpecError(
                    f"more fields than the {len(header)} columns of the header",
                    file=file,
                    line=line,
                )
            row = {rename[k]: v for k, v in raw.items()}
            run = _text(row, "run", file, line)
            agent = _text(row, "agent", file, line)
            if pipeline is not None and not _known(pipeline, agent):
                raise _unknown(pipeline, agent, file, line)
            number = _count(row, "call", file, line)
            if (run, number) in seen:
                raise SpecError(
                    f"call {number} of run {excerpt(run)} appears twice (first on line "
                    f"{seen[run, number]})",
                    file=file,
                    line=line,
                    key="call",
                )
            seen[run, number] = line
            cap = None
            if has_cap and (row["max_tokens"] or "").strip():
                cap = _count(row, "max_tokens", file, line)
            if has_split:
                split = _text(row, "split", file, line)
                first = splits.setdefault(run, (split, line))
                if first[0] != split:
                    raise SpecError(
                        f"run {excerpt(run)} is in split {excerpt(first[0])} on line {first[1]}, "
                        f"here in {excerpt(split)}",
                        file=file,
                        line=line,
                        key="split",
                    )
            runs.setdefault(run, []).append(
                LoggedCall(
                    number,
                    agent,
                    _count(row, "prompt_tokens", file, line),
                    _count(row, "completion_tokens", file, line),
                    cap,
                    line,
                )
            )
    except csv.Error as exc:
        raise SpecError(f"not valid CSV: {exc}", file=file, line=reader.line_num) from exc
    if not runs:
        raise SpecError("no calls: the file has a header but no rows", file=file, line=1)
    return CallLog(
        file=file,
        runs=tuple(
            LoggedRun(run, splits[run][0] if has_split else None, tuple(_by_call(calls)))
            for run, calls in runs.items()
        ),
        has_split=has_split,
        has_max_tokens=has_cap,
    )


def _known(pipeline: Pipeline, agent: str) -> bool:
    """Whether the pipeline budgets ``agent``: listed, or matched by one of its kinds."""
    return agent in pipeline or pipeline.kind_of(agent) is not None


def _unknown(pipeline: Pipeline, agent: str, file: str | None, line: int | None) -> SpecError:
    kinds = [f"{k.name} ({', '.join(k.match) or 'default'})" for k in pipeline.kinds]
    extra = f"; its agent kinds: {listing(kinds)}" if kinds else " (and it declares no kinds)"
    listed = [a.name for a in pipeline.agents if a.name not in {k.name for k in pipeline.kinds}]
    return SpecError(
        f"unknown agent {excerpt(agent)}; the pipeline has: {listing(listed)}{extra}",
        file=file,
        line=line,
        key="agent",
    )


def _by_call(calls: list[LoggedCall]) -> list[LoggedCall]:
    return sorted(calls, key=lambda c: c.call)


def _text(row: Mapping[str, str | None], column: str, file: str, line: int) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise SpecError(f"'{column}' is empty", file=file, line=line, key=column)
    return value


def _count(row: Mapping[str, str | None], column: str, file: str, line: int) -> int:
    text = (row.get(column) or "").strip()
    if not _INTEGER.fullmatch(text):
        shown = excerpt(text) if text else "an empty cell"
        raise SpecError(
            f"must be a non-negative integer, not {shown}", file=file, line=line, key=column
        )
    if text.startswith("-") and text.strip("-+0"):
        raise SpecError(
            f"must be a non-negative integer, not {text if len(text) < 20 else excerpt(text)}",
            file=file,
            line=line,
            key=column,
        )
    digits = text.lstrip("+-0")
    if len(digits) > len(str(MAX_TOKENS)) or int(digits or "0") > MAX_TOKENS:
        raise SpecError(
            f"{excerpt(text)} is above the limit of {MAX_TOKENS:,}",
            file=file,
            line=line,
            key=column,
        )
    return int(digits or "0")


# --------------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What one replayed run came to under one policy.

    Attributes:
        quality: simulated run quality (the mean of its calls' ``q``).
        ceiling: the run's ceiling.
        calls: calls in the run (refused ones included).
        cut_calls: calls whose input or output was cut, refused ones included.
        critical_calls: calls of critical agents.
        critical_cut_calls: calls of critical agents that were cut.
        extensions: extensions granted.
        refused: calls that could not run at all.
        granted: tokens granted (context plus output, extensions included).
        consumed: tokens consumed.
    """

    quality: float
    ceiling: int
    calls: int
    cut_calls: int
    critical_calls: int
    critical_cut_calls: int
    extensions: int
    refused: int
    granted: int
    consumed: int

    @property
    def unused(self) -> int:
        """Tokens granted but never used."""
        return self.granted - self.consumed


def run_ceiling(run: LoggedRun, ceiling: int | None = None, ratio: float | None = None) -> int:
    """The ceiling of one run: ``ceiling`` if given, else ``ratio`` of its real tokens.

    Args:
        run: the run.
        ceiling: a fixed ceiling, or ``None``.
        ratio: share of the run's real tokens (default :data:`DEFAULT_CEILING_RATIO`).

    Returns:
        The ceiling, at least 1.
    """
    if ceiling is not None:
        return ceiling
    share = DEFAULT_CEILING_RATIO if ratio is None else ratio
    return max(1, math.floor(share * run.tokens))


def replay_run(
    controller: Controller,
    run: LoggedRun,
    ceiling: int,
    *,
    max_extensions: int = MAX_EXTENSIONS,
) -> RunOutcome:
    """Play one logged run through ``controller`` as one request (see the module docstring).

    Args:
        controller: a controller over a pipeline that has every agent of the run.
        run: the run.
        ceiling: its token ceiling.
        max_extensions: most extensions one call may ask for.

    Returns:
        The run's outcome.
    """
    pipeline = controller.pipeline
    qualities: list[float] = []
    cut = critical = critical_cut = extensions = refused = granted = consumed = 0
    with controller.request(ceiling, {}) as req:
        for call in run.calls:
            agent = pipeline.resolve(call.agent)  # the listed agent, else its kind's template
            need_in, need_out = call.prompt_tokens, call.completion_tokens
            is_critical = agent.priority is Priority.CRITICAL
            critical += is_critical
            played = play_call(
                req, call.agent, need_in, need_out, resend=True, max_extensions=max_extensions
            )
            was_cut = played.refused or played.read < need_in or played.wrote < need_out
            refused += played.refused
            cut += was_cut
            critical_cut += is_critical and was_cut
            extensions += played.extensions
            granted += played.granted
            consumed += played.consumed_in + played.wrote
            quality = (
                0.0
                if played.refused
                else _call_quality(
                    agent.output_kind.value, played.read, need_in, played.wrote, need_out
                )
            )
            qualities.append(quality)
        quality = statistics.fmean(qualities) if qualities else 1.0
        req.score(quality)
    return RunOutcome(
        quality=quality,
        ceiling=ceiling,
        calls=len(run.calls),
        cut_calls=cut,
        critical_calls=critical,
        critical_cut_calls=critical_cut,
        extensions=extensions,
        refused=refused,
        granted=granted,
        consumed=consumed,
    )


def replay_upper_bound(run: LoggedRun, ceiling: int) -> float:
    """An upper bound on the simulated quality any policy can get for ``run`` at ``ceiling``.

    The hindsight "oracle" of a replayed log (``apportion learn CALLS.csv``): no allocation,
    whatever it knows, makes :func:`replay_run` report a higher quality, so a policy's
    quality over this bound is a conservative (low) estimate of its quality over the best
    achievable.

    Proof. Take a call with logged prompt ``I`` and completion ``O`` that reads ``ctx`` and
    writes ``out`` and, with its extensions, consumes ``b >= ctx + out`` tokens. With input
    coverage ``x = min(1, ctx / I)`` and output coverage ``y = min(1, out / O)``, its
    quality is ``q = x * q_out(y)`` with ``q_out(y) <= y`` for every output kind, so
    ``q <= min(x, y) <= 1``; and ``min(x, y) * (I + O) <= min(ctx, I) + min(out, O) <= b``.
    Hence ``q <= min(1, b / (I + O))`` (a need of 0 is met by nothing, as in
    :func:`replay_run`; a call with ``I + O == 0`` is bounded by 1 alone, a refused call
    has ``q = 0``). The ledger's hard cap gives ``sum(b) <= ceiling``, and the run's
    quality is the mean of its calls' ``q``, so it is at most the maximum of
    ``mean(min(1, b_i / w_i))`` over ``b_i >= 0`` with ``sum(b_i) <= ceiling``, where
    ``w_i = I_i + O_i``: a fractional knapsack in which each token given to call ``i``
    is worth ``1 / w_i`` until the call is full. Filling the calls in ascending order of
    ``w_i``, the last one partly, attains that maximum.

    The bound ignores the extensions' resent context and the policies' ignorance of the
    needs, so it is rarely attained; with a ceiling that covers every logged token it is 1.

    Args:
        run: the run.
        ceiling: its token ceiling.

    Returns:
        The bound, in [0, 1]; 1 for a run without calls (as :func:`replay_run` scores it).
    """
    if not run.calls:
        return 1.0
    left = float(max(0, ceiling))
    total = 0.0
    for weight in sorted(c.prompt_tokens + c.completion_tokens for c in run.calls):
        if weight == 0:
            total += 1.0
        elif left >= weight:
            total += 1.0
            left -= weight
        else:
            total += left / weight
            break
    return total / len(run.calls)


def _call_quality(kind: Any, ctx: int, need_in: int, out: int, need_out: int) -> float:
    """``q`` of one call; a need of 0 is met by nothing (the response model wants >= 1)."""
    if need_in == 0:
        ctx, need_in = 1, 1
    if need_out == 0:
        out, need_out = 1, 1
    return agent_quality(kind, ctx, need_in, out, need_out, input_sensitivity=1.0)


def select_runs(
    log: CallLog, split: str | None = None
) -> tuple[list[LoggedRun], list[LoggedRun], bool]:
    """The runs reported, the runs fitted on, and whether the fit is in-sample.

    Args:
        log: the call log.
        split: ``train`` or ``test`` (default: ``test`` when the log has a split column);
            without a split column it filters nothing.

    Returns:
        ``(reported, fit, in_sample)``.

    Raises:
        SpecError: ``split`` is not ``train``/``test``, or no run is in it.
    """
    if split is not None and split not in SPLITS:
        raise SpecError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}", key="split")
    if not log.has_split:
        runs = list(log.runs)
        return runs, runs, True
    split = split or "test"
    reported = [r for r in log.runs if r.split == split]
    if not reported:
        raise SpecError(f"no run is in split '{split}'", file=log.file, key="split")
    fit = [r for r in log.runs if r.split == "train"]
    return reported, fit, split == "train"


def _learns(policy: Policy | type[Policy]) -> bool:
    """Whether a policy learns from closed requests (overrides :meth:`Policy.learn`)."""
    kind = policy if isinstance(policy, type) else type(policy)
    return kind.learn is not Policy.learn


def _learns_name(name: str) -> bool:
    factory = POLICIES.get(name)
    if isinstance(factory, type) and issubclass(factory, Policy):
        return _learns(factory)
    return name != "static" and _learns(resolve_policy(name))


def _make_policy(name: str, fit: Sequence[LoggedRun], pipeline: Pipeline | None = None) -> Policy:
    if name != "static":
        return resolve_policy(name)
    usage: dict[str, list[tuple[int, int]]] = {}
    for run in fit:
        for call in run.calls:
            line = call.agent if pipeline is None else pipeline.resolve(call.agent).name
            usage.setdefault(line, []).append((call.prompt_tokens, call.completion_tokens))
    if not usage:
        raise PolicyConfigError("the static policy is profiled on train runs, and there are none")
    return StaticPolicy.from_usage(usage, percentile=90.0, margin=0.1)


def replay_steps(log: CallLog, policies: Sequence[str], split: str | None = None) -> int:
    """How many runs :func:`run_replay` plays in all (for a progress bar)."""
    reported, fit, _ = select_runs(log, split)
    warm = sum(1 for name in policies if _learns_name(name))
    return len(reported) * len(policies) + len(fit) * warm


def log_figures(pipeline: Pipeline, runs: Sequence[LoggedRun]) -> dict[str, Any] | None:
    """What the logged ``max_tokens`` caps did (see the module docstring), or ``None``."""
    capped = [c for r in runs for c in r.calls if c.max_tokens is not None]
    if not capped:
        return None
    critical = [c for c in capped if pipeline.resolve(c.agent).priority is Priority.CRITICAL]
    complete = [r for r in runs if all(c.max_tokens is not None for c in r.calls)]
    unused = [
        sum(max(0, (c.max_tokens or 0) - c.completion_tokens) for c in r.calls) for r in complete
    ]

    def hit(calls: list[LoggedCall]) -> float:
        cut = sum(c.completion_tokens >= (c.max_tokens or 0) for c in calls)
        return round(cut / len(calls), 4) if calls else 0.0

    return {
        "cut_rate": hit(capped),
        "critical_cut_rate": hit(critical),
        "unused_mean": round(statistics.fmean(unused), 1) if unused else None,
        "calls": len(capped),
        "calls_total": sum(len(r.calls) for r in runs),
        "runs": len(complete),
    }


def _summary(outcomes: Sequence[RunOutcome]) -> dict[str, Any]:
    calls = sum(o.calls for o in outcomes) or 1
    critical = sum(o.critical_calls for o in outcomes)
    return {
        "quality_mean": round(statistics.fmean(o.quality for o in outcomes), 4),
        "cut_rate": round(sum(o.cut_calls for o in outcomes) / calls, 4),
        "critical_cut_rate": round(sum(o.critical_cut_calls for o in outcomes) / critical, 4)
        if critical
        else 0.0,
        "unused_mean": round(statistics.fmean(o.unused for o in outcomes), 1),
        "extensions_mean": round(statistics.fmean(o.extensions for o in outcomes), 3),
        "refused_rate": round(sum(o.refused for o in outcomes) / calls, 4),
        "tokens_mean": round(statistics.fmean(o.consumed for o in outcomes), 1),
        "ceiling_mean": round(statistics.fmean(o.ceiling for o in outcomes), 1),
    }


def check_replay(
    log: CallLog, pipeline: Pipeline, ceiling: int | None, ceiling_ratio: float | None
) -> float | None:
    """Check a replay's inputs; return the ceiling ratio in force (``None``: a fixed ceiling).

    Raises:
        PolicyConfigError: both ceilings given, a ceiling that is not a positive integer,
            or a ratio that is not positive.
        SpecError: an agent of the log is not in the pipeline, nor matched by one of its
            agent kinds (file, line, key).
    """
    if ceiling is not None and ceiling_ratio is not None:
        raise PolicyConfigError("give --ceiling or --ceiling-ratio, not both")
    if ceiling is not None and (isinstance(ceiling, bool) or ceiling < 1):
        raise PolicyConfigError(f"the ceiling must be a positive integer, not {ceiling!r}")
    if ceiling is None:
        ceiling_ratio = DEFAULT_CEILING_RATIO if ceiling_ratio is None else ceiling_ratio
        if not (math.isfinite(ceiling_ratio) and ceiling_ratio > 0):
            raise PolicyConfigError(f"the ceiling ratio must be positive, not {ceiling_ratio!r}")
    for run in log.runs:
        for call in run.calls:
            if not _known(pipeline, call.agent):
                raise _unknown(pipeline, call.agent, log.file, call.line)
    return ceiling_ratio


def run_replay(
    log: CallLog,
    pipeline: Pipeline,
    *,
    policies: Sequence[str] | None = None,
    ceiling: int | None = None,
    ceiling_ratio: float | None = None,
    split: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Replay a call log through each policy and report the figures of the module docstring.

    Args:
        log: the call log (its agents must all be in ``pipeline`` or match its kinds).
        pipeline: the pipeline: agents, priorities, output kinds.
        policies: registered policy names (default: the rule-based ones).
        ceiling: fixed per-run ceiling; exclusive with ``ceiling_ratio``.
        ceiling_ratio: per-run ceiling as a share of the run's real tokens (default 0.8).
        split: runs to report on (see :func:`select_runs`).
        progress: called with the number of runs just played (for progress bars).

    Returns:
        ``{"runs", "policies": {NAME: {...}}, "log": {...} | None, ...}``.

    Raises:
        SpecError: a bad split, or an agent of the log is not in the pipeline.
        PolicyConfigError: both ceilings given, a ratio that is not positive, or nothing
            to profile ``static`` on.
        UnknownPolicy: a policy name is not registered.
    """
    ceiling_ratio = check_replay(log, pipeline, ceiling, ceiling_ratio)
    reported, fit, in_sample = select_runs(log, split)
    names = list(policies or rule_policies())
    check_policy_names(names)  # before anything is played
    figures: dict[str, dict[str, Any]] = {}
    for name in names:
        policy = _make_policy(name, fit, pipeline)
        controller = Controller(pipeline, policy=policy, store="memory://")
        if _learns(policy):
            for run in fit:
                replay_run(controller, run, run_ceiling(run, ceiling, ceiling_ratio))
                if progress:
                    progress(1)
        outcomes = []
        for run in reported:
            outcomes.append(replay_run(controller, run, run_ceiling(run, ceiling, ceiling_ratio)))
            if progress:
                progress(1)
        figures[name] = _summary(outcomes)
    return {
        "calls_file": log.file,
        "pipeline": pipeline.name,
        "runs": len(reported),
        "calls": sum(len(r.calls) for r in reported),
        "split": reported[0].split if log.has_split else None,
        "ceiling": ceiling,
        "ceiling_ratio": ceiling_ratio,
        "quality_simulated": True,
        "fit": {
            "split": "train" if log.has_split else None,
            "runs": len(fit),
            "in_sample": in_sample,
        },
        "policies": figures,
        "log": log_figures(pipeline, reported),
    }
