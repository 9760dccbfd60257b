"""Predicting what an agent will need, from request features and the input in hand.

:class:`NeedModel` keeps, per agent, a ridge regression of output tokens on the request's
features and the call's input tokens, and of input tokens on the features (for agents not
yet started, whose input is not in hand).

A prior, not a switch: what is known before any history counts as a few observations, so
with ``n`` observations a prediction is ``prior ** (w / (w + n)) * learned ** (n / (w + n))``
(a weighted geometric mean: token counts vary by factors, and a prior ten times too large
must not keep predictions far off for long): the prior alone at first, the history
taking over as it accumulates. The prior is what the pipeline
declares for the agent (its ``estimator``, else its ``typical_output`` / ``typical_input``;
``w`` is :data:`PRIOR_WEIGHT`), else what the policy passes in, a share of the request's
ceiling by the agent's kind (a vaguer guess: ``w`` is :data:`VAGUE_PRIOR_WEIGHT`).

Observations are buffered and folded in by batches (every call while an agent has fewer
than 64 observations, then every quarter of what it has seen, between 32 and 1024 calls),
so settling a call costs an append, and refits cost a vanishing share of the calls.
Until an agent has three observations per regression weight, its prediction is the mean
of what it was seen to use (a regression on a handful of points swings wildly). A call
whose output was cut only tells a lower bound of the need; it is fitted as
``max(1.5 * observed, prediction)`` so that cut agents are predicted to need more. The
spread of past errors gives a multiplicative margin (the 90th percentile of
``observed / predicted`` over the last 256 uncut calls, at least 1; until eight are known,
1.5, or 1 for an agent that declares an estimator, or :data:`TYPICAL_SPREAD` for one that
declares a typical output), which policies add to their margin.
:meth:`NeedModel.errors` gives the whole distribution of the errors, cut calls counted
as censored (their need is above what they wrote).
Thread-safe: one lock around every update and refit.

State: :meth:`NeedModel.document` exports everything learned (statistics, weights, error
samples, buffered calls) as a JSON-ready mapping and :meth:`NeedModel.from_document`
restores it exactly, checking every field (:class:`StateProblem` names the one that is
wrong). Workers share a model through a store: the statistics add up and the error
samples concatenate, so :meth:`NeedModel.merged` folds what one worker learned since its
last merge (:meth:`NeedModel.delta`) into the store's copy.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from operator import mul
from typing import Any

import numpy as np

from apportion.spec import Agent, Pipeline

_EARLY = 16
_BATCH = (32, 1024)
_RIDGE = 1e-3
_RATIOS_KEPT = 256
_CUT_FACTOR = 1.5
_PRIOR_SPREAD = 1.5
_POINTS_PER_WEIGHT = 3
PRIOR_WEIGHT = 8.0
"""How many observations a declared prior (an ``estimator``, a typical size) counts for."""
VAGUE_PRIOR_WEIGHT = 4.0
"""How many observations the caller's prior (a share of the ceiling) counts for."""
TYPICAL_SPREAD = 2.0
"""The spread of an agent that declares a ``typical_output``, until its errors are known."""
LEAST_SHARE = 0.25
"""A fitted prediction is never below this share of the mean of what was observed."""


class StateProblem(ValueError):
    """A need-model document is malformed; ``str()`` names the field and the problem."""


