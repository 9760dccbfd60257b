"""The report page's figures: user text shown as written, labels clear of lines and bars.

Figures are captured as matplotlib figures (before encoding) and laid out with the Agg
renderer, so the tests read the same text positions the SVG on the page has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from analysis_helpers import hand_records
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.transforms import Bbox

import apportion.analysis.figures as report_figures
from apportion.analysis.figures import ceiling_hits_figure, utilization_figure
from apportion.analysis.page import report_page
from apportion.analysis.report import build_report
from apportion.telemetry.records import CallUsage
from apportion.telemetry.sql import Dataset
from figure_helpers import box as _box
from figure_helpers import capture_figures, texts


def _renamed(mapping: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, list[CallUsage]]]:
    """The hand set's report and finished calls, its agents renamed."""
    records = []
    for r in hand_records():
        calls = tuple(dataclasses.replace(c, agent=mapping.get(c.agent, c.agent)) for c in r.calls)
        records.append(dataclasses.replace(r, calls=calls))
    calls = tuple(c for r in records for c in r.calls)
    dataset = Dataset("sqlite:///hand.db", calls, {r.request_id: r for r in records})
    usage: dict[str, list[CallUsage]] = {}
    for c in calls:
        if c.settled == "finish" and c.used is not None:
            usage.setdefault(c.agent, []).append(c)
    return build_report(dataset), usage


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure the report's figure functions encode, in order."""
    return capture_figures(monkeypatch, report_figures)


def _shown(text: Text) -> tuple[str, bool]:
    """What matplotlib draws for ``text``, and whether it reads it as mathtext."""
    shown, math = text._preprocess_math(text.get_text())
    return shown, bool(math)


DOLLARS = {"planner": "a$b$c", "critic": "$x", "writer": "a$$b"}


@pytest.mark.parametrize(
    "names",
    [DOLLARS, {"planner": "cost$_$", "critic": "$^$", "writer": "a\\$b$"}],
    ids=["pairs", "bad-mathtext"],
)
def test_agent_names_with_dollars_are_drawn_as_written(
    names: dict[str, str], drawn: list[Figure]
) -> None:
    report, usage = _renamed(names)
    page = report_page(report, usage)
    assert "<svg" in page
    assert len(drawn) == 4
    for fig in drawn:
        shown = dict(_shown(t) for t in texts(fig))
        for name in names.values():
            assert name in shown, (name, sorted(shown))
            assert shown[name] is False, f"{name!r} was read as mathtext"


def _synthetic(values: Sequence[float | None], flagged: Sequence[bool]) -> dict[str, Any]:
    """A report holding only what the bar figures read: one agent per value."""
    agents = {
        f"agent-{i}": {
            "utilization": v,
            "over_budgeted": f,
            "ceiling_hit_rate": v,
            "under_budgeted": f,
        }
        for i, (v, f) in enumerate(zip(values, flagged, strict=True))
    }
    return {"agents": agents, "thresholds": {"over_utilization": 0.5, "under_hit_rate": 0.1}}


def _overlap(a: Bbox, b: Bbox) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("draw", [utilization_figure, ceiling_hits_figure])
@pytest.mark.parametrize(
    "values",
    [
        [0.9, 0.47, 0.2],  # the top bar crosses the threshold; 47% ends just before 50%
        [0.09, 0.1, 0.12, 0.5],  # around the 10% threshold
        [1.0, None, 0.0, 0.49, 0.51],
    ],
)
def test_bar_figure_labels_sit_on_neither_the_threshold_line_nor_the_bars(
    draw: Any, values: list[float | None], drawn: list[Figure]
) -> None:
    draw(_synthetic(values, [False] * len(values)))
    (fig,) = drawn
    (ax,) = fig.axes
    fig.canvas.draw()
    lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert lines, "the threshold line is drawn"
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == len(values)
    obstacles = [_box(ln, fig).padded(1.0) for ln in lines] + [_box(b, fig) for b in bars]
    # The labels drawn in the plot: bar values, the threshold's label, a legend.
    boxes = [(t.get_text(), _box(t, fig)) for t in ax.texts if t.get_visible()]
    legend = ax.get_legend()
    if legend is not None:
        boxes.append(("legend", _box(legend, fig)))
    values_shown = {text for text, _ in boxes}
    assert len(values_shown) >= len(set(values)), values_shown  # every value is labelled
    for text, box in boxes:
        for obstacle in obstacles:
            assert not _overlap(box, obstacle), f"{text!r} at {box} overlaps {obstacle}"
    # The threshold is still said in words on the figure.
    assert any("budgeted" in t.get_text() for t in texts(fig))


LONG = {
    "planner": "planner-" + "x" * 52,
    "critic": "a-very-long-critic-agent-name-that-goes-on-and-on-for-60-chr",
}


def test_long_agent_names_keep_every_figure_text_inside_the_figure(drawn: list[Figure]) -> None:
    report, usage = _renamed(LONG)
    report_page(report, usage)
    assert len(drawn) == 4
    for fig in drawn:
        width, height = fig.bbox.width, fig.bbox.height
        for text in texts(fig):
            box = _box(text, fig)
            assert box.x0 >= -0.5 and box.x1 <= width + 0.5, (text.get_text(), box, width)
            assert box.y0 >= -0.5 and box.y1 <= height + 0.5, (text.get_text(), box, height)
        # The plot keeps room to draw: the names take well under half the width.
        left = min(ax.get_position().x0 for ax in fig.axes)
        assert left < 0.4, left


def test_no_figure_text_overlaps_another(drawn: list[Figure]) -> None:
    report, usage = _renamed(LONG)
    report_page(report, usage)
    for fig in drawn:
        boxes = [(t.get_text(), _box(t, fig)) for t in texts(fig)]
        for i, (a, box_a) in enumerate(boxes):
            for b, box_b in boxes[i + 1 :]:
                assert not _overlap(box_a, box_b), (a, b)


def test_dashed_threshold_line_is_a_line(drawn: list[Figure]) -> None:
    utilization_figure(_synthetic([0.3], [True]))
    (fig,) = drawn
    assert any(isinstance(ln, Line2D) for ln in fig.axes[0].get_lines())


def test_report_html_command_takes_agent_names_with_dollars(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from apportion.cli import app
    from apportion.telemetry.sql import Database

    names = {"planner": "a$b$c", "critic": "$x", "writer": "a$$b"}
    records = [
        dataclasses.replace(
            r,
            calls=tuple(dataclasses.replace(c, agent=names.get(c.agent, c.agent)) for c in r.calls),
        )
        for r in hand_records()
    ]
    db = f"sqlite:///{tmp_path / 'telemetry.db'}"
    with Database(db, create=True) as database:
        database.write(records)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", db, "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert all(name in text for name in names.values())
    assert text.count("<svg") == 4
