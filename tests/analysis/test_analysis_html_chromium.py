"""The report's HTML page in a real headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from analysis_helpers import hand_records, write_hand_set
from typer.testing import CliRunner

from apportion.cli import app

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


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _browser()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: CI must install Debian's chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def _dump_dom(chromium: str, tmp_path: Path, page: Path, probe: str) -> Any:
    """The DOM of ``page`` with ``probe`` appended, as headless Chromium laid it out."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2000",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


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
    done = _dump_dom(chromium, tmp_path, page, PROBE)
    dom = _Figures()
    dom.feed(done.stdout)
    assert dom.figures == 4, done.stdout[:2000]
    assert dom.drawings >= 4
    assert any("Utilization" in c for c in dom.captions)
    assert any("Truncation against quality" in c for c in dom.captions)
    sizes = [tuple(map(int, s.split("x"))) for s in dom.sizes.split()]
    assert len(sizes) == 4 and all(w > 200 and h > 100 for w, h in sizes), dom.sizes
    assert re.search(r"<h1>apportion report", done.stdout)


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
    done = _dump_dom(chromium, tmp_path, page, TABLE_PROBE)
    found = re.search(r'data-tables="([^"]*)"', done.stdout)
    assert found, done.stdout[:2000]
    sizes = [tuple(map(int, pair.split("/"))) for pair in found.group(1).split()]
    assert len(sizes) >= 2, sizes  # the per-agent table and the quality table
    for scroll_width, client_width in sizes:
        assert scroll_width <= client_width, f"a table is clipped: {sizes}"
