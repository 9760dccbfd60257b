"""Predicting what an agent will need, from request features and the input in hand.

:class:`NeedModel` keeps, per agent, a ridge regression of output tokens on the request's
features and the call's input tokens, and of input tokens on the features (for agents not
yet started, whose input is not in hand). Until an agent has been observed, the agent's own
``estimator`` (if the pipeline declares one) or ``None`` is returned, and policies fall
back to shares of the ceiling.

Observations are buffered and folded in by batches (every call while an agent has fewer
than 64 observations, then every quarter of what it has seen, between 32 and 1024 calls),
so settling a call costs an append, and refits cost a vanishing share of the calls.
Until an agent has three observations per regression weight, its prediction is the mean
of what it was seen to use (a regression on a handful of points swings wildly). A call
whose output was cut only tells a lower bound of the need; it is fitted as
``max(1.5 * observed, prediction)`` so that cut agents are predicted to need more. The
spread of past errors gives a multiplicative margin (the 90th percentile of
``observed / predicted`` over the last 256 uncut calls, at least 1; until eight are known,
1.5, or 1 for an agent that declares an estimator), which policies add to their margin.
:meth:`NeedModel.errors` gives the whole distribution of the errors, cut calls counted
as censored (their need is above what they wrote).
Thread-safe: one lock around every update and refit.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from operator import mul

import numpy as np

from apportion.spec import Agent, Pipeline

_EARLY = 16
_BATCH = (32, 1024)
_RIDGE = 1e-3
_RATIOS_KEPT = 256
_CUT_FACTOR = 1.5
_PRIOR_SPREAD = 1.5
_POINTS_PER_WEIGHT = 3


class _Regression:
    """Ridge regression ``y ~ w . x`` over accumulated sufficient statistics."""

    __slots__ = (
        "count",
        "errors",
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
        self.ratios = np.empty(0)
        self.recent = np.empty(0)  # the last calls' ratios, cut or not
        self.recent_cut = np.empty(0, dtype=bool)
        self.errors = np.empty(0)
        self.spread = _PRIOR_SPREAD

    def predict(self, x: tuple[float, ...]) -> float | None:
        weights = self.weights
        if weights is None:
            return None
        return max(1.0, float(sum(map(mul, weights, x))))

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
            guess = np.maximum(rows @ np.asarray(self.weights), 1.0)
            self.ratios = np.concatenate([self.ratios, (y / guess)[~cut]])[-_RATIOS_KEPT:]
            self.recent = np.concatenate([self.recent, y / guess])[-_RATIOS_KEPT:]
            self.recent_cut = np.concatenate([self.recent_cut, cut])[-_RATIOS_KEPT:]
            self.errors = _with_censored(
                self.recent[~self.recent_cut], self.recent[self.recent_cut]
            )
            y = np.where(cut, np.maximum(_CUT_FACTOR * y, guess), y)
        else:
            y = np.where(cut, _CUT_FACTOR * y, y)
        if self.xtx is None or self.xty is None:
            self.xtx = rows.T @ rows
            self.xty = rows.T @ y
        else:
            self.xtx += rows.T @ rows
            self.xty += rows.T @ y
        self.count += len(rows)
        width = len(self.xty)
        if self.count < _POINTS_PER_WEIGHT * width:  # too few points: the mean (x[0] is 1)
            mean = float(self.xty[0] / self.xtx[0, 0])
            self.weights = (mean, *([0.0] * (width - 1)))
        else:
            scale = np.maximum(np.sqrt(np.diag(self.xtx)), 1e-9)
            normed = self.xtx / np.outer(scale, scale) + _RIDGE * np.eye(width)
            solved = np.linalg.solve(normed, self.xty / scale) / scale
            self.weights = tuple(float(w) for w in solved)
        if len(self.ratios) >= 8:
            self.spread = max(1.0, float(np.quantile(self.ratios, 0.9)))


class NeedModel:
    """Per-agent predictions of input and output tokens, learned online.

    Args:
        pipeline: the pipeline whose agents are predicted.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._lock = threading.Lock()
        self._features: tuple[str, ...] | None = None
        self._out: dict[str, _Regression] = {a.name: _Regression() for a in pipeline.agents}
        self._in: dict[str, _Regression] = {a.name: _Regression() for a in pipeline.agents}

    def row(self, features: Mapping[str, float]) -> tuple[float, ...]:
        """The regression row of a request's features (compute once per request)."""
        names = self._features or ()
        return (1.0, *[float(features.get(n, 0.0)) for n in names])

    def _ready(self, model: _Regression) -> _Regression:
        if model.pending and model.due():
            with self._lock:
                if model.pending and model.due():
                    model.fold()
        return model

    def output(
        self,
        agent: Agent,
        features: Mapping[str, float],
        row: tuple[float, ...],
        input_tokens: float | None,
    ) -> float | None:
        """Expected output tokens of one call, or ``None`` when nothing is known yet.

        Args:
            agent: the agent.
            features: the request's features.
            row: ``row(features)``.
            input_tokens: the call's input (counted, or predicted).
        """
        model = self._ready(self._out[agent.name])
        if model.weights is not None and len(row) + 1 == len(model.weights):
            return model.predict((*row, float(input_tokens or 0)))
        if agent.estimator is not None:
            return max(1.0, float(agent.estimator(features, round(input_tokens or 0))))
        return None

    def input(self, agent: Agent, row: tuple[float, ...]) -> float | None:
        """Expected input tokens of an agent not yet started, or ``None`` when unknown."""
        model = self._ready(self._in[agent.name])
        if model.weights is None or len(row) != len(model.weights):
            return None
        return model.predict(row)

    def input_errors(self, agent: Agent) -> np.ndarray:
        """Samples of input / predicted input, as :meth:`errors` gives them for outputs."""
        return self._in[agent.name].errors

    def spread(self, agent: Agent) -> float:
        """The 90th percentile of observed/predicted output so far (at least 1).

        Before eight errors are known: 1.5, or 1 when the agent declares an estimator
        (the user's own estimate, to which policies add their margin).
        """
        model = self._out[agent.name]
        if len(model.ratios) < 8 and agent.estimator is not None:
            return 1.0
        return model.spread

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


_ERROR_SAMPLES = 64
_BEYOND = np.array([1.1, 1.3, 1.6, 2.0])


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
            parts.append(np.quantile(above, (np.arange(len(_BEYOND)) + 0.5) / len(_BEYOND)))
        else:
            parts.append(bound * _BEYOND)
    spots = (np.arange(_ERROR_SAMPLES) + 0.5) / _ERROR_SAMPLES
    samples: np.ndarray = np.quantile(np.concatenate(parts), spots)
    return samples


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
