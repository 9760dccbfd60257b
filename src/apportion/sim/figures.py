"""Figures of a bench, rendered to PNG or SVG bytes in memory (simulated quality).

- :func:`frontier_figure`: the quality-against-ceiling frontier of :func:`run_frontier
  <apportion.sim.bench.run_frontier>` (one line per policy, the oracle dashed);
- :func:`bench_figure`: the simulated quality of each policy at one ceiling (bars), with
  the oracle as a dashed line;
- :func:`cost_frontier_figure`: simulated quality against the cost per request of
  :func:`run_cost_frontier <apportion.sim.bench.run_cost_frontier>` (``--ceilings-usd``);
- :func:`render_figure`: whichever of these a bench document calls for.

Every figure's title says the quality is simulated. Text that comes from the user (agent,
policy, workload and pipeline names) goes through :func:`literal` (or :func:`name_label`
for tick labels), so that matplotlib draws it as written: a ``$`` in a name is never read
as mathtext (which misdraws ``a$b$c`` and fails on ``a$$b``), and TeX is never used.
Figures are drawn with matplotlib's object-oriented API on the Agg canvas: matplotlib is
imported only when a figure is drawn, no window opens, and ``pyplot``'s global state is
never touched. Nothing is written to disk here: write the returned bytes with
:func:`apportion.files.write_atomic`, so a failure while drawing leaves no file behind.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FORMATS",
    "FigureFormat",
    "bench_figure",
    "cost_frontier_figure",
    "figure_format",
    "footnote",
    "frontier_figure",
    "literal",
    "name_label",
    "render_figure",
]

FigureFormat = Literal["png", "svg"]
FORMATS: Final[dict[str, FigureFormat]] = {".png": "png", ".svg": "svg"}
"""File suffixes (lower case) and the figure format each one selects."""

_ORACLE_COLOUR: Final = "#222222"
_SIZE: Final = (8.0, 5.0)
_DPI: Final = 110
_NOTE_SIZE: Final = 9.0
"""Points: the footnote under a figure (read at the figure's size on a page, ~880 px wide)."""
_NOTE_COLOUR: Final = "#333333"
"""12.6:1 against white."""
_LABEL_WIDTH: Final = 24
_LABEL_LINES: Final = 3


def literal(text: object) -> str:
    """``text`` for matplotlib to draw as written: every ``$`` escaped, so no mathtext.

    Args:
        text: any text from outside (a name, a title part); shown with ``str``.

    Returns:
        The text with each ``$`` preceded by a backslash (drawn as a plain ``$``).
    """
    return str(text).replace("$", r"\$")


def name_label(name: object, width: int = _LABEL_WIDTH, lines: int = _LABEL_LINES) -> str:
    """A name as a tick label: drawn as written, wrapped so a long name keeps the axes wide.

    Args:
        name: the name (agent, policy); shown with ``str``.
        width: characters per line (words, then hyphens, then anywhere).
        lines: at most this many lines; a longer name keeps its start and its end, with
            an ellipsis between.

    Returns:
        The label, ``$`` escaped (see :func:`literal`).
    """
    text = str(name)
    wrapped = textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=True) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], "\u2026" + text[-(width - 1) :]]
    return literal("\n".join(wrapped))


def figure_format(path: str | Path) -> FigureFormat:
    """The format a figure file's suffix selects (``.png`` or ``.svg``, any case).

    Args:
        path: the file the figure is for.

    Returns:
        ``"png"`` or ``"svg"``.

    Raises:
        ValueError: any other suffix (the message names the path and the choices).
    """
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        raise ValueError(
            f"{path}: a figure file must end in .png or .svg, not {suffix or 'no suffix'!r}"
        ) from None


def render_figure(document: Mapping[str, Any], fmt: FigureFormat = "png") -> bytes:
    """The figure a bench document calls for: the frontier if it has one, else the bars.

    Args:
        document: a :func:`~apportion.sim.bench.run_bench` result, or a
            :func:`~apportion.sim.bench.frontier_document`.
        fmt: ``"png"`` or ``"svg"``.

    Returns:
        The encoded figure.
    """
    if document.get("frontier_usd"):
        return cost_frontier_figure(
            document["frontier_usd"], fmt, workload=str(document["workload"])
        )
    if document.get("frontier"):
        return frontier_figure(document["frontier"], fmt, workload=str(document["workload"]))
    return bench_figure(document, fmt)