class _Regression:
    """Ridge regression ``y ~ w . x`` over accumulated sufficient statistics."""

    __slots__ = (
        "count",
        "d_count",
        "d_ratios",
        "d_recent",
        "d_xtx",
        "d_xty",
        "errors",
        "least",
        "pending",
        "ratios",
        "recent",
        "recent_cut",
        "spread",
        "weights",
        "xtx",
        "xty",
    )

    def __init__(self) -> None:
        self.xtx: np.ndarray | None = None
        self.xty: np.ndarray | None = None
        self.count = 0
        self.pending: list[tuple[tuple[float, ...], float, bool]] = []
        self.weights: tuple[float, ...] | None = None
        self.least = 1.0
        self.ratios = np.empty(0)
        self.recent = np.empty(0)  # the last calls' ratios, cut or not
        self.recent_cut = np.empty(0, dtype=bool)
        self.errors = np.empty(0)
        self.spread = _PRIOR_SPREAD
        # learned here since the last merge with a store: added statistics, new samples
        self.d_xtx: np.ndarray | None = None
        self.d_xty: np.ndarray | None = None
        self.d_count = 0
        self.d_ratios = 0
        self.d_recent = 0

    def predict(self, x: tuple[float, ...]) -> float | None:
        weights = self.weights
        if weights is None:
            return None
        return max(self.least, float(sum(map(mul, weights, x))))

    def due(self) -> bool:
        if self.count < _EARLY * 4:
            return True
        low, high = _BATCH
        return len(self.pending) >= min(high, max(low, self.count // 4))

    def fold(self) -> None:
        """Fold the pending observations in and refit."""
        rows = np.array([p[0] for p in self.pending], dtype=float)
        y = np.array([p[1] for p in self.pending], dtype=float)
        cut = np.array([p[2] for p in self.pending], dtype=bool)
        self.pending.clear()
        if self.weights is not None:
            guess = np.maximum(rows @ np.asarray(self.weights), self.least)
            self.ratios = np.concatenate([self.ratios, (y / guess)[~cut]])[-_RATIOS_KEPT:]
            self.recent = np.concatenate([self.recent, y / guess])[-_RATIOS_KEPT:]
            self.recent_cut = np.concatenate([self.recent_cut, cut])[-_RATIOS_KEPT:]
            self.d_ratios += int((~cut).sum())
            self.d_recent += len(y)
            self.errors = _with_censored(
                self.recent[~self.recent_cut], self.recent[self.recent_cut]
            )
            y = np.where(cut, np.maximum(_CUT_FACTOR * y, guess), y)
        else:
            y = np.where(cut, _CUT_FACTOR * y, y)
        added_xtx, added_xty = rows.T @ rows, rows.T @ y
        self.xtx = added_xtx.copy() if self.xtx is None else self.xtx + added_xtx
        self.xty = added_xty.copy() if self.xty is None else self.xty + added_xty
        self.d_xtx = added_xtx if self.d_xtx is None else self.d_xtx + added_xtx
        self.d_xty = added_xty if self.d_xty is None else self.d_xty + added_xty
        self.count += len(rows)
        self.d_count += len(rows)
        self.refit()
        if len(self.ratios) >= 8:
            self.spread = max(1.0, float(quantiles(self.ratios, 0.9)))

    def refit(self) -> None:
        """The weights from the statistics: the mean while points are few, else ridge.

        A prediction is never below :data:`LEAST_SHARE` of the mean observed: a linear fit
        taken to features far from the usual ones once predicted 1 to 6 tokens for a
        record that writes 90 to 600 (generated tuning workloads, seeds 1 to 60: the rule
        policies gained 0.003 of the oracle; a half of the mean gained as much and
        overrode more of the predictions that were right).
        """
        if self.xtx is None or self.xty is None or self.count == 0:
            self.weights = None
            self.least = 1.0
            return
        width = len(self.xty)
        self.least = self._least()
        if self.count < _POINTS_PER_WEIGHT * width:  # too few points: the mean
            self.weights = (self._mean(), *([0.0] * (width - 1)))
        else:
            scale = np.maximum(np.sqrt(np.diag(self.xtx)), 1e-9)
            normed = self.xtx / np.outer(scale, scale) + _RIDGE * np.eye(width)
            solved = np.linalg.solve(normed, self.xty / scale) / scale
            self.weights = tuple(float(w) for w in solved)

    def _mean(self) -> float:
        """The mean of the observed values (``x[0]`` is 1)."""
        if self.xtx is None or self.xty is None or not self.xtx[0, 0]:
            return 0.0
        return float(self.xty[0] / self.xtx[0, 0])

    def _least(self) -> float:
        """The least a prediction may be: :data:`LEAST_SHARE` of the mean, at least 1."""
        return max(1.0, LEAST_SHARE * self._mean())

    def document(self) -> dict[str, Any]:
        """Everything this regression knows, JSON-ready (see :meth:`from_document`)."""
        return {
            "count": self.count,
            "xtx": None if self.xtx is None else self.xtx.tolist(),
            "xty": None if self.xty is None else self.xty.tolist(),
            "weights": None if self.weights is None else list(self.weights),
            "ratios": self.ratios.tolist(),
            "recent": self.recent.tolist(),
            "recent_cut": self.recent_cut.tolist(),
            "spread": self.spread,
            "pending": [[list(row), y, cut] for row, y, cut in self.pending],
        }

    @classmethod
    def from_document(cls, document: object, width: int, where: str) -> _Regression:
        """A regression restored from :meth:`document`, every field checked.

        Raises:
            StateProblem: a field is missing or malformed (the message names it).
        """
        fields = _mapping(document, where)
        model = cls()
        model.count = _natural(fields.get("count"), f"{where}.count")
        if model.count:
            model.xtx = _array(fields.get("xtx"), (width, width), f"{where}.xtx")
            model.xty = _array(fields.get("xty"), (width,), f"{where}.xty")
            weights = _array(fields.get("weights"), (width,), f"{where}.weights")
            model.weights = tuple(float(w) for w in weights)
            model.least = model._least()
        elif any(fields.get(k) is not None for k in ("xtx", "xty", "weights")):
            raise StateProblem(f"{where}: statistics without observations (count is 0)")
        model.ratios = _array(fields.get("ratios"), None, f"{where}.ratios")
        model.recent = _array(fields.get("recent"), None, f"{where}.recent")
        cuts = fields.get("recent_cut")
        if not isinstance(cuts, list) or not all(isinstance(c, bool) for c in cuts):
            raise StateProblem(f"{where}.recent_cut: expected a list of true/false")
        if len(cuts) != len(model.recent):
            raise StateProblem(f"{where}.recent_cut: not as long as {where}.recent")
        model.recent_cut = np.array(cuts, dtype=bool)
        if len(model.ratios) > _RATIOS_KEPT or len(model.recent) > _RATIOS_KEPT:
            raise StateProblem(f"{where}: more than {_RATIOS_KEPT} error samples")
        model.spread = _finite(fields.get("spread"), f"{where}.spread")
        if model.spread < 1.0:
            raise StateProblem(f"{where}.spread: below 1 ({model.spread!r})")
        pending = fields.get("pending")
        if not isinstance(pending, list):
            raise StateProblem(f"{where}.pending: expected a list")
        for i, item in enumerate(pending):
            at = f"{where}.pending[{i}]"
            if not isinstance(item, list) or len(item) != 3 or not isinstance(item[2], bool):
                raise StateProblem(f"{at}: expected [row, tokens, cut]")
            row = _array(item[0], (width,), f"{at}[0]")
            tokens = _finite(item[1], f"{at}[1]")
            model.pending.append((tuple(float(x) for x in row), tokens, item[2]))
        if model.weights is not None:
            model.errors = _with_censored(
                model.recent[~model.recent_cut], model.recent[model.recent_cut]
            )
        return model

    def delta(self) -> dict[str, Any]:
        """What this regression learned since its last merge, JSON-ready."""
        new_ratios = self.ratios[len(self.ratios) - min(self.d_ratios, len(self.ratios)) :]
        recent_new = min(self.d_recent, len(self.recent))
        return {
            "count": self.d_count,
            "xtx": None if self.d_xtx is None else self.d_xtx.tolist(),
            "xty": None if self.d_xty is None else self.d_xty.tolist(),
            "ratios": new_ratios.tolist(),
            "recent": self.recent[len(self.recent) - recent_new :].tolist(),
            "recent_cut": self.recent_cut[len(self.recent_cut) - recent_new :].tolist(),
        }

    def forget_delta(self) -> None:
        """Everything learned here is now in the store's copy."""
        self.d_xtx = self.d_xty = None
        self.d_count = self.d_ratios = self.d_recent = 0

    def count_all_as_delta(self) -> None:
        """Nothing of this regression is in a store yet: all of it is to be merged."""
        self.d_xtx = None if self.xtx is None else self.xtx.copy()
        self.d_xty = None if self.xty is None else self.xty.copy()
        self.d_count = self.count
        self.d_ratios = len(self.ratios)
        self.d_recent = len(self.recent)

    def plus(self, delta: Mapping[str, Any]) -> _Regression:
        """A copy of this regression with another worker's ``delta`` added, refitted."""
        merged = _Regression()
        merged.count = self.count + int(delta["count"])
        merged.xtx = _add(self.xtx, delta["xtx"])
        merged.xty = _add(self.xty, delta["xty"])
        merged.ratios = np.concatenate([self.ratios, np.asarray(delta["ratios"], dtype=float)])[
            -_RATIOS_KEPT:
        ]
        merged.recent = np.concatenate([self.recent, np.asarray(delta["recent"], dtype=float)])[
            -_RATIOS_KEPT:
        ]
        merged.recent_cut = np.concatenate(
            [self.recent_cut, np.asarray(delta["recent_cut"], dtype=bool)]
        )[-_RATIOS_KEPT:]
        merged.refit()
        if merged.weights is not None:
            merged.errors = _with_censored(
                merged.recent[~merged.recent_cut], merged.recent[merged.recent_cut]
            )
        merged.spread = (
            max(1.0, float(quantiles(merged.ratios, 0.9)))
            if len(merged.ratios) >= 8
            else _PRIOR_SPREAD
        )
        return merged


class NeedModel:
    """Per-agent predictions of input and output tokens, learned online.

    Args:
        pipeline: the pipeline whose agents are predicted.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self.agents: tuple[str, ...] = pipeline.names
        self._lock = threading.Lock()
        self._features: tuple[str, ...] | None = None
        self._out: dict[str, _Regression] = {a.name: _Regression() for a in pipeline.agents}
        self._in: dict[str, _Regression] = {a.name: _Regression() for a in pipeline.agents}
        self._version = 0

    @property
    def version(self) -> int:
        """How many times the predictions may have changed (calls buffered, folded, merged).

        What the model predicts is the same while this stays: a memo of its answers is
        good until it moves.
        """
        return self._version

    def row(self, features: Mapping[str, float]) -> tuple[float, ...]:
        """The regression row of a request's features (compute once per request)."""
        names = self._features or ()
        return (1.0, *[float(features.get(n, 0.0)) for n in names])

    def _ready(self, model: _Regression) -> _Regression:
        if model.pending and model.due():
            with self._lock:
                if model.pending and model.due():
                    model.fold()
                    self._version += 1
        return model

    def seen(self, agent: Agent) -> int:
        """Calls of ``agent`` observed so far (folded in or buffered)."""
        model = self._out[agent.name]
        return model.count + len(model.pending)

    def output(
        self,
        agent: Agent,
        features: Mapping[str, float],
        row: tuple[float, ...],
        input_tokens: float | None,
        prior: float | None = None,
    ) -> float | None:
        """Expected output tokens of one call, or ``None`` when nothing is known yet.

        The history is blended with a prior (module docstring): the agent's ``estimator``,
        else its ``typical_output``, else ``prior``.

        Args:
            agent: the agent.
            features: the request's features.
            row: ``row(features)``.
            input_tokens: the call's input (counted, or predicted).
            prior: what the caller expects when the agent declares nothing.
        """
        model = self._ready(self._out[agent.name])
        learned = None
        if model.weights is not None and len(row) + 1 == len(model.weights):
            learned = model.predict((*row, float(input_tokens or 0)))
        if agent.estimator is not None:
            declared = max(1.0, float(agent.estimator(features, round(input_tokens or 0))))
            return _blend(declared, PRIOR_WEIGHT, learned, model.count)
        if agent.typical_output is not None:
            return _blend(float(agent.typical_output), PRIOR_WEIGHT, learned, model.count)
        return _blend(prior, VAGUE_PRIOR_WEIGHT, learned, model.count)

    def input(
        self, agent: Agent, row: tuple[float, ...], prior: float | None = None
    ) -> float | None:
        """Expected input tokens of an agent not yet started, or ``None`` when unknown.

        The history is blended with a prior: the agent's ``typical_input``, else ``prior``.
        """
        model = self._ready(self._in[agent.name])
        learned = None
        if model.weights is not None and len(row) == len(model.weights):
            learned = model.predict(row)
        if agent.typical_input is not None:
            return _blend(float(agent.typical_input), PRIOR_WEIGHT, learned, model.count)
        return _blend(prior, VAGUE_PRIOR_WEIGHT, learned, model.count)

    def input_errors(self, agent: Agent) -> np.ndarray:
        """Samples of input / predicted input, as :meth:`errors` gives them for outputs."""
        return self._in[agent.name].errors

    def spread(self, agent: Agent) -> float:
        """The 90th percentile of observed/predicted output so far (at least 1).

        Before eight errors are known: 1.5; 1 when the agent declares an estimator (the
        user's own estimate, to which policies add their margin); :data:`TYPICAL_SPREAD`
        when it declares a ``typical_output`` (a typical answer is a median: about half
        are longer).
        """
        model = self._out[agent.name]
        if len(model.ratios) < 8:
            if agent.estimator is not None:
                return 1.0
            if agent.typical_output is not None:
                return TYPICAL_SPREAD
        return model.spread

    def knows_errors(self, agent: Agent) -> bool:
        """Whether the spread of the agent's output errors is known (eight uncut calls)."""
        return len(self._out[agent.name].ratios) >= 8

    def errors(self, agent: Agent) -> np.ndarray:
        """Samples of need / predicted output, cut calls included (see :func:`_with_censored`).

        Empty until the agent has eight uncut calls after its first prediction.
        """
        return self._out[agent.name].errors

    def observe(
        self,
        features: Mapping[str, float],
        calls: Iterable[tuple[str, int, int, bool]],
    ) -> None:
        """Buffer the settled calls of one request; they are folded in by batches.

        Args:
            features: the request's features.
            calls: ``(agent, input_tokens, output_tokens, truncated)`` per settled call.
        """
        with self._lock:
            if self._features is None:
                self._features = tuple(sorted(k for k, v in features.items() if _is_number(v)))
            row = self.row(features)
            for agent, input_tokens, output_tokens, truncated in calls:
                self._out[agent].pending.append(
                    ((*row, float(input_tokens)), float(output_tokens), truncated)
                )
                self._in[agent].pending.append((row, float(input_tokens), False))
            self._version += 1

    # ------------------------------------------------------------ state

    def _regressions(self) -> Iterable[tuple[str, str, _Regression]]:
        for part, models in (("output", self._out), ("input", self._in)):
            for name, model in models.items():
                yield part, name, model

    def document(self) -> dict[str, Any]:
        """Everything learned, JSON-ready; :meth:`from_document` restores it exactly."""
        with self._lock:
            return {
                "agents": list(self.agents),
                "features": None if self._features is None else list(self._features),
                "output": {name: m.document() for name, m in self._out.items()},
                "input": {name: m.document() for name, m in self._in.items()},
            }

    @classmethod
    def from_document(cls, pipeline: Pipeline, document: object, where: str) -> NeedModel:
        """A need model for ``pipeline`` restored from :meth:`document`, every field checked.

        Raises:
            StateProblem: the document is malformed or is for other agents (the message
                names the field, prefixed with ``where``).
        """
        fields = _mapping(document, where)
        agents = fields.get("agents")
        if agents != list(pipeline.names):
            raise StateProblem(
                f"{where}.agents: the state is for agents {agents!r}, the pipeline "
                f"{pipeline.name!r} has {list(pipeline.names)!r}"
            )
        features = fields.get("features")
        if features is not None and (
            not isinstance(features, list) or not all(isinstance(f, str) for f in features)
        ):
            raise StateProblem(f"{where}.features: expected a list of feature names or null")
        model = cls(pipeline)
        model._features = None if features is None else tuple(features)
        width = 1 + len(model._features or ())
        for part, models in (("output", model._out), ("input", model._in)):
            entries = _mapping(fields.get(part), f"{where}.{part}")
            if sorted(entries) != sorted(pipeline.names):
                raise StateProblem(f"{where}.{part}: expected one entry per agent")
            extra = 1 if part == "output" else 0
            for name in pipeline.names:
                regression = _Regression.from_document(
                    entries[name], width + extra, f"{where}.{part}.{name}"
                )
                if features is None and regression.count + len(regression.pending):
                    raise StateProblem(f"{where}.features: observations without feature names")
                models[name] = regression
        return model

    def share(self, exchange: Callable[[Mapping[str, Any]], NeedModel]) -> None:
        """Merge with a store: ``exchange(delta)`` returns the merged model, adopted here.

        Under this model's lock, so nothing learned meanwhile is lost: buffered calls are
        folded in, what was learned since the last merge is handed to ``exchange`` (which
        adds it to the store's copy, see :meth:`merged`), and the result becomes this
        model's state. If ``exchange`` raises, nothing learned is lost.
        """
        with self._lock:
            for _, _, model in self._regressions():
                if model.pending:
                    model.fold()
            delta = {
                "features": None if self._features is None else list(self._features),
                "output": {name: m.delta() for name, m in self._out.items()},
                "input": {name: m.delta() for name, m in self._in.items()},
            }
            merged = exchange(delta)
            self._features = merged._features
            for part, name, model in merged._regressions():
                mine = self._out if part == "output" else self._in
                model.forget_delta()
                mine[name] = model
            self._version += 1

    def count_all_as_delta(self) -> None:
        """Nothing of this model is in a store yet: all of it is to be merged."""
        with self._lock:
            for _, _, model in self._regressions():
                model.count_all_as_delta()

    @staticmethod
    def merged(pipeline: Pipeline, shared: NeedModel | None, delta: Mapping[str, Any]) -> NeedModel:
        """``shared`` (the store's copy, or ``None``) plus one worker's ``delta``, refitted.

        When the two disagree on the feature names (each worker fixes them on its first
        request), the store's copy wins and the delta is dropped.
        """
        base = shared if shared is not None else NeedModel(pipeline)
        features = delta.get("features")
        mine = None if features is None else tuple(features)
        if base._features is not None and mine is not None and mine != base._features:
            return base
        model = NeedModel(pipeline)
        model._features = base._features if base._features is not None else mine
        for part, models in (("output", model._out), ("input", model._in)):
            base_models = base._out if part == "output" else base._in
            for name in pipeline.names:
                models[name] = base_models[name].plus(delta[part][name])
        return model


_ERROR_SAMPLES = 64
_BEYOND = np.array([1.1, 1.3, 1.6, 2.0])
_ERROR_SPOTS = (np.arange(_ERROR_SAMPLES) + 0.5) / _ERROR_SAMPLES
_BEYOND_SPOTS = (np.arange(len(_BEYOND)) + 0.5) / len(_BEYOND)


def _with_censored(uncut: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Quantiles of need / prediction from uncut ratios and the lower bounds of cut ones.

    A cut call only says its need was above what it wrote, and cuts happen to the long
    answers: leaving them out would shorten the tail. As in the Kaplan-Meier estimate, each
    cut call's share goes to the uncut ratios above its bound (four quantiles of them), or,
    when fewer than two are above it, to 1.1 to 2 times its bound. Returns 64 quantiles,
    or nothing while fewer than eight calls were uncut.
    """
    if len(uncut) < 8:
        return np.empty(0)
    ordered = np.sort(uncut)
    parts = [np.repeat(ordered, len(_BEYOND))]
    for bound in cut:
        above = ordered[ordered > bound]
        if len(above) >= 2:
            parts.append(quantiles(above, _BEYOND_SPOTS, ordered=True))
        else:
            parts.append(bound * _BEYOND)
    samples: np.ndarray = quantiles(np.concatenate(parts), _ERROR_SPOTS)
    return samples


def quantiles(values: np.ndarray, spots: Any, *, ordered: bool = False) -> Any:
    """``np.quantile(values, spots)`` (its linear method), a tenth of the time.

    Interpolated on the sorted values, as NumPy does, in one ``np.interp``: the same
    quantiles to the last bit or so. ``ordered``: ``values`` are sorted already.
    """
    data = values if ordered else np.sort(values)
    return np.interp(np.asarray(spots) * (len(data) - 1), np.arange(len(data)), data)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _blend(prior: float | None, weight: float, learned: float | None, count: int) -> float | None:
    """The prior counted as ``weight`` observations, the history as ``count`` (geometric)."""
    if learned is None:
        return prior
    if prior is None or count <= 0:
        return learned
    # ``learned`` is at least 1 (see ``_Regression.predict``)
    return float(learned * (max(prior, 1.0) / learned) ** (weight / (weight + count)))


def _add(base: np.ndarray | None, added: object) -> np.ndarray | None:
    if added is None:
        return None if base is None else base.copy()
    extra = np.asarray(added, dtype=float)
    return extra if base is None else base + extra


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StateProblem(f"{where}: expected a mapping, not {type(value).__name__}")
    return value


def _natural(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateProblem(f"{where}: expected a whole number >= 0, not {value!r}")
    return value


def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateProblem(f"{where}: expected a finite number, not {value!r}")
    return float(value)


def _array(value: object, shape: tuple[int, ...] | None, where: str) -> np.ndarray:
    """``value`` as an array of finite floats of ``shape`` (``None``: any 1-D length)."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise StateProblem(f"{where}: expected numbers") from None
    if value is None or (shape is None and array.ndim != 1) or (shape and array.shape != shape):
        expected = "a list of numbers" if shape is None else f"numbers of shape {shape}"
        raise StateProblem(f"{where}: expected {expected}")
    if not np.isfinite(array).all():
        raise StateProblem(f"{where}: not every number is finite")
    return array
