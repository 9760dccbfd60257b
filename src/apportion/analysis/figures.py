"""Figures of a usage report, rendered to PNG or SVG bytes in memory (measured data).

- :func:`tokens_figure`: input and output tokens per call, per agent (box plots on a
  log scale: boxes P25-P75, whiskers P1-P99, a dot at P90);
- :func:`utilization_figure`: utilization per agent, the over-budgeted threshold marked;
- :func:`ceiling_hits_figure`: ceiling-hit rate per agent, the under-budgeted threshold
  marked (in both, each bar's value stands in a column right of the plot and the
  threshold is named under the axis, so no label sits on a bar or on the line);
- :func:`quality_figure`: mean outcome with and without cuts per agent, with 95%
  intervals (``None`` when no request has an outcome score);
- :func:`children_figure`: per child name, how its children's calls ended (shares of
  completed, wrapped up, cut, refused and other), how many children ran out in a column
  right of the plot (``None`` without child requests).

They draw with the style of :mod:`apportion.sim.figures` (matplotlib's object API on the
Agg canvas, imported only when drawing; reproducible SVG). Agent names are drawn as
written (a ``$`` is not mathtext) and wrapped when long (:func:`~apportion.sim.figures.
name_label`), so a 60-character name leaves the plot its width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from apportion.sim.figures import FigureFormat, encode_figure, footnote, name_label, new_figure
from apportion.telemetry.records import CallUsage

__all__ = [
    "SPREAD_PERCENTILES",
    "TokenSpreads",
    "ceiling_hits_figure",
    "children_figure",
    "quality_figure",
    "token_spreads",
    "tokens_figure",
    "utilization_figure",
]

_OK: Final = "#4c78a8"
_FLAGGED: Final = "#e45756"
_UNKNOWN: Final = "#bbbbbb"
_CUT: Final = "#e45756"
_UNCUT: Final = "#4c78a8"


def _height(agents: int) -> float:
    return max(3.0, 1.2 + 0.45 * agents)


SPREAD_PERCENTILES: Final = (1, 25, 50, 75, 90, 99)
"""The percentiles of tokens per call a box plot draws (whiskers, box, median, dot)."""

TokenSpreads = Mapping[str, Mapping[str, Sequence[float]]]
"""Per agent, ``{"input": [...], "output": [...]}``: the :data:`SPREAD_PERCENTILES` of
its tokens per finished call, each call counted as at least 1 token (a log scale)."""


def token_spreads(usage: Mapping[str, Sequence[CallUsage]]) -> dict[str, dict[str, list[float]]]:
    """The :data:`TokenSpreads` of finished calls per agent (agents with none left out)."""
    import numpy as np

    out: dict[str, dict[str, list[float]]] = {}
    for agent, calls in usage.items():
        if not calls:
            continue
        out[agent] = {}
        for side in ("input", "output"):
            values = np.maximum(
                np.asarray([getattr(c, f"used_{side}") or 0 for c in calls], dtype=float), 1.0
            )
            out[agent][side] = [float(np.percentile(values, q)) for q in SPREAD_PERCENTILES]
    return out


def tokens_figure(spreads: TokenSpreads, fmt: FigureFormat = "svg") -> bytes:
    """Input and output tokens per call of each agent (two panels, log scale).

    Args:
        spreads: per agent (in display order, top to bottom), the percentiles of its
            tokens per call (:func:`token_spreads`, or aggregated in the database).
        fmt: ``"png"`` or ``"svg"``.
    """
    agents = list(spreads)[::-1]
    fig = new_figure()
    fig.set_size_inches(9.0, _height(len(agents)) + 0.8)
    panels = fig.subplots(1, 2, sharey=True)
    for ax, side, title in (
        (panels[0], "input", "input tokens per call"),
        (panels[1], "output", "output tokens per call"),
    ):
        stats = []
        for a in agents:
            p1, p25, p50, p75, _, p99 = spreads[a][side]
            stats.append(
                {"whislo": p1, "q1": p25, "med": p50, "q3": p75, "whishi": p99, "fliers": []}
            )
        ax.bxp(
            stats,
            **_horizontal(),
            showfliers=False,
            widths=0.6,
            patch_artist=True,
            boxprops={"facecolor": "#dbe5f1", "edgecolor": _OK},
            medianprops={"color": _OK, "linewidth": 1.8},
        )
        p90 = [spreads[a][side][4] for a in agents]
        ax.scatter(p90, range(1, len(agents) + 1), marker="o", s=18, color=_FLAGGED, zorder=3)
        ax.set_xscale("log")
        _token_ticks(ax)
        ax.set_title(title, fontsize="medium")
        ax.grid(True, axis="x", alpha=0.3, which="both")
    panels[0].set_yticks(range(1, len(agents) + 1), [name_label(a) for a in agents])
    fig.suptitle("Tokens used per call, per agent (measured)")
    footnote(fig, "Boxes: P25-P75, line: median, whiskers: P1-P99, red dot: P90. Log scale.")
    return encode_figure(fig, fmt)


def _token_ticks(ax: Any) -> None:
    """Label only the powers of ten, as plain token counts (10, 100, 1k, 10k ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def label(value: float, _: int) -> str:
        if value >= 1000:
            return f"{value / 1000:g}k"
        return f"{value:g}"

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(label))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _horizontal() -> dict[str, Any]:
    """Horizontal boxes, in the words of the installed matplotlib (3.10 renamed ``vert``)."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _bars(
    report: Mapping[str, Any],
    key: str,
    flag: str,
    threshold: float,
    title: str,
    label: str,
    fmt: FigureFormat,
) -> bytes:
    agents = [a for a in report["agents"]][::-1]
    values = [report["agents"][a][key] for a in agents]
    colours = [
        _UNKNOWN if v is None else _FLAGGED if report["agents"][a][flag] else _OK
        for a, v in zip(agents, values, strict=True)
    ]
    fig = new_figure()
    fig.set_size_inches(8.0, _height(len(agents)) + 0.4)
    ax = fig.add_subplot()
    shown = [0.0 if v is None else float(v) for v in values]
    rows = range(len(agents))
    ax.barh(rows, shown, color=colours, height=0.6)
    ax.set_yticks(rows, [name_label(a) for a in agents])
    # The values, in a column right of the plot: never over a bar or the threshold line.
    _right_column(ax, rows, ["unknown" if v is None else f"{v:.0%}" for v in values])
    ax.axvline(threshold, linestyle="--", color="#222222", linewidth=1.4)
    ax.set_xlim(0.0, max(1.05, max(shown, default=0.0) * 1.05))
    ax.set_ylim(-0.6, len(agents) - 0.4)
    ax.xaxis.set_major_formatter(_percent())
    ax.set_xlabel(f"dashed line: {label}")
    fig.suptitle(title)
    ax.grid(True, axis="x", alpha=0.3)
    return encode_figure(fig, fmt)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def utilization_figure(report: Mapping[str, Any], fmt: FigureFormat = "svg") -> bytes:
    """Utilization (tokens used / granted) per agent; red bars are over-budgeted."""
    t = report["thresholds"]["over_utilization"]
    return _bars(
        report,
        "utilization",
        "over_budgeted",
        t,
        "Utilization per agent: tokens used / tokens granted (measured)",
        f"over-budgeted below {t:.0%}",
        fmt,
    )


def ceiling_hits_figure(report: Mapping[str, Any], fmt: FigureFormat = "svg") -> bytes:
    """Ceiling-hit rate per agent; red bars are under-budgeted."""
    t = report["thresholds"]["under_hit_rate"]
    return _bars(
        report,
        "ceiling_hit_rate",
        "under_budgeted",
        t,
        "Calls that hit their budget (output truncated or input cut), per agent",
        f"under-budgeted above {t:.0%}",
        fmt,
    )


def quality_figure(report: Mapping[str, Any], fmt: FigureFormat = "svg") -> bytes | None:
    """Mean outcome of requests where each agent was cut or not, with 95% intervals.

    Returns:
        The figure, or ``None`` when no agent has a request with an outcome score.
    """
    rows = [
        (agent, f["quality"])
        for agent, f in report["agents"].items()
        if f["quality"]["cut"]["requests"] or f["quality"]["uncut"]["requests"]
    ][::-1]
    if not rows:
        return None
    fig = new_figure()
    fig.set_size_inches(8.0, _height(len(rows)))
    ax = fig.add_subplot()
    for offset, name, colour in ((0.15, "uncut", _UNCUT), (-0.15, "cut", _CUT)):
        ys, xs, low, high = [], [], [], []
        for i, (_, quality) in enumerate(rows):
            group = quality[name]
            if not group["requests"]:
                continue
            ys.append(i + offset)
            xs.append(group["mean"])
            lo = group["ci_low"] if group["ci_low"] is not None else group["mean"]
            hi = group["ci_high"] if group["ci_high"] is not None else group["mean"]
            low.append(group["mean"] - lo)
            high.append(hi - group["mean"])
        label = "calls cut" if name == "cut" else "no call cut"
        ax.errorbar(
            xs, ys, xerr=[low, high], fmt="o", color=colour, capsize=3, label=label, markersize=5
        )
    ax.set_yticks(range(len(rows)), [name_label(agent) for agent, _ in rows])
    ax.set_xlabel("mean outcome score of the requests (req.score)")
    fig.suptitle("Outcome with and without cuts, per agent (95% intervals)")
    ax.grid(True, axis="x", alpha=0.3)
    # Right of the plot: never over a point or an interval.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    footnote(fig, "Requests with an outcome score only; no interval below two requests.")
    return encode_figure(fig, fmt)


_ENDINGS: Final = (
    ("completed", "completed", "#4c78a8"),
    ("wrapped_up", "wrapped up", "#f58518"),
    ("cut", "cut", "#e45756"),
    ("refused", "refused", "#b279a2"),
    ("other", "other", "#bbbbbb"),
)


def children_figure(report: Mapping[str, Any], fmt: FigureFormat = "svg") -> bytes | None:
    """How the calls of each kind of child ended (stacked shares), children that ran out.

    Returns:
        The figure, or ``None`` when the report has no child requests.
    """
    by_name = (report.get("trees") or {}).get("children") or {}
    if not by_name:
        return None
    names = list(by_name)[::-1]
    fig = new_figure()
    fig.set_size_inches(8.0, _height(len(names)) + 0.6)
    ax = fig.add_subplot()
    rows = range(len(names))
    left = [0.0] * len(names)
    for key, label, colour in _ENDINGS:
        shares = []
        for name in names:
            counts = by_name[name]["statuses"]
            total = sum(counts.values())
            named = {k for k, _, _ in _ENDINGS if k != "other"}
            n = (
                sum(v for s, v in counts.items() if s not in named)
                if key == "other"
                else counts.get(key, 0)
            )
            shares.append(n / total if total else 0.0)
        ax.barh(rows, shares, left=left, color=colour, height=0.6, label=label)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_yticks(rows, [name_label(n) for n in names])
    _right_column(
        ax, rows, [f"{by_name[n]['ran_out']} of {by_name[n]['children']} ran out" for n in names]
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.xaxis.set_major_formatter(_percent())
    ax.set_xlabel("share of the calls (and refused begins) of the children of that name")
    fig.suptitle("How each kind of child request ended (measured)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=5, fontsize="small")
    return encode_figure(fig, fmt)


def _right_column(ax: Any, rows: Any, labels: list[str]) -> None:
    """One label per row, in a column right of the plot (never over a bar)."""
    for row, label in zip(rows, labels, strict=True):
        ax.annotate(
            label,
            xy=(1.0, row),
            xycoords=("axes fraction", "data"),
            xytext=(6, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize="small",
            annotation_clip=False,
        )