def frontier_figure(
    frontier: Mapping[str, Any], fmt: FigureFormat = "png", *, workload: str | None = None
) -> bytes:
    """Simulated quality against the token ceiling, per policy and for the oracle.

    Args:
        frontier: the ``"frontier"`` block of
            :func:`~apportion.sim.bench.frontier_summary` (``ceilings``, ``policies``,
            ``oracle`` and optionally ``oracle_step`` and
            ``oracle_relaxed_coupling_rate``).
        fmt: ``"png"`` or ``"svg"``.
        workload: the workload's name, for the title.

    Returns:
        The encoded figure.

    Raises:
        ValueError: the frontier has no ceilings, or a series' length differs from theirs.
    """
    ceilings = [int(c) for c in frontier["ceilings"]]
    if not ceilings:
        raise ValueError("the frontier has no ceilings")
    series: dict[str, list[float]] = {
        str(name): [float(q) for q in values] for name, values in frontier["policies"].items()
    }
    oracle = [float(q) for q in frontier["oracle"]]
    for name, values in (*series.items(), ("oracle", oracle)):
        if len(values) != len(ceilings):
            raise ValueError(
                f"frontier series {name!r} has {len(values)} points for {len(ceilings)} ceilings"
            )
    fig = new_figure()
    ax = fig.add_subplot()
    colours = _colours(list(series))
    order = sorted(range(len(ceilings)), key=ceilings.__getitem__)
    xs = [ceilings[i] for i in order]
    for name, values in series.items():
        ax.plot(
            xs,
            [values[i] for i in order],
            marker="o",
            markersize=4,
            linewidth=1.6,
            color=colours[name],
            label=literal(name),
        )
    ax.plot(
        xs,
        [oracle[i] for i in order],
        linestyle="--",
        marker="s",
        markersize=4,
        linewidth=1.8,
        color=_ORACLE_COLOUR,
        label="oracle (upper bound)",
    )
    subject = f"{literal(workload)}: " if workload else ""
    ax.set_title(f"{subject}simulated quality against the token ceiling")
    ax.set_xlabel("token ceiling per request (input + output)")
    ax.set_ylabel("mean request quality (simulated)")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:,}" for x in xs])
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    steps = frontier.get("oracle_step")
    rates = frontier.get("oracle_relaxed_coupling_rate")
    note = "Quality from the workload's simulated response model, not a real model."
    if steps:
        note += f" Oracle budgets in steps of {_span(steps)} tokens"
        if rates:
            low, high = min(rates), max(rates)
            share = f"{low:.0%}" if low == high else f"{low:.0%}-{high:.0%}"
            note += f"; its relaxed upstream coupling mattered in {share} of requests"
        note += "."
    footnote(fig, note)
    return encode_figure(fig, fmt)


def cost_frontier_figure(
    frontier: Mapping[str, Any], fmt: FigureFormat = "png", *, workload: str | None = None
) -> bytes:
    """Simulated quality against the mean cost per request, per policy and for the oracle.

    One point per cost ceiling, joined in order of the ceiling (a log cost axis).

    Args:
        frontier: the ``"frontier_usd"`` block of
            :func:`~apportion.sim.bench.cost_frontier_summary`.
        fmt: ``"png"`` or ``"svg"``.
        workload: the workload's name, for the title.

    Raises:
        ValueError: no cost ceilings, or a series' length differs from theirs.
    """
    levels = [float(c) for c in frontier["ceilings_usd"]]
    if not levels:
        raise ValueError("the cost frontier has no cost ceilings")
    series = {
        str(name): ([float(c) for c in v["cost"]], [float(q) for q in v["quality"]])
        for name, v in frontier["policies"].items()
    }
    oracle = frontier["oracle"]
    points = ([float(c) for c in oracle["cost"]], [float(q) for q in oracle["quality"]])
    for name, (costs, qualities) in (*series.items(), ("oracle", points)):
        if len(costs) != len(levels) or len(qualities) != len(levels):
            raise ValueError(
                f"cost frontier series {name!r} has {len(costs)} points for {len(levels)}"
                " cost ceilings"
            )
    fig = new_figure()
    ax = fig.add_subplot()
    colours = _colours(list(series))
    for name, (costs, qualities) in series.items():
        ax.plot(
            costs,
            qualities,
            marker="o",
            markersize=4,
            linewidth=1.6,
            color=colours[name],
            label=literal(name),
        )
    ax.plot(
        *points,
        linestyle="--",
        marker="s",
        markersize=4,
        linewidth=1.8,
        color=_ORACLE_COLOUR,
        label="oracle (best plan found under both ceilings)",
    )
    if all(c > 0 for costs, _ in (*series.values(), points) for c in costs):
        ax.set_xscale("log")
    subject = f"{literal(workload)}: " if workload else ""
    ax.set_title(f"{subject}simulated quality against cost per request")
    ax.set_xlabel("mean cost per request (USD, simulated prices)")
    ax.set_ylabel("mean request quality (simulated)")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ceiling = frontier.get("ceiling")
    note = (
        "Quality from the workload's simulated response model, not a real model. One point"
        f" per cost ceiling ({', '.join(f'{c:g}' for c in levels)} USD)"
        + (f" at {int(ceiling):,} tokens." if ceiling else ".")
    )
    footnote(fig, note)
    return encode_figure(fig, fmt)


