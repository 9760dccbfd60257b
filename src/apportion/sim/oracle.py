"""The hindsight oracle: the best allocation of a request, knowing every need.

Implements "Oracle" of ``docs/workload-spec.md``. The oracle knows ``need_in``,
``need_out`` and the response model, makes no extensions, and chooses ``(ctx, cap)`` for
every agent at once to maximise ``Q = prod(q_i ** influence_i)`` under the token ceiling
(``sum(ctx_i + min(cap_i, need_out_i)) <= ceiling``). It grants ``cap_i = out_i``, so an
agent's consumption is ``c_i = ctx_i + out_i``.

Method
    Maximise ``sum(influence_i * ln q_i)`` (``-inf`` when ``q_i = 0``). For each agent,
    ``g_i(c)``, the best ``q_i`` using at most ``c`` tokens, is computed exactly in closed
    form (the best integer split of ``c`` between context and output: a concave problem
    for a cut output, ``out = need_out`` for a full one). A dynamic programme over a grid
    of budget units then picks one consumption level per agent.

Discretisation (reported as ``OracleResult.step``)
    ``step = max(25, ceiling // 100)`` tokens unless given (the spec allows at most
    ``max(25, 1% of the ceiling)``). Each agent's grid is anchored at its *saturation
    point* ``sat_i`` (``need_in + need_out``, or ``need_out`` when its input sensitivity
    is 0): its levels are ``sat_i, sat_i - step, sat_i - 2 * step, ...``, so a full
    allocation is exact and rounding costs under one step in total, not one step per
    agent. Level ``u`` of agent ``i`` consumes ``u * step - r_i`` tokens
    (``r_i = ceil(sat_i / step) * step - sat_i``) and levels must satisfy
    ``sum(u_i) <= floor((ceiling + sum(r_i)) / step)``, which keeps the allocation
    feasible. A local search then leaves the grid: it moves up to ``step`` tokens at a
    time between agents (or from the unspent tokens) while that raises the quality, each
    move evaluated exactly. Agents of influence 0 get nothing, and an agent of input
    sensitivity 0 gets no context (it does not need any).

    ``quality`` is the quality of that feasible allocation; ``upper_bound`` is proven at
    least the quality of *any* token-exact allocation, hence of any policy (extensions
    included): the same programme, read at ``floor((ceiling + sum(r_i) - n) / step) + n``
    units for ``n`` agents, where every level is charged for the cheapest consumption it
    stands for. ``quality <= upper_bound``. The bound is loose by up to ``n`` steps of
    tokens (1-4% of quality on the examples at the default step) while ``quality`` is
    near exact (on the example workloads it matched or beat the same search on a 4-token
    grid on every request checked, and it equals a brute-force optimum on small cases):
    ``quality`` is the oracle's answer, ``upper_bound`` its certificate.

Relaxation of the upstream coupling (reported as ``OracleResult.relaxed_coupling``)
    In the simulated world a cut upstream output shrinks a downstream agent's available
    input (``avail_in = need_in - sum(need_out_u - out_u)``). The oracle ignores that: it
    lets every agent read up to its full ``need_in`` whatever upstream wrote. The
    relaxation only enlarges the set of allocations, so it can only raise the oracle's
    quality, and ``quality`` / ``upper_bound`` remain upper bounds of what a policy can
    do. ``relaxed_coupling`` is true when the chosen allocation actually relies on it
    (some agent reads more context than the coupled world would have given it); when
    false the allocation is feasible in the coupled world too. ``coupled_quality`` is the
    quality the same allocation gets in the coupled world (each ``ctx`` clipped to
    ``avail_in``): a quality that is actually achievable.

Models
    With a ``models`` section the oracle also chooses the model per agent (the best
    ``capability * q`` at each consumption level, honouring ``max_output`` and
    ``context_window``, ties to the cheaper call). The cost ceiling (``ceiling_usd``) is
    relaxed: the oracle solves without it, which can only raise its quality, so it stays
    an upper bound; when the plan it finds also fits the cost ceiling it is the exact
    optimum, otherwise the result says ``relaxed_cost``.

Trees and dynamic teams (``docs/workload-trees.md``)
    A request of such a workload is solved as the flat list of calls it realized
    (:class:`~apportion.sim.needs.Realized`): the oracle knows which agents ran, how many
    calls each made and every call's needs, and chooses every call's ``(ctx, cap)`` at
    once. Knowing the request's shape in advance only enlarges what it can do over a
    policy, which must hold back for agents that may never run, so it stays an upper
    bound.

Cost: ``O(n * (ceiling / step) ** 2)`` for ``n`` agents, vectorised with numpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from apportion.sim.needs import RequestNeeds
from apportion.sim.quality import agent_quality, available_input, request_quality
from apportion.sim.workload import OutputKind, Workload

__all__ = [
    "DISCRETISATION_NOTE",
    "RELAXATION_NOTE",
    "Oracle",
    "OracleResult",
    "default_step",
    "solve_oracle",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: One line a report can print about the oracle's discretisation (format with ``step``).
DISCRETISATION_NOTE: Final = (
    "oracle budgets discretised in steps of {step} tokens (each agent's grid anchored at "
    "its full need), then refined token by token"
)
#: One line a report can print about the oracle's relaxation of the upstream coupling.
RELAXATION_NOTE: Final = (
    "oracle relaxes the upstream coupling: a downstream agent may read its full need_in "
    "even when an upstream output was cut (this can only raise the oracle's quality)"
)

_NEG_INF: Final = -math.inf
_TIE: Final = 1e-12


@dataclass(frozen=True)
class OracleResult:
    """The oracle's allocation for one request.

    Attributes:
        quality: ``Q`` of ``allocation`` (coupling relaxed, see the module docstring).
        tokens: tokens ``allocation`` consumes (``<=`` the ceiling).
        allocation: ``(ctx, cap)`` per agent, in agent order; ``cap`` equals the output
            the agent writes (``min(cap, need_out) == cap``).
        step: the discretisation step, in tokens.
        relaxed_coupling: ``allocation`` gives some agent more context than the coupled
            world would make available (the relaxation was used).
        upper_bound: at least the ``Q`` of every allocation within the ceiling, on or off
            the grid; ``quality <= upper_bound``.
        coupled_quality: ``Q`` of ``allocation`` in the coupled world (each ``ctx``
            clipped to ``avail_in``); equals ``quality`` when ``relaxed_coupling`` is
            false.
        models: the model chosen per agent (``None``: the implicit model, or an agent of
            influence 0 that is given nothing).
        cost: USD cost of ``allocation`` (0 without a ``models`` section).
    """

    quality: float
    tokens: int
    allocation: tuple[tuple[int, int], ...]
    step: int
    relaxed_coupling: bool
    upper_bound: float
    coupled_quality: float
    models: tuple[str | None, ...]
    cost: float
    relaxed_cost: bool = False


def default_step(ceiling: int) -> int:
    """The default discretisation step for ``ceiling``: ``max(25, ceiling // 100)``."""
    return max(25, ceiling // 100)


@dataclass(frozen=True)
class _Option:
    """One model an agent may run on, as the oracle needs it."""

    model: str | None
    capability: float
    max_output: int | None
    window: int | None
    input_price: float
    output_price: float


@dataclass(frozen=True)
class _Curve:
    """``g(c)`` of one agent at given consumption levels, with the split achieving it."""

    value: FloatArray  # influence * ln q, -inf where q == 0
    ctx: IntArray
    out: IntArray
    option: IntArray  # index into the agent's options


class Oracle:
    """The hindsight oracle for one workload (precomputes what does not vary by request).

    Args:
        workload: the workload.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        agents = workload.agents
        self._kinds: tuple[OutputKind, ...] = tuple(a.output_kind for a in agents)
        self._betas = tuple(a.input_sensitivity for a in agents)
        self._weights = tuple(a.influence for a in agents)
        self._upstream: tuple[tuple[int, ...], ...] = tuple(
            workload.upstream_indices(i) if a.input.upstream else () for i, a in enumerate(agents)
        )
        options: list[tuple[_Option, ...]] = []
        for agent in agents:
            if not workload.models:
                options.append((_Option(None, 1.0, None, None, 0.0, 0.0),))
                continue
            options.append(
                tuple(
                    _Option(
                        model.name,
                        model.capability[agent.output_kind],
                        model.max_output,
                        model.context_window,
                        model.input_price,
                        model.output_price,
                    )
                    for model in workload.models
                )
            )
        self._options = tuple(options)
        self._lam = 0.0  # the price of one USD in log quality (0: cost ignored)

    def step_for(self, ceiling: int) -> int:
        """The discretisation step :meth:`solve` uses by default at ``ceiling``."""
        return default_step(ceiling)

    def solve(
        self,
        needs: RequestNeeds,
        ceiling: int | None = None,
        *,
        step: int | None = None,
        ceiling_usd: float | None = None,
        honour_cost: bool = False,
    ) -> OracleResult:
        """Find the best allocation of one request.

        Args:
            needs: the request's needs (from :func:`~apportion.sim.needs.draw_needs`).
            ceiling: the token ceiling; the workload's when ``None``.
            step: the discretisation step; ``max(25, ceiling // 100)`` when ``None``.
            ceiling_usd: the cost ceiling; the workload's when ``None`` (``math.inf`` for
                none). It applies only when the workload has models.
            honour_cost: when the relaxed plan breaks the cost ceiling, search for the best
                plan within it: a Lagrange multiplier on cost (the price of one USD in log
                quality), raised until the plan fits, then narrowed by bisection. The result
                is then the best plan found under both ceilings, not a proven optimum (a
                Lagrangian solution can miss plans inside the convex hull);
                ``relaxed_cost`` stays true only if no multiplier made the plan fit.

        Returns:
            The allocation, its quality and the bound (see :class:`OracleResult`).

        Raises:
            ValueError: no ceiling, a ceiling below 1, a step outside
                ``[1, max(25, ceiling / 100)]``, or needs of the wrong length.
        """
        limit = self.workload.ceiling if ceiling is None else ceiling
        if limit is None:
            raise ValueError("no ceiling: the workload gives none, so pass one")
        if limit < 1:
            raise ValueError(f"the ceiling must be at least 1, got {limit}")
        grid = default_step(limit) if step is None else step
        if not 1 <= grid <= max(25, limit / 100):
            raise ValueError(
                f"step must be between 1 and max(25, ceiling / 100) = "
                f"{max(25, limit / 100):g}, got {grid}"
            )
        realized = needs.realized
        if realized is not None and realized.workload is not self.workload:
            return Oracle(realized.workload).solve(
                needs, ceiling, step=step, ceiling_usd=ceiling_usd, honour_cost=honour_cost
            )
        usd = self.workload.ceiling_usd if ceiling_usd is None else ceiling_usd
        usd_limit = math.inf
        if self.workload.models and usd is not None and math.isfinite(usd):
            usd_limit = usd  # relaxed: see the module docstring
        count = len(self.workload.agents)
        if len(needs.need_in) != count or len(needs.need_out) != count:
            raise ValueError(f"needs are for {len(needs.need_in)} agents, the workload has {count}")

        self._lam = 0.0
        result = self._solve_at(needs, limit, grid)
        if result.cost > usd_limit and honour_cost:
            return self._within_cost(needs, limit, grid, usd_limit, result)
        if result.cost > usd_limit:
            result = dataclasses.replace(result, relaxed_cost=True)
        return result

    def _within_cost(
        self, needs: RequestNeeds, limit: int, grid: int, usd: float, relaxed: OracleResult
    ) -> OracleResult:
        """The best plan found within the cost ceiling ``usd`` (see :meth:`solve`)."""
        lam = 1.0 / usd
        fitting: OracleResult | None = None
        low = 0.0
        try:
            for _ in range(40):  # raise the price of cost until the plan fits
                self._lam = lam
                found = self._solve_at(needs, limit, grid)
                if found.cost <= usd:
                    fitting = found
                    break
                low, lam = lam, lam * 4.0
            if fitting is None:
                return dataclasses.replace(relaxed, relaxed_cost=True)
            high = lam
            for _ in range(10):  # narrow it: the least price that still fits
                middle = math.sqrt(low * high) if low > 0 else high / 4.0
                self._lam = middle
                found = self._solve_at(needs, limit, grid)
                if found.cost <= usd:
                    high = middle
                    if found.quality >= fitting.quality:
                        fitting = found
                else:
                    low = middle
        finally:
            self._lam = 0.0
        return dataclasses.replace(
            fitting, upper_bound=max(fitting.quality, relaxed.upper_bound), relaxed_cost=False
        )

    def _solve_at(self, needs: RequestNeeds, limit: int, grid: int) -> OracleResult:
        """One solve at the current price of cost (``self._lam``)."""
        count = len(self.workload.agents)
        active = [i for i in range(count) if self._weights[i] > 0]
        saturation = {
            i: (needs.need_in[i] if self._betas[i] > 0 else 0) + needs.need_out[i] for i in active
        }
        curves: dict[int, _Curve] = {}
        if sum(saturation.values()) <= limit:
            for i in active:
                curves[i] = self._curve(i, needs, np.array([saturation[i]], dtype=np.int64))
            best_log = sum(float(curves[i].value[0]) for i in active)
            bound_log = best_log
            picks = {i: 0 for i in active}
            fits = True
        else:
            fits = False
            picks, best_log, bound_log = self._programme(
                needs, active, saturation, limit, grid, curves
            )

        ctx = [0] * count
        out = [0] * count
        chosen: list[int | None] = [None] * count
        if best_log > _NEG_INF:
            for i, p in picks.items():
                ctx[i], out[i] = int(curves[i].ctx[p]), int(curves[i].out[p])
                chosen[i] = int(curves[i].option[p])
            if not fits:
                self._refine(needs, active, saturation, limit, grid, ctx, out, chosen)
        elif bound_log > _NEG_INF and self._smallest(needs, active, limit, ctx, out, chosen):
            # The ceiling is within a few steps of the least a positive Q needs, too tight
            # for the grid: start from that least allocation and search off the grid.
            self._refine(needs, active, saturation, limit, grid, ctx, out, chosen)
        result = self._result(needs, ctx, out, chosen, grid, bound_log)
        return result

    def _smallest(
        self,
        needs: RequestNeeds,
        active: Sequence[int],
        limit: int,
        ctx: list[int],
        out: list[int],
        chosen: list[int | None],
    ) -> bool:
        """Fill in the least allocation giving every active agent q > 0, if it fits."""
        total = 0
        for i in active:
            extra = 1 if self._betas[i] > 0 else 0
            candidates = sorted({1 + extra, needs.need_out[i] + extra})
            curve = self._curve(i, needs, np.array(candidates, dtype=np.int64))
            positive = np.flatnonzero(curve.value > _NEG_INF)
            if len(positive) == 0:
                return False
            p = int(positive[0])
            ctx[i], out[i], chosen[i] = int(curve.ctx[p]), int(curve.out[p]), int(curve.option[p])
            total += ctx[i] + out[i]
        if total <= limit:
            return True
        for i in active:
            ctx[i], out[i], chosen[i] = 0, 0, None
        return False

    # ----------------------------------------------------------------- programme

    def _programme(
        self,
        needs: RequestNeeds,
        active: Sequence[int],
        saturation: dict[int, int],
        limit: int,
        grid: int,
        curves: dict[int, _Curve],
    ) -> tuple[dict[int, int], float, float]:
        """Run the dynamic programme; fill ``curves``; return picks and log values."""
        rest = {i: -(-saturation[i] // grid) * grid - saturation[i] for i in active}
        total_rest = sum(rest.values())
        feasible_units = (limit + total_rest) // grid
        # Level u of agent i stands for every consumption in ((u-1)*step - r_i, u*step - r_i],
        # whose quality is at most the level's; charged at the cheapest of them, n levels
        # fit the ceiling iff sum(u) <= floor((ceiling + sum(r) - n) / step) + n.
        bound_units = (limit + total_rest - len(active)) // grid + len(active)
        if bound_units < len(active):
            return {}, _NEG_INF, _NEG_INF
        length = bound_units + 1

        dp = np.full(length, _NEG_INF)
        dp[0] = 0.0
        choices: list[IntArray] = []
        for i in active:
            levels = min(-(-saturation[i] // grid), length - 1)
            units = np.arange(1, levels + 1, dtype=np.int64)
            curve = self._curve(i, needs, units * grid - rest[i])
            curves[i] = curve
            padded = np.concatenate((np.full(levels, _NEG_INF), dp))
            windows = sliding_window_view(padded, levels)[:length]
            candidates = windows + curve.value[::-1]
            arg = np.argmax(candidates, axis=1)
            dp = candidates[np.arange(length), arg]
            choices.append((levels - arg).astype(np.int64))

        best_at = int(np.argmax(dp[: min(feasible_units, bound_units) + 1]))
        best_log = float(dp[best_at])
        bound_log = float(np.max(dp))
        picks: dict[int, int] = {}
        if best_log > _NEG_INF:
            t = best_at
            for i, choice in zip(reversed(active), reversed(choices), strict=True):
                unit = int(choice[t])
                picks[i] = unit - 1
                t -= unit
        return picks, best_log, bound_log

    def _refine(
        self,
        needs: RequestNeeds,
        active: Sequence[int],
        saturation: dict[int, int],
        limit: int,
        grid: int,
        ctx: list[int],
        out: list[int],
        chosen: list[int | None],
    ) -> None:
        """Improve the grid's allocation off the grid, exactly and feasibly.

        Each round finds the best single move of ``d`` tokens (``1 <= d <= step``) from one
        agent, or from the unspent tokens, to another agent, and applies it if it raises
        the quality; it stops when no move does (a local optimum at token resolution).
        """
        count = len(active)
        if count == 0:
            return
        spent = {i: ctx[i] + out[i] for i in active}
        shifts = np.arange(-grid, grid + 1, dtype=np.int64)
        gains = np.full((count + 1, len(shifts)), _NEG_INF)

        def around(row: int) -> _Curve:
            """Evaluate agent ``active[row]`` at ``spent +- step``; fill its gains."""
            i = active[row]
            target = spent[i] + shifts
            curve = self._curve(i, needs, np.clip(target, 0, saturation[i]))
            valid = (target >= 0) & (target <= saturation[i])
            gains[row] = np.where(valid, curve.value - curve.value[grid], _NEG_INF)
            return curve

        curves = [around(row) for row in range(count)]
        for _ in range(4 * count + 4):
            slack = limit - sum(spent.values())
            gains[count] = np.where(shifts >= -slack, 0.0, _NEG_INF)  # the unspent tokens
            receive = gains[:, grid + 1 :]  # gains[:, d] for d = 1 .. step
            give = gains[:, grid - 1 :: -1]  # gains[:, -d] for d = 1 .. step
            total = receive[:, None, :] + give[None, :, :]
            total[np.arange(count + 1), np.arange(count + 1), :] = _NEG_INF
            total[count, :, :] = _NEG_INF  # parking tokens unspent never helps
            taker, giver, move = np.unravel_index(int(np.argmax(total)), total.shape)
            if not total[taker, giver, move] > 1e-12:
                return
            d = int(move) + 1
            for row, shift in ((int(taker), d), (int(giver), -d)):
                if row == count:
                    continue
                i, at = active[row], grid + shift
                ctx[i], out[i] = int(curves[row].ctx[at]), int(curves[row].out[at])
                chosen[i] = int(curves[row].option[at])
                spent[i] = ctx[i] + out[i]
                curves[row] = around(row)

    def _result(
        self,
        needs: RequestNeeds,
        ctx: list[int],
        out: list[int],
        chosen: list[int | None],
        grid: int,
        bound_log: float,
    ) -> OracleResult:
        count = len(ctx)
        capability = [
            1.0 if c is None else self._options[i][c].capability for i, c in enumerate(chosen)
        ]
        relaxed = [
            agent_quality(
                self._kinds[i],
                ctx[i],
                needs.need_in[i],
                out[i],
                needs.need_out[i],
                self._betas[i],
                capability[i],
            )
            for i in range(count)
        ]
        coupled_ctx = list(ctx)
        used_relaxation = False
        for i in range(count):
            if not self._upstream[i]:
                continue
            avail = available_input(
                needs.need_in[i], (needs.need_out[u] - out[u] for u in self._upstream[i])
            )
            if ctx[i] > avail:
                used_relaxation = True
                coupled_ctx[i] = avail
        quality = request_quality(relaxed, self._weights)
        coupled_quality = quality
        if used_relaxation:
            coupled = [
                agent_quality(
                    self._kinds[i],
                    coupled_ctx[i],
                    needs.need_in[i],
                    out[i],
                    needs.need_out[i],
                    self._betas[i],
                    capability[i],
                )
                for i in range(count)
            ]
            coupled_quality = request_quality(coupled, self._weights)
        upper = max(quality, min(1.0, math.exp(bound_log))) if bound_log > _NEG_INF else quality
        cost = 0.0
        names: list[str | None] = []
        for i, c in enumerate(chosen):
            if c is None:
                names.append(None)
                continue
            option = self._options[i][c]
            names.append(option.model)
            cost += (ctx[i] * option.input_price + out[i] * option.output_price) / 1e6
        return OracleResult(
            quality=quality,
            tokens=sum(ctx) + sum(out),
            allocation=tuple(zip(ctx, out, strict=True)),
            step=grid,
            relaxed_coupling=used_relaxation,
            upper_bound=upper,
            coupled_quality=coupled_quality,
            models=tuple(names),
            cost=cost,
        )

    # ----------------------------------------------------------------- curves

    def _curve(self, index: int, needs: RequestNeeds, budget: IntArray) -> _Curve:
        """``g(c)``, the best agent quality using at most ``c`` tokens, for each ``c``."""
        n, m = needs.need_in[index], needs.need_out[index]
        beta, weight, kind = self._betas[index], self._weights[index], self._kinds[index]
        best_q: FloatArray | None = None
        best_ctx = best_out = best_option = np.zeros(0, dtype=np.int64)
        best_cost = np.zeros(0)
        best_score = np.zeros(0)
        lam = self._lam / 1e6  # prices are USD per million tokens
        for position, option in enumerate(self._options[index]):
            q, ctx, out = _best_split(kind, budget, n, m, beta, option)
            cost = ctx * option.input_price + out * option.output_price
            score = np.zeros(0)
            if lam > 0:
                with np.errstate(divide="ignore"):
                    score = weight * np.log(q) - lam * cost
            if best_q is None:
                best_q, best_ctx, best_out = q, ctx, out
                best_option = np.zeros(len(budget), dtype=np.int64)
                best_cost = cost
                best_score = score
                continue
            if lam > 0:
                better = score > best_score
                best_score = np.where(better, score, best_score)
            else:
                better = (q > best_q * (1 + _TIE)) | (
                    (q >= best_q * (1 - _TIE)) & (cost < best_cost)
                )
            best_q = np.where(better, q, best_q)
            best_ctx = np.where(better, ctx, best_ctx)
            best_out = np.where(better, out, best_out)
            best_option = np.where(better, position, best_option)
            best_cost = np.where(better, cost, best_cost)
        assert best_q is not None
        if lam > 0:
            return _Curve(value=best_score, ctx=best_ctx, out=best_out, option=best_option)
        with np.errstate(divide="ignore"):
            value = weight * np.log(best_q)
        return _Curve(value=value, ctx=best_ctx, out=best_out, option=best_option)


def _best_split(
    kind: OutputKind, budget: IntArray, n: int, m: int, beta: float, option: _Option
) -> tuple[FloatArray, IntArray, IntArray]:
    """Best ``(q, ctx, out)`` with ``ctx + out <= budget`` on one model."""
    limit = budget if option.window is None else np.minimum(budget, option.window)
    most_out = m if option.max_output is None else min(m, option.max_output)
    cap = option.capability
    if kind == "prose":
        return _cut_split(limit, n, m, most_out, beta, cap)
    full = _full_split(limit, n, m, most_out, beta, cap)
    if kind == "structured":
        return full
    cut = _cut_split(limit, n, m, min(most_out, m - 1), beta, 0.5 * cap)
    take_cut = cut[0] > full[0]
    return (
        np.where(take_cut, cut[0], full[0]),
        np.where(take_cut, cut[1], full[1]),
        np.where(take_cut, cut[2], full[2]),
    )


def _full_split(
    limit: IntArray, n: int, m: int, most_out: int, beta: float, cap: float
) -> tuple[FloatArray, IntArray, IntArray]:
    """The full output (``out = need_out``) and the rest as context; q = 0 if it won't fit."""
    if most_out < m:
        zero = np.zeros(len(limit), dtype=np.int64)
        return np.zeros(len(limit)), zero, zero
    fits = limit >= m
    ctx = np.where(fits, np.minimum(n, limit - m) if beta > 0 else 0, 0).astype(np.int64)
    out = np.where(fits, m, 0).astype(np.int64)
    q = np.where(fits, cap * (ctx / n) ** beta, 0.0)
    return q, ctx, out


def _cut_split(
    limit: IntArray, n: int, m: int, most_out: int, beta: float, factor: float
) -> tuple[FloatArray, IntArray, IntArray]:
    """Best ``factor * (ctx / n) ** beta * (out / m)`` with ``out <= most_out``.

    ``beta * ln(ctx) + ln(budget - ctx)`` is concave in ``ctx``, so the integer optimum
    is the floor or the ceiling of ``beta / (1 + beta) * budget``, clipped to the range
    the bounds on ``ctx`` and ``out`` allow.
    """
    spend = np.minimum(limit, (n if beta > 0 else 0) + most_out).astype(np.float64)
    low = np.maximum(0.0, spend - most_out)
    high = np.minimum(float(n), spend)
    ideal = spend * (beta / (1.0 + beta))
    below = np.clip(np.floor(ideal), low, high)
    above = np.clip(np.ceil(ideal), low, high)
    q_below = factor * (below / n) ** beta * ((spend - below) / m)
    q_above = factor * (above / n) ** beta * ((spend - above) / m)
    ctx = np.where(q_above > q_below, above, below)
    q = np.maximum(q_above, q_below)
    return q, ctx.astype(np.int64), (spend - ctx).astype(np.int64)


def solve_oracle(
    workload: Workload,
    needs: RequestNeeds,
    ceiling: int | None = None,
    *,
    step: int | None = None,
) -> OracleResult:
    """Find the oracle's allocation of one request (see :meth:`Oracle.solve`).

    For many requests of the same workload, build one :class:`Oracle` and call its
    :meth:`~Oracle.solve`, which skips the per-workload set-up.
    """
    return Oracle(workload).solve(needs, ceiling, step=step)
