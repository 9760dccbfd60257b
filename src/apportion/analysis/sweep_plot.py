"""The figure of a critical-path sweep: quality lost against the budget kept, per agent.

Agent and target names are drawn as written (:func:`~apportion.sim.figures.literal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apportion.sim.figures import FigureFormat, encode_figure, literal, new_figure


def sweep_figure(result: Mapping[str, Any], fmt: FigureFormat = "png") -> bytes:
    """One curve per agent: mean quality lost at each fraction of its budget kept.

    Critical-path agents are drawn solid, the others dashed.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    for row in result["agents"]:
        fractions = sorted(float(f) for f in row["loss"])
        xs = [1.0, *sorted(fractions, reverse=True)]
        ys = [0.0, *(row["loss"][f"{f:g}"] for f in sorted(fractions, reverse=True))]
        style = "-" if row["critical"] else "--"
        label = f"{row['rank']}. {row['name']}" + (" (critical)" if row["critical"] else "")
        ax.plot(xs, ys, style, marker="o", label=literal(label))
    ax.invert_xaxis()
    ax.set_xlabel("fraction of its budget the agent keeps")
    kind = "simulated quality" if result.get("simulated") else "metric"
    ax.set_ylabel(f"mean {kind} lost")
    ax.set_title(f"{literal(result['target'])}: what each agent's budget is worth ({kind})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return encode_figure(fig, fmt)
