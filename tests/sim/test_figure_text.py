"""Figures' text: footnotes readable, names drawn as written, rollout labels apart.

Texts are measured on the laid-out matplotlib figure (Agg renderer): the positions the
encoded PNG or SVG has.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

import apportion.sim.figures as sim_figures
from apportion.sim.figures import bench_figure, cost_frontier_figure, frontier_figure
from figure_helpers import box, capture_figures, texts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure :mod:`apportion.sim.figures` encodes, in order."""
    return capture_figures(monkeypatch, sim_figures)


def overlap(a: Bbox, b: Bbox) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def contrast(colour: Any) -> float:
    """WCAG contrast ratio of ``colour`` against white."""
    from matplotlib.colors import to_rgb

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in to_rgb(colour))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return 1.05 / (luminance + 0.05)


FRONTIER = {
    "ceilings": [10_000, 20_000, 30_000],
    "policies": {"uniform": [0.1, 0.3, 0.5], "estimate": [0.4, 0.9, 1.0]},
    "oracle": [0.6, 0.99, 1.0],
    "oracle_step": [100, 200, 300],
    "oracle_relaxed_coupling_rate": [0.0, 0.0, 0.0],
}


def test_the_frontier_footnote_is_large_and_dark_enough_to_read(drawn: list[Figure]) -> None:
    frontier_figure(FRONTIER, "svg", workload="seed-scenario")
    (fig,) = drawn
    notes = [t for t in texts(fig) if t.get_text().startswith("Quality from the workload")]
    assert len(notes) == 1
    (note,) = notes
    # The figure is shown about 880 px wide on the page: 9 pt is about 12 px there.
    assert note.get_fontsize() >= 9.0
    assert contrast(note.get_color()) >= 7.0  # WCAG AAA for small text
    fig_box = fig.bbox
    note_box = box(note, fig)
    assert note_box.x0 >= 0 and note_box.x1 <= fig_box.width  # wrapped within the figure


DOLLAR_NAMES = ["a$b$c", "$x", "a$$b", "cost$_$"]


def _literal(fig: Figure) -> dict[str, bool]:
    shown: dict[str, bool] = {}
    for text in texts(fig):
        words, math = text._preprocess_math(text.get_text())
        shown[words] = bool(math)
    return shown


def test_policy_and_workload_names_with_dollars_are_drawn_as_written(
    drawn: list[Figure],
) -> None:
    frontier = {
        "ceilings": [10_000, 20_000],
        "policies": {name: [0.2, 0.4] for name in DOLLAR_NAMES},
        "oracle": [0.5, 0.9],
    }
    frontier_figure(frontier, "png", workload="w$$")
    result = {
        "workload": "w$$",
        "ceiling": 20_000,
        "requests": 10,
        "oracle": {"quality_mean": 0.9},
        "policies": {name: {"quality_mean": 0.5} for name in DOLLAR_NAMES},
    }
    bench_figure(result, "svg")
    cost = {
        "ceilings_usd": [0.01, 0.02],
        "policies": {name: {"cost": [0.01, 0.02], "quality": [0.3, 0.4]} for name in DOLLAR_NAMES},
        "oracle": {"cost": [0.01, 0.02], "quality": [0.5, 0.6]},
    }
    cost_frontier_figure(cost, "svg", workload="$w")
    assert len(drawn) == 3
    for fig in drawn:
        shown = _literal(fig)
        for name in DOLLAR_NAMES:
            assert shown.get(name) is False, (name, shown)
        assert any(text.startswith(("w$$", "$w")) for text in shown), shown


def _rollout_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rollout_example", ROOT / "examples" / "rollout.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(status: str, events: list[tuple[str, int, float]], length: int) -> Any:
    """A rollout as the example's figure reads it, and its shares per request."""
    rollout = SimpleNamespace(
        status=status,
        events=[SimpleNamespace(kind=k, seen=s, share=v) for k, s, v in events],
    )
    shares = [0.01] * length
    for _, seen, share in events:
        shares[seen - 1 :] = [share] * (length - seen + 1)
    return rollout, shares


def test_the_rollout_figure_labels_do_not_overlap() -> None:
    example = _rollout_example()
    worse = [("start", 1, 0.01), ("hold", 1800, 0.01), ("rollback", 2080, 0.0)]
    better = [
        ("start", 1, 0.01),
        ("hold", 1500, 0.01),
        ("hold", 1560, 0.01),
        ("promote", 2180, 0.05),
        ("promote", 2840, 0.25),
        ("hold", 2900, 0.25),
        ("promote", 2960, 0.5),
        ("promote", 3020, 1.0),
        ("complete", 3020, 1.0),
    ]
    runs = {
        "uniform (worse)": _run("rolled_back", worse, 2080),
        "estimate (better)": _run("complete", better, 3020),
    }
    fig = example.figure(runs)
    drawn = [(t.get_text(), box(t, fig)) for t in texts(fig)]
    width, height = fig.bbox.width, fig.bbox.height
    for i, (a, box_a) in enumerate(drawn):
        assert box_a.x0 >= -0.5 and box_a.x1 <= width + 0.5, (a, box_a)
        assert box_a.y0 >= -0.5 and box_a.y1 <= height + 0.5, (a, box_a)
        for b, box_b in drawn[i + 1 :]:
            assert not overlap(box_a, box_b), (a, b)
    words = " ".join(text for text, _ in drawn)
    for kind in ("promote", "hold", "rollback", "complete"):
        assert kind in words  # every kind of decision is named on the figure


def test_sweep_figure_draws_agent_and_target_names_as_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import apportion.analysis.sweep_plot as sweep_plot

    figures: list[Figure] = []
    encode = sweep_plot.encode_figure

    def capture(fig: Figure, fmt: Any) -> bytes:
        figures.append(fig)
        return encode(fig, fmt)

    monkeypatch.setattr(sweep_plot, "encode_figure", capture)
    result = {
        "target": "t$$",
        "simulated": True,
        "agents": [
            {"rank": i + 1, "name": name, "critical": i == 0, "loss": {"0.5": 0.1, "0.25": 0.3}}
            for i, name in enumerate(DOLLAR_NAMES)
        ],
    }
    sweep_plot.sweep_figure(result, "svg")
    (fig,) = figures
    shown = _literal(fig)
    assert shown.get("1. a$b$c (critical)") is False, shown
    assert shown.get("3. a$$b") is False, shown
    assert any(text.startswith("t$$:") for text in shown), shown


def test_the_learning_figure_draws_names_as_written(drawn: list[Figure]) -> None:
    from apportion.cli.learn import learning_figure

    curve = [{"requests": 10, "quality_vs_oracle": 0.5}, {"requests": 20, "quality_vs_oracle": 0.7}]
    common = {"curve": curve, "best_rule_policy": "a$$b", "best_rule_quality_vs_oracle": 0.6}
    learning_figure({**common, "workload": "cost$_$", "ceiling": 9000}, "svg")
    learning_figure(
        {**common, "source": "log", "pipeline": "$x", "ceiling": 9000, "ceiling_ratio": None}, "svg"
    )
    assert len(drawn) == 2
    for fig in drawn:
        shown = _literal(fig)
        assert not any(shown.values()), shown
    assert any("a$$b" in text for text in _literal(drawn[0]))
