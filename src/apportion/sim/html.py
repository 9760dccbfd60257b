"""Self-contained HTML pages of bench results (simulated quality).

A page made here is one file that opens offline in any browser: the CSS is inline,
figures are embedded (PNG as a base64 ``data:`` URI, SVG inline with its ids made unique
on the page), tables are plain HTML. Nothing is fetched from the network. Small print
(captions, the footer) keeps a contrast of at least 7:1 (WCAG AAA) in both colour schemes.
Numbers never wrap; a text cell (an agent's name, however long) wraps instead of widening
its table past the page.

- :func:`render_html` builds a page from a title and :class:`Section` objects, and puts a
  notice at the top that the quality on it is simulated (pass ``notice=None`` only for a
  page that shows no quality);
- :func:`bench_page` is the page of a bench: the results at one ceiling, the frontier if
  there is one, the figures and how the oracle was computed. ``apportion demo --html``
  uses it::

      from apportion.files import write_atomic
      from apportion.sim.figures import bench_figure, frontier_figure
      from apportion.sim.html import bench_page

      figures = {"Simulated quality per policy": bench_figure(result)}
      write_atomic(path, bench_page(result, None, figures))

- :func:`table`, :func:`figure` and :func:`paragraph` build the body of a custom
  :class:`Section`; they escape every text they are given.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from apportion.sim.bench import policy_cells

__all__ = [
    "SIMULATED_NOTICE",
    "Section",
    "bench_page",
    "figure",
    "paragraph",
    "render_html",
    "table",
]

SIMULATED_NOTICE: Final = (
    "All quality figures on this page are simulated: each request's token needs are drawn "
    "from the workload file and its quality comes from the workload's declared response "
    "model. No language model was called. Token budgets ran through the real controller."
)
"""The notice :func:`render_html` puts at the top of a page by default."""

_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"

_CSS: Final = """
:root { color-scheme: light dark; --fg: #1d1f21; --bg: #ffffff; --muted: #4d5156;
  --line: #d9dce0; --head: #f3f4f6; --note-bg: #fff6db; --note-line: #e5c258; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e6e6; --bg: #16181a; --muted: #a0a4a8; --line: #3a3d41;
    --head: #222528; --note-bg: #3a3220; --note-line: #8a7530; }
  figure img, figure svg { background: #ffffff; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1.5rem 1.25rem 3rem;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
h1 { font-size: 1.6rem; margin: 0 0 .75rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--line);
  padding-bottom: .25rem; }
p { margin: .5rem 0; }
.notice { background: var(--note-bg); border-left: 4px solid var(--note-line);
  padding: .6rem .9rem; margin: 0 0 1rem; }
.muted, caption, figcaption, footer { color: var(--muted); font-size: .9rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5rem 0 1rem; min-width: 50%; }
caption { caption-side: bottom; text-align: left; padding-top: .4rem; max-width: 60rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
td:not(.num) { white-space: normal; overflow-wrap: anywhere; min-width: 7rem; }
th { background: var(--head); text-align: left; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.oracle td { font-style: italic; }
figure { margin: 1rem 0; }
figure img, figure svg { max-width: 100%; height: auto; display: block; }
footer { margin-top: 2.5rem; border-top: 1px solid var(--line); padding-top: .5rem; }
"""


@dataclass(frozen=True)
class Section:
    """One titled part of a page.

    Attributes:
        heading: the section's title (plain text; escaped when rendered).
        body: the section's content, an HTML fragment. It is inserted as is: build it
            with :func:`paragraph`, :func:`table` and :func:`figure`, which escape text.
    """

    heading: str
    body: str


def paragraph(text: str, *, css_class: str | None = None) -> str:
    """A ``<p>`` of plain text (escaped).

    Args:
        text: the text.
        css_class: an optional class (``"muted"`` for small grey text).

    Returns:
        The HTML fragment.
    """
    attribute = f' class="{html.escape(css_class)}"' if css_class else ""
    return f"<p{attribute}>{html.escape(text)}</p>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    caption: str | None = None,
    numeric: Iterable[int] = (),
    row_classes: Sequence[str | None] | None = None,
) -> str:
    """An HTML table of plain values (every cell escaped).

    Args:
        headers: the column titles.
        rows: the rows; each cell is shown with ``str``.
        caption: text under the table.
        numeric: indices of columns to right-align.
        row_classes: a CSS class per row (``None``: none), e.g. ``"oracle"``.

    Returns:
        The HTML fragment (a scrollable ``<div>`` around the ``<table>``).
    """
    right = set(numeric)

    def cell(tag: str, index: int, value: object) -> str:
        attribute = ' class="num"' if index in right else ""
        return f"<{tag}{attribute}>{html.escape(str(value))}</{tag}>"

    parts = ['<div class="scroll"><table>']
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<thead><tr>")
    parts.extend(cell("th", i, h) for i, h in enumerate(headers))
    parts.append("</tr></thead><tbody>")
    for number, row in enumerate(rows):
        css = row_classes[number] if row_classes and number < len(row_classes) else None
        parts.append(f'<tr class="{html.escape(css)}">' if css else "<tr>")
        parts.extend(cell("td", i, value) for i, value in enumerate(row))
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def figure(data: bytes, *, alt: str, caption: str | None = None) -> str:
    """Embed a PNG or SVG figure (told apart by its content).

    A PNG becomes an ``<img>`` with a base64 ``data:`` URI. An SVG is inlined, without its
    XML prologue, and with its ``id`` attributes (and the references to them) prefixed so
    that several SVG figures can share a page.

    Args:
        data: the encoded figure (from :mod:`apportion.sim.figures`, or any PNG/SVG).
        alt: the text alternative (escaped).
        caption: text under the figure (escaped).

    Returns:
        The HTML fragment (a ``<figure>``).

    Raises:
        ValueError: ``data`` is neither a PNG nor an SVG.
    """
    if data.startswith(_PNG_MAGIC):
        encoded = base64.b64encode(data).decode("ascii")
        body = f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'
    else:
        body = _inline_svg(data, alt)
    under = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{body}{under}</figure>"


def render_html(
    title: str,
    sections: Iterable[Section | tuple[str, str]],
    *,
    notice: str | None = SIMULATED_NOTICE,
    footer: str | None = None,
) -> str:
    """A complete, self-contained HTML page.

    Args:
        title: the page's title and main heading (plain text, escaped).
        sections: the page's sections, in order: :class:`Section` objects or
            ``(heading, body_html)`` pairs.
        notice: a highlighted note under the heading; by default, that the quality shown
            is simulated. ``None`` leaves it out (only for pages showing no quality).
        footer: plain text for the page's foot (escaped).

    Returns:
        The HTML document, as text (write it with :func:`apportion.files.write_atomic`).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notice:
        parts.append(f'<p class="notice">{html.escape(notice)}</p>')
    for item in sections:
        section = item if isinstance(item, Section) else Section(*item)
        parts.append("<section>")
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts.append(section.body)
        parts.append("</section>")
    if footer:
        parts.append(f"<footer>{html.escape(footer)}</footer>")
    parts.extend(["</body>", "</html>", ""])
    return "\n".join(parts)


def bench_page(
    result: Mapping[str, Any],
    frontier: Mapping[str, Any] | None = None,
    figures: Mapping[str, bytes] | None = None,
    *,
    title: str | None = None,
    leading: Sequence[Section] = (),
) -> str:
    """The HTML page of a bench: results, frontier, figures and the oracle's method.

    Args:
        result: a :func:`~apportion.sim.bench.run_bench` result, or a
            :func:`~apportion.sim.bench.frontier_document` (its ``"frontier"`` is then
            used when ``frontier`` is ``None``).
        frontier: the ``"frontier"`` block of
            :func:`~apportion.sim.bench.frontier_summary`, or ``None``.
        figures: encoded figures (PNG or SVG bytes, e.g. from
            :func:`~apportion.sim.figures.bench_figure` /
            :func:`~apportion.sim.figures.frontier_figure`) by caption, shown in order.
        title: the page's title (default: the workload's name and "simulated").
        leading: sections to show first (e.g. the demo's side-by-side table).

    Returns:
        The HTML document, as text. It says the quality is simulated at the top, in every
        table caption and in the title.
    """
    if frontier is None:
        frontier = result.get("frontier") or None
    oracle: Mapping[str, Any] = result["oracle"]
    heading = title or f"{result['workload']}: token budget policies (simulated quality)"
    sections = [
        *leading,
        Section(f"Results at a ceiling of {int(result['ceiling']):,} tokens", _results(result)),
    ]
    if frontier:
        sections.append(Section("Quality against the ceiling", _frontier(frontier)))
    if figures:
        body = "".join(
            figure(data, alt=f"{name} (simulated quality)", caption=name)
            for name, data in figures.items()
        )
        sections.append(Section("Figures", body))
    about = [
        paragraph(
            "The oracle knows every request's needs and the response model, makes no "
            "extensions, and chooses all budgets of a request at once: it is the upper "
            "bound that quality / oracle divides by."
        ),
    ]
    if "discretisation" in oracle:
        about.append(paragraph(f"Discretisation: {oracle['discretisation']}."))
    if "relaxation" in oracle:
        rate = oracle.get("relaxed_coupling_rate")
        share = "" if rate is None else f" It mattered in {float(rate):.1%} of requests."
        about.append(paragraph(f"Relaxation: {oracle['relaxation']}.{share}"))
    sections.append(Section("How the oracle is computed", "".join(about)))
    footer = (
        f"apportion bench of workload {result['workload']}: {int(result['requests']):,} "
        f"requests, seed {result['seed']}. Quality is simulated."
    )
    return render_html(heading, sections, footer=footer)


def _results(result: Mapping[str, Any]) -> str:
    oracle: Mapping[str, Any] = result["oracle"]
    headers = ("policy", "quality", "/ oracle", "tokens", "cut", "crit. cut", "unspent", "ext.")
    rows: list[list[str]] = []
    policies: Mapping[str, Mapping[str, Any]] = result["policies"]
    for name, f in sorted(policies.items(), key=lambda kv: -float(kv[1]["quality_mean"])):
        rows.append([name, *policy_cells(f)])
    rows.append(
        ["oracle", f"{oracle['quality_mean']:.3f}", "100.0%", f"{oracle['tokens_mean']:,.0f}"]
        + [""] * 4
    )
    caption = (
        "quality: mean simulated request quality (the workload's response model); "
        "/ oracle: quality divided by the oracle's; tokens: consumed per request; "
        "cut: agent calls whose input or output was cut; crit. cut: the same for critical "
        "agents; unspent: ceiling minus tokens consumed; ext.: extensions per request."
    )
    if "step" in oracle:
        caption += f" Oracle budgets in steps of {oracle['step']} tokens"
        if "relaxed_coupling_rate" in oracle:
            caption += (
                ", upstream coupling relaxed (it mattered in "
                f"{float(oracle['relaxed_coupling_rate']):.1%} of requests)"
            )
        caption += "."
    return table(
        headers,
        rows,
        caption=caption,
        numeric=range(1, len(headers)),
        row_classes=[None] * (len(rows) - 1) + ["oracle"],
    )


def _frontier(frontier: Mapping[str, Any]) -> str:
    ceilings = [int(c) for c in frontier["ceilings"]]
    headers = ["policy", *(f"{c:,}" for c in ceilings)]
    policies: Mapping[str, Sequence[float]] = frontier["policies"]
    rows: list[list[str]] = [
        [name, *(f"{q:.3f}" for q in values)] for name, values in policies.items()
    ]
    rows.append(["oracle", *(f"{q:.3f}" for q in frontier["oracle"])])
    classes: list[str | None] = [None] * (len(rows) - 1) + ["oracle"]
    if frontier.get("oracle_step"):
        rows.append(["oracle step (tokens)", *(str(s) for s in frontier["oracle_step"])])
        classes.append("oracle")
    if frontier.get("oracle_relaxed_coupling_rate"):
        rows.append(
            [
                "relaxed coupling mattered",
                *(f"{r:.1%}" for r in frontier["oracle_relaxed_coupling_rate"]),
            ]
        )
        classes.append("oracle")
    return table(
        headers,
        rows,
        caption=(
            "Mean simulated request quality at each token ceiling (columns), on the same "
            "requests at every ceiling."
        ),
        numeric=range(1, len(headers)),
        row_classes=classes,
    )


_PROLOGUE: Final = re.compile(rb"^.*?(?=<svg[\s>])", re.DOTALL)
_ID: Final = re.compile(r'\bid="([^"]+)"')
_HREF: Final = re.compile(r'(href=")#')
_URL: Final = re.compile(r"url\(#")


def _inline_svg(data: bytes, alt: str) -> str:
    """The ``<svg>`` element of ``data``, ids prefixed, labelled with ``alt``."""
    start = _PROLOGUE.match(data)
    if start is None:
        raise ValueError("figure data is neither a PNG nor an SVG")
    text = data[len(start.group(0)) :].decode("utf-8").strip()
    # A prefix from the content: stable output, and distinct figures never share an id.
    prefix = f"f{hashlib.sha1(data, usedforsecurity=False).hexdigest()[:10]}-"
    text = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = _HREF.sub(lambda m: f"{m.group(1)}#{prefix}", text)
    text = _URL.sub(f"url(#{prefix}", text)
    label = html.escape(alt)
    return text.replace("<svg", f'<svg role="img" aria-label="{label}"', 1)
