"""The demo's HTML page opens with the one-request table the README opens with."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from apportion.demo import best_policy, demo_page, demo_workload, one_request
from apportion.sim.bench import frontier_document, run_frontier
from apportion.testing.chromium import chromium_or_skip, laid_out

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> list[list[str]]:
    """The README's first table: header row then body rows, markdown code marks removed."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue  # the alignment row
        rows.append(cells)
    return rows


class _Tables(HTMLParser):
    """Every table's rows of cell texts, and every h2, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self.order: list[str] = []
        self._cell: list[str] | None = None
        self._h2: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
            self.order.append("table")
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._h2 = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "h2" and self._h2 is not None:
            self.headings.append("".join(self._h2))
            self.order.append("h2")
            self._h2 = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._h2 is not None:
            self._h2.append(data)


def test_the_readme_table_is_the_demo_request() -> None:
    workload = demo_workload()
    assert workload.ceiling is not None
    _, headers, rows = one_request(workload, workload.ceiling, workload.seed, "estimate")
    assert [headers, *rows] == readme_table()


@pytest.fixture(scope="module")
def page() -> str:
    workload = demo_workload()
    assert workload.ceiling is not None
    runs = run_frontier(workload, (workload.ceiling,), requests=300, seed=workload.seed)
    document = frontier_document(runs, headline=workload.ceiling)
    assert best_policy(document) == "estimate"  # the policy the README names
    return demo_page(document, workload)


def test_the_demo_page_opens_with_the_readme_table(page: str) -> None:
    dom = _Tables()
    dom.feed(page)
    assert dom.order[:2] == ["h2", "table"], dom.order
    assert dom.headings[0].startswith("One request")
    assert dom.tables[0] == readme_table()


# Appended to a copy of the page: the first table's header, and any table wider than its box.
DEMO_PROBE = """<script>
const first = document.querySelector("table");
document.body.setAttribute("data-first", Array.from(
  first.querySelectorAll("th"), (th) => th.textContent).join("|"));
document.body.setAttribute("data-first-top", Math.round(first.getBoundingClientRect().top));
document.body.setAttribute("data-clipped", Array.from(
  document.querySelectorAll("div.scroll"), (el) => el.scrollWidth > el.clientWidth
).filter(Boolean).length);
const small = getComputedStyle(document.querySelector("footer"));
const back = getComputedStyle(document.body);
document.body.setAttribute("data-footer", [small.color, back.backgroundColor,
  small.fontSize].join("|"));
</script>"""


def _luminance(css: str) -> float:
    """Relative luminance of a computed ``rgb(r, g, b)`` colour."""
    channels = [int(v) / 255 for v in re.findall(r"\d+", css)[:3]]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_the_demo_page_in_chromium_shows_the_request_table_first(page: str, tmp_path: Path) -> None:
    browser = chromium_or_skip()
    path = tmp_path / "demo.html"
    path.write_text(page)
    dom = laid_out(browser, path, DEMO_PROBE, tmp_path, window=(1280, 900))
    first = re.search(r'data-first="([^"]*)"', dom)
    top = re.search(r'data-first-top="(\d+)"', dom)
    clipped = re.search(r'data-clipped="(\d+)"', dom)
    assert first and top and clipped, dom[:2000]
    assert first.group(1).split("|") == readme_table()[0]
    assert int(top.group(1)) < 900  # in the first screen, without scrolling
    assert clipped.group(1) == "0"
    footer = re.search(r'data-footer="([^"]*)"', dom)
    assert footer, dom[:2000]
    colour, background, size = footer.group(1).split("|")
    light, dark = sorted((_luminance(colour), _luminance(background)), reverse=True)
    assert (light + 0.05) / (dark + 0.05) >= 7.0, footer.group(1)  # WCAG AAA
    assert float(size.removesuffix("px")) >= 14.0, size