def bench_figure(result: Mapping[str, Any], fmt: FigureFormat = "png") -> bytes:
    """Simulated quality per policy at one ceiling (bars), the oracle as a dashed line.

    Args:
        result: a :func:`~apportion.sim.bench.run_bench` result (``workload``,
            ``ceiling``, ``requests``, ``oracle.quality_mean``, ``policies``).
        fmt: ``"png"`` or ``"svg"``.

    Returns:
        The encoded figure.
    """
    policies: Mapping[str, Mapping[str, Any]] = result["policies"]
    colours = _colours(list(policies))
    rows = sorted(policies.items(), key=lambda kv: -float(kv[1]["quality_mean"]))
    names = [name for name, _ in rows]
    values = [float(figures["quality_mean"]) for _, figures in rows]
    oracle: Mapping[str, Any] = result["oracle"]
    best = float(oracle["quality_mean"])
    fig = new_figure()
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), values, color=[colours[n] for n in names], width=0.6)
    ax.set_xticks(range(len(names)), [name_label(n, width=14) for n in names])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize="small")
    ax.axhline(best, linestyle="--", linewidth=1.6, color=_ORACLE_COLOUR)
    ax.annotate(
        f"oracle {best:.3f}",
        xy=(1.0, best),
        xycoords=("axes fraction", "data"),
        xytext=(-4, 4),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize="small",
        color=_ORACLE_COLOUR,
    )
    ax.set_title(
        f"{literal(result['workload'])}: simulated quality per policy "
        f"(ceiling {int(result['ceiling']):,}, {int(result['requests']):,} requests)"
    )
    ax.set_ylabel("mean request quality (simulated)")
    ax.set_ylim(0.0, 1.08)
    ax.grid(True, axis="y", alpha=0.3)
    note = "Quality from the workload's simulated response model, not a real model."
    if "step" in oracle:
        note += f" Oracle budgets in steps of {oracle['step']} tokens"
        if "relaxed_coupling_rate" in oracle:
            rate = float(oracle["relaxed_coupling_rate"])
            note += f"; its relaxed upstream coupling mattered in {rate:.0%} of requests"
        note += "."
    footnote(fig, note)
    return encode_figure(fig, fmt)


def new_figure() -> Figure:
    """A figure in the house style, on the Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def footnote(fig: Figure, text: str) -> None:
    """A note under the figure, wrapped to its width, large and dark enough to read."""
    fig.supxlabel(literal(text), fontsize=_NOTE_SIZE, color=_NOTE_COLOUR, wrap=True)


def _colours(names: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def _span(values: list[Any]) -> str:
    numbers = [int(v) for v in values]
    low, high = min(numbers), max(numbers)
    return str(low) if low == high else f"{low}-{high}"


def encode_figure(fig: Figure, fmt: FigureFormat) -> bytes:
    """Encode ``fig``; SVG output is reproducible (fixed ids, no date).

    TeX is never used, whatever the user's matplotlib settings: names are drawn as
    written (see :func:`literal`), and drawing needs no LaTeX installation.
    """
    import matplotlib
    from matplotlib.text import Text

    if fmt not in ("png", "svg"):
        raise ValueError(f"figure format must be 'png' or 'svg', not {fmt!r}")
    for text in fig.findobj(Text):
        text.set_usetex(False)
    buffer = io.BytesIO()
    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context(
        {"svg.hashsalt": "apportion", "svg.fonttype": "path", "text.usetex": False}
    ):
        fig.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()
