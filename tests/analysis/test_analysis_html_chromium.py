"""The report's HTML page in a real headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from analysis_helpers import hand_records, write_hand_set
from typer.testing import CliRunner

from apportion.cli import app
from apportion.testing.chromium import chromium_or_skip, laid_out

# Appended to a copy of the page: writes each figure's laid-out size into the DOM.
PROBE = """<script>
document.body.setAttribute("data-figures", Array.from(
  document.querySelectorAll("figure svg, figure img"),
  (el) => {
    const r = el.getBoundingClientRect();
    return Math.round(r.width) + "x" + Math.round(r.height);
  }
).join(" "));
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


class _Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures = 0
        self.drawings = 0
        self.captions: list[str] = []
        self.sizes = ""
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "figure":
            self.figures += 1
        elif tag in ("svg", "img"):
            self.drawings += 1
        elif tag == "figcaption":
            self._in_caption = True
        elif tag == "body":
            self.sizes = dict(attrs).get("data-figures") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.captions.append(data)


def test_the_report_page_shows_its_figures_in_chromium(chromium: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'telemetry.db'}"
    write_hand_set(db)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", db, "--html", str(page)])
    assert result.exit_code == 0, result.output
    dom_text = laid_out(chromium, page, PROBE, tmp_path)
    dom = _Figures()
    dom.feed(dom_text)
    assert dom.figures == 4, dom_text[:2000]
    assert dom.drawings >= 4
    assert any("Utilization" in c for c in dom.captions)
    assert any("Truncation against quality" in c for c in dom.captions)
    sizes = [tuple(map(int, s.split("x"))) for s in dom.sizes.split()]
    assert len(sizes) == 4 and all(w > 200 and h > 100 for w, h in sizes), dom.sizes
    assert re.search(r"<h1>apportion report", dom_text)


# Appended to a copy of the page: each table's box against the box it may scroll in.
TABLE_PROBE = """<script>
document.body.setAttribute("data-tables", Array.from(
  document.querySelectorAll("div.scroll"),
  (el) => el.scrollWidth + "/" + el.clientWidth
).join(" "));
</script>"""

LONG_NAMES = {
    "planner": "planner-" + "x" * 52,
    "critic": "a-very-long-critic-agent-name-that-goes-on-and-on-for-60-chr",
}


def test_long_agent_names_wrap_instead_of_clipping_the_tables(
    chromium: str, tmp_path: Path
) -> None:
    import dataclasses

    from apportion.telemetry.sql import Database

    records = [
        dataclasses.replace(
            r,
            calls=tuple(
                dataclasses.replace(c, agent=LONG_NAMES.get(c.agent, c.agent)) for c in r.calls
            ),
        )
        for r in hand_records()
    ]
    db = f"sqlite:///{tmp_path / 'telemetry.db'}"
    with Database(db, create=True) as database:
        database.write(records)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", db, "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert LONG_NAMES["planner"] in page.read_text()
    dom_text = laid_out(chromium, page, TABLE_PROBE, tmp_path)
    found = re.search(r'data-tables="([^"]*)"', dom_text)
    assert found, dom_text[:2000]
    sizes = [tuple(map(int, pair.split("/"))) for pair in found.group(1).split()]
    assert len(sizes) >= 2, sizes  # the per-agent table and the quality table
    for scroll_width, client_width in sizes:
        assert scroll_width <= client_width, f"a table is clipped: {sizes}"
