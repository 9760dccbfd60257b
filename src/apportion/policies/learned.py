"""``learned``: allocation parameters chosen per class of request, learned from outcomes.

Rule: every request is put in a class by its predicted pressure, the sum of the predicted
needs of its agents (from its features, by the need model of ``estimate``) over its
ceiling, binned at :data:`PRESSURE_BINS`. For each class, a contextual bandit chooses one
of a few *arms*, parameter settings of the predicting machinery (:data:`ARMS`): the safety
margin, the priority weights used when the pool is short, whether an agent holds back room
for every agent still to run or only for those of its own priority or above (the
``estimate`` or the ``elastic`` behaviour), and how far a squeezed agent may eat into the
others' needs. The chosen arm decides the request's grants and extensions. When the
request closes with an outcome score ``Q`` in [0, 1], the arm's reward in that class is
``Q - price * consumed / ceiling``; the arm for the next request of the class is drawn by
Thompson sampling from Normal posteriors of the mean reward (each class's posterior is
shrunk toward the arm's mean over all classes, so a new class starts from what the others
learned), their spread scaled by ``explore`` (0.5 by default: tempered sampling, which
explores less; on 24 random workloads the policy had never seen, 0.5 raised the mean
final quality over the oracle's by about 0.006 against 1.0, consistently over three sets
of eight).

Safety: exploration never leaves the ceiling (the ledger enforces it for every grant), and
every arm holds back, for each critical agent that has not started, its predicted need
(no arm lets a standard or peripheral agent draw it, beyond the bounded squeeze of the
predicting machinery): critical agents are never starved to explore.

Bad outcomes are not learned from: a request closed without a score is counted in
:attr:`LearnedPolicy.unscored`; a score outside [0, 1] or NaN is refused and counted in
:attr:`LearnedPolicy.refused`. The need model still learns from the request's usage.

State: the posteriors are sufficient statistics (count, sum, sum of squares of rewards per
class and arm), which add up, so many workers learn together: with ``store=``, each worker
folds its new statistics into the store's copy every ``sync_every`` scored requests by
compare-and-set (:meth:`~apportion.stores.base.Store.get_state` / ``put_state``, memory or
Redis) and continues from the sum. :meth:`LearnedPolicy.state` exports them as JSON bytes;
:meth:`LearnedPolicy.load_state` warm-starts from them; a state of another format version
is refused with :class:`StateVersionError`.

Warm start (:meth:`LearnedPolicy.warm_start`): from the result of a learning run
(``apportion learn --json`` holds the state under ``"state"``, as does
:func:`~apportion.sim.learn.run_learning`), or a saved state, the arms' statistics are
added, scaled by ``weight`` (a simulated run may be worth less than live traffic: with
``weight=0.1``, ten simulated requests count as one). From a telemetry database, only the
need model is warmed (every finished call of the pipeline's requests, with their
features): the arm each request ran under is not in the telemetry, so no arm statistics
can honestly be drawn from it.

Libraries weighed: MABWiser (contextual bandits incl. Thompson sampling; its learners are
pickled objects that cannot be merged across workers, and it adds pandas/scikit-learn),
Vowpal Wabbit (contextual bandits with ``--cb_explore_adf``; a heavy native dependency whose
model files cannot be merged by compare-and-set either), scikit-learn (no bandits). The
bandit here is a dozen lines of NumPy over additive sufficient statistics, which is exactly
what makes shared state across processes a compare-and-set of a small JSON document, so it
is written by hand with NumPy only (already a dependency).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apportion.errors import ApportionError, PolicyConfigError
from apportion.policies.base import Observation, Plan
from apportion.policies.predicting import PredictingPolicy, _fit
from apportion.spec import Agent, Pipeline, Priority

if TYPE_CHECKING:
    from apportion.stores.base import Store

STATE_FORMAT = "apportion.learned"
STATE_VERSION = 1
"""Version of the exported state; a state of another version is refused."""

PRESSURE_BINS = (0.6, 0.8, 0.95, 1.1, 1.3, 1.6)
"""Class boundaries on predicted needs / ceiling."""

_PRIOR_COUNT = 2.0
_PRIOR_SD = 0.3
_MIN_SD = 0.02


class StateVersionError(ApportionError, ValueError):
    """A learned policy's state is of another format or version.

    Attributes:
        version: the state's version (``None`` when it has none).
        expected: the version this code reads.
    """

    version: Any
    expected: int


@dataclass(frozen=True, slots=True)
class Arm:
    """One setting of the allocation parameters.

    Attributes:
        name: a short name (the key in the stored state).
        margin: safety margin on predicted output (0.5 = 50% more).
        weights: priority weights ``(peripheral, standard, critical)`` when the pool is short.
        by_rank: an agent holds back room only for agents of its priority or above, and a
            critical agent draws first (``elastic``); otherwise for every agent (``estimate``).
        room: up to this part of what it wants, a squeezed agent may eat into others' needs.
    """

    name: str
    margin: float
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    by_rank: bool = False
    room: float = 0.5


ARMS: tuple[Arm, ...] = (
    Arm("flat-m0.2", 0.2),
    Arm("flat-m0.5", 0.5),
    Arm("flat-m0.5-r0.8", 0.5, room=0.8),
    Arm("flat-m1.0", 1.0),
    Arm("rank-m0.5", 0.5, (1.0, 2.0, 4.0), True),
    Arm("rank-m1.0-r0.3", 1.0, (1.0, 2.0, 4.0), True, 0.3),
    Arm("steep-m0.5", 0.5, (1.0, 3.0, 9.0), True),
    Arm("steep-m1.0-r0.3", 1.0, (1.0, 3.0, 9.0), True, 0.3),
)
"""The default arms: the ``estimate`` and ``elastic`` behaviours at several margins."""


def check_outcome(outcome: float | None) -> float | None:
    """The outcome as a float if it can be learned from, else ``None``.

    Raises:
        ValueError: the outcome is not a number in [0, 1] (NaN included).
    """
    if outcome is None:
        return None
    if isinstance(outcome, bool) or not isinstance(outcome, int | float):
        raise ValueError(f"an outcome score is a number in [0, 1], not {outcome!r}")
    value = float(outcome)
    if not (0.0 <= value <= 1.0):  # NaN fails too
        raise ValueError(f"an outcome score is a number in [0, 1], not {outcome!r}")
    return value


class _Stats:
    """Count, sum and sum of squares of rewards per (class, arm)."""

    def __init__(self, classes: int, arms: int) -> None:
        self.table = np.zeros((classes, arms, 3))

    def add(self, cls: int, arm: int, reward: float) -> None:
        self.table[cls, arm] += (1.0, reward, reward * reward)


class LearnedPolicy(PredictingPolicy):
    """Thompson sampling over allocation arms per pressure class; see the module docstring.

    Args:
        arms: the arms to choose among (at least one, distinct names).
        price: the price of spending the whole ceiling, in outcome units.
        store: a store to share the learned state with other workers (``None``: local).
        key: the state's key in the store.
        sync_every: scored requests between two merges with the store.
        seed: seed of the sampler (``None``: fresh entropy).
        explore: scale of the posteriors' spread when drawing (1: plain Thompson sampling).

    Attributes:
        unscored: requests closed without a score (not learned from).
        refused: requests whose score was outside [0, 1] or NaN (not learned from).
        scored: requests learned from.
    """

    name = "learned"

    def __init__(
        self,
        arms: Sequence[Arm] = ARMS,
        *,
        price: float = 0.02,
        store: Store | None = None,
        key: str = "learned",
        sync_every: int = 32,
        seed: int | None = None,
        explore: float = 0.5,
    ) -> None:
        super().__init__(margin=0.0)
        if not arms or len({a.name for a in arms}) != len(arms):
            raise PolicyConfigError("a learned policy needs arms with distinct names")
        if not (math.isfinite(price) and price >= 0):
            raise PolicyConfigError(f"price must be a number >= 0, not {price!r}", price=price)
        if sync_every < 1:
            raise PolicyConfigError(f"sync_every must be at least 1, not {sync_every!r}")
        if not (math.isfinite(explore) and explore > 0):
            raise PolicyConfigError(f"explore must be a number > 0, not {explore!r}")
        self.explore = float(explore)
        self.arms = tuple(arms)
        self.price = float(price)
        self.store = store
        self.key = key
        self.sync_every = sync_every
        self.unscored = 0
        self.refused = 0
        self.scored = 0
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        classes = len(PRESSURE_BINS) + 1
        self._stats = _Stats(classes, len(self.arms))  # everything known (store included)
        self._delta = _Stats(classes, len(self.arms))  # learned here since the last merge
        self._version = 0

    # ------------------------------------------------------------ choosing an arm

    def classify(self, obs: Observation) -> int:
        """The request's class: its predicted pressure, binned."""
        pressure = sum(self.predicted_needs(obs).values()) / max(obs.ceiling, 1)
        return int(np.searchsorted(PRESSURE_BINS, pressure, side="right"))

    def choose(self, cls: int) -> int:
        """Draw an arm for a request of class ``cls`` (Thompson sampling)."""
        with self._lock:
            table = self._stats.table
            pooled = table.sum(axis=0)
            total = pooled.sum(axis=0)
            overall = total[1] / total[0] if total[0] else 0.5
            draws = np.empty(len(self.arms))
            for a in range(len(self.arms)):
                n_all, s_all, ss_all = pooled[a]
                prior = s_all / n_all if n_all else overall
                n, s, _ = table[cls, a]
                count = n + _PRIOR_COUNT
                mean = (s + _PRIOR_COUNT * prior) / count
                if n_all >= 2:
                    var = max(ss_all / n_all - (s_all / n_all) ** 2, _MIN_SD**2)
                    sd = math.sqrt(var / count)
                else:
                    sd = _PRIOR_SD
                draws[a] = self._rng.normal(mean, sd * self.explore)
            return int(np.argmax(draws))

    def arm_of(self, obs: Observation) -> Arm:
        """The arm chosen for this request (chosen when it opens)."""
        index: int | None = obs.memo.get("arm")
        if index is None:
            cls = obs.memo["class"] = self.classify(obs)
            index = obs.memo["arm"] = self.choose(cls)
        return self.arms[index]

    # ------------------------------------------------------------ the arm's rule

    def plan(self, obs: Observation) -> Plan:
        """Choose the request's arm, and plan the predicted needs (scaled to the ceiling)."""
        self.arm_of(obs)
        return Plan(allocation=_fit(self.predicted_needs(obs), obs.ceiling))

    def call_output(self, obs: Observation, agent: Agent, predicted: float) -> float:
        """Predicted output times the arm's margin and the model's spread."""
        out = predicted * (1 + self.arm_of(obs).margin) * self._model(obs).spread(agent)
        return max(out, float(agent.min_output))

    def held_back(self, obs: Observation, agent: Agent) -> tuple[int, float]:
        """What ``agent`` leaves room for, on the arm's terms (see :class:`Arm`)."""
        arm = self.arm_of(obs)
        floor: int | None = 0
        if arm.by_rank:
            critical = agent.priority is Priority.CRITICAL
            floor = None if critical else agent.priority.rank
        return self._held_back(obs, agent, floor, arm.weights)

    def budget(self, obs: Observation, agent: Agent, want: int) -> int:
        """The predicting budget rule, with the arm's weights and squeeze room."""
        arm = self.arm_of(obs)
        available = obs.state.available_for(agent.name)
        keep, others = self.held_back(obs, agent)
        room = available - keep
        if room >= want:
            return want
        mine = want * arm.weights[agent.priority.rank]
        weighted = mine + others
        share = int(available * mine / weighted) if weighted else available
        return min(want, available, max(room, min(share, int(want * arm.room))))

    # ------------------------------------------------------------ learning

    def learn(self, obs: Observation, outcome: float | None) -> None:
        """Learn needs from the usage, and the arm's reward from the outcome (if valid)."""
        super().learn(obs, outcome)
        try:
            value = check_outcome(outcome)
        except ValueError:
            with self._lock:
                self.refused += 1
            return
        if value is None:
            with self._lock:
                self.unscored += 1
            return
        index: int | None = obs.memo.get("arm")
        if index is None:  # closed before it planned (never happens with the controller)
            return
        reward = value - self.price * obs.state.consumed / max(obs.ceiling, 1)
        self.record(obs.memo["class"], index, reward)

    def record(self, cls: int, arm: int, reward: float) -> None:
        """Fold one reward in (and merge with the store when due)."""
        with self._lock:
            self._stats.add(cls, arm, reward)
            self._delta.add(cls, arm, reward)
            self.scored += 1
            due = self.store is not None and self.scored % self.sync_every == 0
        if due:
            self.sync()

    def sync(self) -> None:
        """Merge what this worker learned into the store's state, and adopt the sum."""
        store = self.store
        if store is None:
            return
        for _ in range(64):
            got = store.get_state(self.key)
            version, remote = (0, None) if got is None else (got[0], self._decode(got[1]))
            with self._lock:
                delta = self._delta.table.copy()
            merged = delta if remote is None else remote + delta
            if store.put_state(self.key, self._encode(merged), version) is not None:
                with self._lock:
                    self._delta.table -= delta
                    self._stats.table = merged + self._delta.table
                    self._version = version + 1
                return
        raise ApportionError(f"could not merge learned state {self.key!r}: too much contention")

    # ------------------------------------------------------------ state

    def state(self) -> bytes:
        """Everything learned (the statistics), as JSON bytes."""
        with self._lock:
            return self._encode(self._stats.table)

    def load_state(self, data: bytes | str) -> None:
        """Warm-start: add a saved state's statistics to what is known.

        Raises:
            StateVersionError: the state is of another format or version.
            PolicyConfigError: the state's arms are not this policy's.
        """
        table = self._decode(data)
        with self._lock:
            self._stats.table += table
            self._delta.table += table  # shared with the store at the next merge

    def warm_start(
        self,
        source: Mapping[str, Any] | bytes | Path | str | Any,
        *,
        pipeline: Pipeline | None = None,
        weight: float = 1.0,
    ) -> dict[str, int]:
        """Warm-start from a learning run, a saved state or telemetry (see the module docstring).

        Args:
            source: a learning run's result (a mapping with ``"state"``); a state as bytes
                or the path of a state file; or telemetry: a database URL (or ``.db``
                path given as a string) or a loaded :class:`~apportion.telemetry.sql.Dataset`.
            pipeline: the pipeline whose need model telemetry warms (telemetry only).
            weight: how much each learned request counts (states and results only).

        Returns:
            ``{"requests": ..., "calls": ...}``: requests added to the arms' statistics
            (weighted), and calls folded into the need model.

        Raises:
            StateVersionError: the state is of another format or version.
            PolicyConfigError: the state's arms are not this policy's, ``weight`` is not
                positive, or telemetry was given without a pipeline.
            ValueError: a result without a state.
        """
        if not (math.isfinite(weight) and weight > 0):
            raise PolicyConfigError(f"weight must be a number > 0, not {weight!r}")
        if isinstance(source, Mapping):
            if "state" not in source:
                raise ValueError("this result holds no learned state (rerun apportion learn)")
            data: bytes | str = json.dumps(source["state"])
        elif isinstance(source, bytes):
            data = source
        elif isinstance(source, Path):
            data = source.read_bytes()
        else:
            return self._warm_from_telemetry(source, pipeline)
        table = self._decode(data) * weight
        with self._lock:
            self._stats.table += table
            self._delta.table += table
        return {"requests": round(float(table[:, :, 0].sum())), "calls": 0}

    def _warm_from_telemetry(self, source: Any, pipeline: Pipeline | None) -> dict[str, int]:
        if pipeline is None:
            raise PolicyConfigError("warming from telemetry needs the pipeline (pipeline=)")
        if isinstance(source, str):
            from apportion.telemetry.sql import open_database

            with open_database(source) as db:
                source = db.load(pipeline=pipeline.name)
        names = {a.name for a in pipeline.agents}
        by_request: dict[str, list[tuple[str, int, int, bool]]] = {}
        for call in source.calls:
            if (
                call.settled == "finish"
                and call.agent in names
                and call.used_input is not None
                and call.used_output is not None
            ):
                by_request.setdefault(call.request_id, []).append(
                    (call.agent, call.used_input, call.used_output, bool(call.truncated))
                )
        model = self.needs(pipeline)
        calls = 0
        for request_id, settled in by_request.items():
            record = source.requests.get(request_id)
            if record is None or record.pipeline != pipeline.name:
                continue
            model.observe(record.features, settled)
            calls += len(settled)
        return {"requests": 0, "calls": calls}

    def _encode(self, table: np.ndarray) -> bytes:
        stats = {
            str(cls): {arm.name: table[cls, a].tolist() for a, arm in enumerate(self.arms)}
            for cls in range(table.shape[0])
            if table[cls, :, 0].any()
        }
        document = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "bins": list(PRESSURE_BINS),
            "arms": [arm.name for arm in self.arms],
            "stats": stats,
        }
        return json.dumps(document, sort_keys=True).encode("utf-8")

    def _decode(self, data: bytes | str) -> np.ndarray:
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise StateVersionError(
                f"not a learned policy state: {exc}", version=None, expected=STATE_VERSION
            ) from None
        if not isinstance(document, Mapping) or document.get("format") != STATE_FORMAT:
            raise StateVersionError(
                "not a learned policy state", version=None, expected=STATE_VERSION
            )
        version = document.get("version")
        if version != STATE_VERSION or document.get("bins") != list(PRESSURE_BINS):
            raise StateVersionError(
                f"learned state version {version!r} is incompatible with version "
                f"{STATE_VERSION} (this code)",
                version=version,
                expected=STATE_VERSION,
            )
        names = [arm.name for arm in self.arms]
        if sorted(document.get("arms", [])) != sorted(names):
            raise PolicyConfigError(
                f"the state's arms {document.get('arms')} are not this policy's {names}"
            )
        table = np.zeros_like(self._stats.table)
        for cls, row in document["stats"].items():
            for name, values in row.items():
                table[int(cls), names.index(name)] = values
        return table

    def summary(self) -> dict[str, Any]:
        """Per class, the requests learned from and the arm with the best mean reward."""
        with self._lock:
            table = self._stats.table.copy()
        classes = {}
        for cls in range(table.shape[0]):
            counts = table[cls, :, 0]
            if not counts.any():
                continue
            means = np.where(counts > 0, table[cls, :, 1] / np.maximum(counts, 1), -np.inf)
            classes[str(cls)] = {
                "requests": int(counts.sum()),
                "best_arm": self.arms[int(np.argmax(means))].name,
            }
        return {
            "scored": self.scored,
            "unscored": self.unscored,
            "refused": self.refused,
            "classes": classes,
        }
