"""``Rollout``: a candidate policy given a growing share of traffic, like a feature flag.

Rule: each request goes to the candidate or to the baseline by a hash of its request id
(``sha256(salt + id)``, so a request always goes the same way at a given share), the
candidate getting the current step's share (``1% -> 5% -> 25% -> 50% -> 100%`` by
default). Every request closed with a score in [0, 1] is measured: its outcome, its
outcome per thousand tokens consumed, and whether a critical agent was cut.

Promotion: after at least ``min_requests`` scored requests of each side at the current
step, the candidate moves to the next step when the difference of mean outcome per token
(candidate minus baseline) has a lower confidence bound above 0. The bound comes from a
normal-mixture confidence sequence (Robbins' mixture boundary, with plug-in variances:
the asymptotic confidence sequence of Waudby-Smith et al., 2021), which stays valid
however often it is looked at, so checking after every request is allowed. Each step
starts its measurements afresh.

Rollback, at once, when a guardrail trips (checked after every scored candidate request
once each side has ``guard_requests``): the candidate's mean outcome falls more than
``max_quality_drop`` below the baseline's; its rate of requests with a cut critical agent
exceeds the baseline's by more than ``max_critical_cut_increase``; its mean tokens exceed
the baseline's by more than ``max_cost_ratio``; or the confidence sequence shows its
outcome per token worse than the baseline's. A rolled-back candidate gets no traffic.

Every decision (start, promote, hold, complete, rollback) is a :class:`RolloutEvent`, kept
in :attr:`Rollout.events`, handed to ``on_event`` and written to the telemetry sinks that
record rollouts (the SQL sink's ``apportion_rollout_events`` table, shown by ``apportion
report``): the :class:`~apportion.policies.base.DecisionLog` given as ``telemetry=``
(``apportion.telemetry.decision_log(URL)``), or else the controller's the rollout is the
policy of (:meth:`Rollout.attach_telemetry`). A ``hold`` is recorded when, at a step,
each side first has ``min_requests`` scored requests (and again at 2, 4, 8 ... times as
many) without a confident difference either way. A candidate equal to its baseline (the
same object or the same name) is refused.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from apportion.errors import PolicyConfigError
from apportion.ledger import Grant
from apportion.limits import excerpt
from apportion.policies import resolve_policy
from apportion.policies.base import Decision, DecisionLog, Observation, Plan, Policy
from apportion.policies.learned import check_outcome
from apportion.spec import Agent, Pipeline, Priority

STEPS = (0.01, 0.05, 0.25, 0.5, 1.0)
"""The default shares of traffic the candidate is given, in order."""


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """One rollout decision.

    Attributes:
        kind: ``start``, ``promote``, ``hold``, ``complete`` or ``rollback``.
        share: the candidate's share of traffic after the decision.
        reason: why, in words.
        seen: scored requests so far (both sides, all steps).
        candidate: the candidate's mean outcome per 1,000 tokens at this step.
        baseline: the baseline's, likewise.
        lower: lower confidence bound of the difference (candidate minus baseline).
        upper: upper confidence bound of it.
        at: clock time of the decision.
    """

    kind: str
    share: float
    reason: str
    seen: int
    candidate: float = math.nan
    baseline: float = math.nan
    lower: float = -math.inf
    upper: float = math.inf
    at: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (infinities and NaN as ``None``)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


class _Side:
    """Running sums of one side at the current step."""

    __slots__ = ("cut", "n", "quality", "tokens", "y", "yy")

    def __init__(self) -> None:
        self.n = 0
        self.y = self.yy = self.quality = self.tokens = 0.0
        self.cut = 0

    def add(self, y: float, quality: float, tokens: int, cut: bool) -> None:
        self.n += 1
        self.y += y
        self.yy += y * y
        self.quality += quality
        self.tokens += tokens
        self.cut += cut

    def mean(self) -> float:
        return self.y / self.n if self.n else math.nan

    def var(self) -> float:
        return max(self.yy / self.n - self.mean() ** 2, 1e-12) if self.n > 1 else math.inf


def confidence_bounds(
    mean_c: float,
    var_c: float,
    n_c: int,
    mean_b: float,
    var_b: float,
    n_b: int,
    alpha: float,
    rho: float,
) -> tuple[float, float]:
    """Always-valid bounds on ``mean_c - mean_b`` (normal mixture, plug-in variances).

    With ``v = 1 / se^2`` the information about the difference, the radius is
    ``sqrt((v + r) * (log((v + r) / r) + 2 log(1 / alpha))) / v``, ``r = 1 / rho^2``:
    Robbins' mixture boundary for a Gaussian sum, with mixing scale ``rho`` (the size of
    difference the test is tuned to find soonest).
    """
    se2 = var_c / n_c + var_b / n_b
    if not math.isfinite(se2) or se2 <= 0:
        return -math.inf, math.inf
    v = 1.0 / se2
    r = 1.0 / (rho * rho)
    radius = math.sqrt((v + r) * (math.log((v + r) / r) + 2 * math.log(1 / alpha))) / v
    delta = mean_c - mean_b
    return delta - radius, delta + radius


class Rollout(Policy):
    """Route a share of traffic to ``candidate``; promote or roll back; see the module docstring.

    Args:
        candidate: the policy being rolled out (a name or an object).
        baseline: the policy in place (a name or an object).
        steps: the candidate's shares, increasing, each in (0, 1].
        min_requests: scored requests per side at a step before promotion is considered.
        guard_requests: scored requests per side before guardrails are checked.
        alpha: error level of the confidence sequence.
        rho: the scale (outcome per 1,000 tokens) the sequence is tuned to.
        max_quality_drop: rollback when the candidate's mean outcome is lower by more.
        max_critical_cut_increase: rollback when its critical-cut rate is higher by more.
        max_cost_ratio: rollback when its mean tokens exceed the baseline's times this.
        salt: mixed into the hash (a new salt draws a new sample of requests).
        on_event: called with every :class:`RolloutEvent`.
        telemetry: where decisions are written: a decision log, such as
            ``apportion.telemetry.decision_log("sqlite:///apportion.db")`` (``None``: the
            telemetry of the controller using the rollout).
        name: the rollout's name in telemetry (default ``CANDIDATE-vs-BASELINE``).
        clock: the clock of the decisions' times.

    Raises:
        PolicyConfigError: the candidate equals the baseline, a setting is out of range,
            or ``telemetry`` is no decision log.
    """

    name = "rollout"

    def __init__(
        self,
        candidate: str | Policy,
        baseline: str | Policy,
        *,
        steps: Sequence[float] = STEPS,
        min_requests: int = 50,
        guard_requests: int = 20,
        alpha: float = 0.05,
        rho: float = 0.02,
        max_quality_drop: float = 0.05,
        max_critical_cut_increase: float = 0.1,
        max_cost_ratio: float = 1.5,
        salt: str = "",
        on_event: Callable[[RolloutEvent], None] | None = None,
        telemetry: DecisionLog | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if telemetry is not None and not callable(getattr(telemetry, "record", None)):
            raise PolicyConfigError(
                "a rollout's telemetry= is a decision log, such as "
                "apportion.telemetry.decision_log(URL), not "
                f"{type(telemetry).__name__}"
            )
        if candidate is baseline or (isinstance(candidate, str) and candidate == baseline):
            raise PolicyConfigError(
                f"a rollout's candidate must differ from its baseline ({candidate!r})",
                candidate=str(candidate),
            )
        try:
            items = list(steps)
            shares = [float(s) for s in items if not isinstance(s, bool | str | bytes)]
        except (TypeError, ValueError, OverflowError):
            items, shares = [], []
        if (
            not shares
            or len(shares) != len(items)
            or any(not 0 < s <= 1 for s in shares)
            or shares != sorted(set(shares))
        ):
            raise PolicyConfigError(f"steps must increase within (0, 1], not {excerpt(steps)}")
        numbers = (alpha, rho, max_quality_drop, max_critical_cut_increase, max_cost_ratio)
        counts = (min_requests, guard_requests)
        if (
            any(isinstance(x, bool) or not isinstance(x, int | float) for x in numbers)
            or any(type(n) is not int for n in counts)
            or not 0 < alpha < 1
            or not 0 < rho < 1e9
            or min_requests < 2
            or guard_requests < 2
        ):
            raise PolicyConfigError("alpha in (0, 1), rho > 0, min/guard requests >= 2")
        if not callable(clock) or (on_event is not None and not callable(on_event)):
            raise PolicyConfigError("clock and on_event are functions")
        self.candidate = resolve_policy(candidate)
        self.baseline = resolve_policy(baseline)
        self.steps = tuple(shares)
        self.min_requests = min_requests
        self.guard_requests = guard_requests
        self.alpha = alpha
        self.rho = rho
        self.max_quality_drop = max_quality_drop
        self.max_critical_cut_increase = max_critical_cut_increase
        self.max_cost_ratio = max_cost_ratio
        self.salt = salt
        self.on_event = on_event
        self.label = name or f"{self.candidate.name}-vs-{self.baseline.name}"
        self.clock = clock
        self._log = telemetry
        self._own_log = telemetry is not None
        self._sent = 0  # events handed to the log so far
        self._next_hold = min_requests
        self.step = 0
        self.status = "running"
        self.events: list[RolloutEvent] = []
        self.seen = 0
        self.unscored = 0
        self._lock = threading.Lock()
        self._sides = {"candidate": _Side(), "baseline": _Side()}
        self._emit("start", f"candidate {self.candidate.name!r} at {shares[0]:.0%}")

    def attach_telemetry(self, log: DecisionLog) -> None:
        """Write decisions to ``log`` (a controller's), unless ``telemetry=`` was given.

        Decisions made before (the start) are written too.
        """
        if self._own_log:
            return
        with self._lock:
            self._log = log
            self._send()

    # ------------------------------------------------------------ routing

    @property
    def share(self) -> float:
        """The candidate's current share of traffic."""
        return 0.0 if self.status == "rolled_back" else self.steps[self.step]

    def bucket(self, request_id: str) -> float:
        """The request's place in [0, 1): it goes to the candidate when below the share."""
        digest = hashlib.sha256((self.salt + request_id).encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def check_pipeline(self, pipeline: Pipeline) -> None:
        """Both sides' checks: a pipeline either policy refuses is refused."""
        self.candidate.check_pipeline(pipeline)
        self.baseline.check_pipeline(pipeline)

    def _side(self, obs: Observation) -> str:
        side: str | None = obs.memo.get("rollout")
        if side is None:
            side = "candidate" if self.bucket(obs.request_id) < self.share else "baseline"
            obs.memo["rollout"] = side
        return side

    def _policy(self, obs: Observation) -> Policy:
        return self.candidate if self._side(obs) == "candidate" else self.baseline

    def plan(self, obs: Observation) -> Plan:
        """The chosen side's plan."""
        return self._policy(obs).plan(obs)

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        """The chosen side's grant."""
        return self._policy(obs).grant(obs, agent, input_tokens, output_tokens)

    def route(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> Decision:
        """The chosen side's decision (its model and prediction included)."""
        return self._policy(obs).route(obs, agent, input_tokens, output_tokens)

    def on_finish(
        self,
        obs: Observation,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        truncated: bool,
    ) -> Mapping[str, int] | None:
        """The chosen side's re-plan."""
        return self._policy(obs).on_finish(obs, grant, input_tokens, output_tokens, truncated)

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        """The chosen side's extension."""
        return self._policy(obs).extend(obs, grant, output_tokens, context_tokens)

    # ------------------------------------------------------------ measuring, deciding

    def learn(self, obs: Observation, outcome: float | None) -> None:
        """The chosen side learns; the outcome is measured and the rollout decides."""
        side = self._side(obs)
        self._policy(obs).learn(obs, outcome)
        try:
            quality = check_outcome(outcome)
        except ValueError:
            quality = None
        with self._lock:
            if quality is None:
                self.unscored += 1
                return
            tokens = obs.state.consumed
            critical = [a.name for a in obs.pipeline.agents if a.priority is Priority.CRITICAL]
            cut = any(obs.state.truncated_calls.get(name, 0) for name in critical)
            self._sides[side].add(quality * 1000 / max(tokens, 1), quality, tokens, cut)
            self.seen += 1
            if self.status == "running":
                self._decide()

    def _decide(self) -> None:
        c, b = self._sides["candidate"], self._sides["baseline"]
        if c.n < self.guard_requests or b.n < self.guard_requests:
            return
        lower, upper = confidence_bounds(
            c.mean(), c.var(), c.n, b.mean(), b.var(), b.n, self.alpha, self.rho
        )
        figures = {"candidate": c.mean(), "baseline": b.mean(), "lower": lower, "upper": upper}
        drop = b.quality / b.n - c.quality / c.n
        if drop > self.max_quality_drop:
            self._rollback(f"guardrail: quality {drop:.3f} below the baseline's", figures)
        elif c.cut / c.n - b.cut / b.n > self.max_critical_cut_increase:
            self._rollback(
                f"guardrail: critical agents cut in {c.cut / c.n:.0%} of requests "
                f"(baseline {b.cut / b.n:.0%})",
                figures,
            )
        elif (c.tokens / c.n) > self.max_cost_ratio * (b.tokens / b.n):
            self._rollback(
                f"guardrail: {c.tokens / c.n:.0f} tokens per request "
                f"(baseline {b.tokens / b.n:.0f})",
                figures,
            )
        elif upper < 0:
            self._rollback("outcome per token worse than the baseline's (confident)", figures)
        elif lower > 0 and c.n >= self.min_requests and b.n >= self.min_requests:
            if self.step + 1 < len(self.steps):
                self.step += 1
                self._sides = {"candidate": _Side(), "baseline": _Side()}
                self._emit(
                    "promote",
                    f"outcome per token better (confident): {self.share:.0%} of traffic",
                    figures,
                )
            self._next_hold = self.min_requests
            if self.step + 1 == len(self.steps) and self.share >= 1.0:
                self.status = "complete"
                self._emit("complete", "the candidate takes all traffic", figures)
        elif min(c.n, b.n) >= self._next_hold:
            self._next_hold *= 2
            self._emit(
                "hold",
                f"not confident yet at {self.share:.0%}: difference in "
                f"[{lower:.4f}, {upper:.4f}] after {c.n} + {b.n} requests",
                figures,
            )

    def _rollback(self, reason: str, figures: Mapping[str, float]) -> None:
        self.status = "rolled_back"
        self._emit("rollback", reason, figures)

    def _emit(self, kind: str, reason: str, figures: Mapping[str, float] | None = None) -> None:
        event = RolloutEvent(
            kind, self.share, reason, self.seen, **(figures or {}), at=float(self.clock())
        )
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        self._send()

    def _send(self) -> None:
        """Hand the decisions not yet sent to the log (which never raises)."""
        if self._log is None:
            return
        for event in self.events[self._sent :]:
            self._log.record(self, event)
        self._sent = len(self.events)

    def summary(self) -> dict[str, Any]:
        """Status, share, requests seen and the decisions so far."""
        return {
            "candidate": self.candidate.name,
            "baseline": self.baseline.name,
            "status": self.status,
            "share": self.share,
            "seen": self.seen,
            "unscored": self.unscored,
            "events": [e.to_dict() for e in self.events],
        }
