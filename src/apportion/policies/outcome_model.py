"""What a cut costs each agent, learned from outcome scores: a Bayesian linear model.

Under the response model, a request's outcome ``Q`` is a product over its agents, so
``-ln Q`` is a sum: for each agent, a weight times what its input cut cost
(``-ln(ctx / input)``) plus a weight times what its output cut cost (``-ln(out / need)``,
with ``ln 2`` more for a reasoning answer that never concluded), plus a constant (a model
weaker than perfect). The weights (an agent's influence times its input sensitivity, and
its influence) are hidden; :class:`OutcomeModel` learns them by Bayesian linear
regression of ``-ln Q`` on those costs, from every scored request (a cut structured
answer scores 0 whatever the weights, so such requests teach nothing and are skipped).

The prior comes from the user's priorities (:data:`PRIOR_INPUT`, :data:`PRIOR_OUTPUT`,
standard deviation :data:`PRIOR_SD`); the posterior is Normal. Policies draw weights from
it (Thompson sampling: the spread shrinks as evidence comes in, so exploration fades on
its own). Its sufficient statistics (``X'X``, ``X'y``, ``y'y``, count) add up, so workers
merge what they learned by adding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from apportion.spec import Pipeline, Priority

PRIOR_INPUT = {Priority.CRITICAL: 0.5, Priority.STANDARD: 0.3, Priority.PERIPHERAL: 0.15}
PRIOR_OUTPUT = {Priority.CRITICAL: 1.0, Priority.STANDARD: 0.6, Priority.PERIPHERAL: 0.3}
PRIOR_SD = 0.6
LEAST_WEIGHT = 0.02
"""No drawn weight is below this (a use of tokens always counts for something)."""
CRITICAL_LEAST = 0.3
"""No weight of a critical agent is drawn below this: exploring never starves them."""
_NOISE_FLOOR = 0.01
_REFRESH = 16


class OutcomeModel:
    """Per-agent weights of input and output cuts in ``-ln Q``, with their posterior.

    Args:
        pipeline: the pipeline whose agents are weighed.

    The row of one request (:meth:`row`) has one input cost and one output cost per agent,
    in pipeline order, then 1 (the constant).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.agents = tuple(a.name for a in pipeline.agents)
        n = len(self.agents)
        self.width = 2 * n + 1
        self.stats = np.zeros(self.width * self.width + self.width + 2)
        priorities = [a.priority for a in pipeline.agents]
        self.prior = np.array(
            [PRIOR_INPUT[p] for p in priorities] + [PRIOR_OUTPUT[p] for p in priorities] + [0.0]
        )
        least = [CRITICAL_LEAST if p is Priority.CRITICAL else LEAST_WEIGHT for p in priorities]
        self.least = np.array(least + least + [0.0])
        self._posterior: tuple[np.ndarray, np.ndarray] | None = None
        self._seen = -1.0

    # ------------------------------------------------------------ statistics

    def parts(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``(X'X, X'y, y'y, count)`` of the statistics."""
        s = self.stats
        w = self.width
        return s[: w * w].reshape(w, w), s[w * w : w * w + w], float(s[-2]), float(s[-1])

    def add(self, row: np.ndarray, target: float) -> np.ndarray:
        """Fold one request in; returns its statistics (to merge elsewhere)."""
        one = np.concatenate([np.outer(row, row).ravel(), row * target, [target**2, 1.0]])
        self.stats += one
        return one

    @staticmethod
    def row_of(
        agents: Sequence[str],
        input_cost: Mapping[str, float],
        output_cost: Mapping[str, float],
    ) -> np.ndarray:
        """A request's row from its costs per agent (missing ones cost 0)."""
        return np.array(
            [input_cost.get(a, 0.0) for a in agents]
            + [output_cost.get(a, 0.0) for a in agents]
            + [1.0]
        )

    # ------------------------------------------------------------ posterior

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the weights (recomputed every few requests)."""
        count = float(self.stats[-1])
        if self._posterior is None or count - self._seen >= _REFRESH or count < self._seen:
            xtx, xty, yty, n = self.parts()
            precision = np.diag(np.full(self.width, 1 / PRIOR_SD**2))
            precision[-1, -1] = 1 / 4.0  # the constant: a vague prior around 0
            noise = 0.1
            for _ in range(2):  # the noise from the residuals of the mean, then refit
                a = xtx / noise + precision
                mean = np.linalg.solve(a, xty / noise + precision @ self.prior)
                if n >= self.width:
                    rss = yty - 2 * mean @ xty + mean @ xtx @ mean
                    noise = max(rss / n, _NOISE_FLOOR)
            cov = np.linalg.inv(xtx / noise + precision)
            self._posterior = (mean, (cov + cov.T) / 2)
            self._seen = count
        return self._posterior

    def draw(self, rng: np.random.Generator, explore: float) -> tuple[np.ndarray, np.ndarray]:
        """Weights drawn from the posterior (spread scaled by ``explore``), floored.

        Returns:
            ``(input weights, output weights)`` in pipeline order.
        """
        mean, cov = self.posterior()
        if explore > 0:
            try:
                chol = np.linalg.cholesky(cov)
                mean = mean + explore * chol @ rng.standard_normal(self.width)
            except np.linalg.LinAlgError:
                pass
        weights = np.maximum(mean, self.least)
        n = len(self.agents)
        return weights[:n], weights[n : 2 * n]

    def means(self) -> dict[str, dict[str, float]]:
        """The posterior mean weights per agent (``input``, ``output``)."""
        mean, _ = self.posterior()
        n = len(self.agents)
        return {
            a: {"input": round(float(mean[i]), 4), "output": round(float(mean[n + i]), 4)}
            for i, a in enumerate(self.agents)
        }


def output_cost(kind: str, written: int, needs: np.ndarray) -> tuple[float, float]:
    """What a cut answer cost, its need sampled above ``written``.

    Returns:
        ``(expected -ln of its output factor, expected tokens it lacks)``.
    """
    above = needs[needs > written]
    if not len(above):
        above = np.array([1.5 * max(written, 1)])
    cost = float(np.mean(np.log(above / max(written, 1))))
    lack = float(np.mean(above)) - written
    return cost + (math.log(2) if kind == "reasoning" else 0.0), lack
