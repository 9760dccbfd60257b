"""``estimate``: request-time estimation of each agent's need, with a safety margin.

Rule: when the request opens, predict every agent's need from the request's features
(message count, document length, ...): its input, and its output given that input. When an
agent calls, its input is counted exactly, so grant that input plus the predicted output
with a safety margin (20% by default, widened by how far past predictions fell short),
while holding back the predicted needs of the agents still to run. Where the pool has room
beyond those, the cap reaches into it, up to twice its own: a cap costs only what the
answer writes (:meth:`~apportion.policies.predicting.PredictingPolicy.spare_room`). When
the predictions add up to more than is left, each gets a share in proportion to its
prediction.
Predictions come from a per-agent linear model fitted online to past requests of the same
controller, blended with a prior that the history takes over from: the agent's declared
estimator or typical sizes, else shares of the ceiling by kind (see
:mod:`apportion.policies.predicting`, "Warm start"). While an agent has been seen only a
few times, its input in hand comes before its output margin: it is read in full whenever
that and its expected output fit beside what the others are predicted to need.
The last call of a request, when squeezed, trades its output margin against its input by
the expected quality of the call over the agent's past output errors
(:meth:`~apportion.policies.predicting.PredictingPolicy.squeezed_cap`).
Priorities are not used. An extension is granted from what the agents still to run are
not predicted to need.
"""

from __future__ import annotations

from typing import ClassVar

from apportion.policies.predicting import PredictingPolicy


class EstimatePolicy(PredictingPolicy):
    """Predicted needs plus a margin; see the module docstring."""

    name = "estimate"
    spreads_shortfall: ClassVar[bool] = True
    trades_cap: ClassVar[bool] = True
