"""Request trees in ``apportion report``: each tree rolled up, and children by name.

One run with a parent and children (memory store, SQL sink in SQLite), through the report
command: its JSON rolls the tree up to the sum of the parent's own calls and every
descendant's, and counts how each kind of child ended.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apportion import Agent, BudgetExceeded, Controller, Pipeline
from apportion.analysis.page import report_page
from apportion.analysis.report import agent_calls, build_report
from apportion.cli import app
from apportion.telemetry import flush
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database, open_database
from policy_helpers import NoMore

PIPELINE = Pipeline(
    [Agent("lead", priority="critical"), Agent("researcher"), Agent("checker")], name="team"
)


def run_team(controller: Controller) -> str:
    """A lead with three researchers (one with a checker of its own) and a flat request.

    Tokens: lead 150 (completed); researcher 300 (completed) whose checker 200 (cut);
    researcher 380 (wrapped up) plus a refused begin; researcher 100 (completed).
    """
    with controller.request(ceiling=20_000) as req:
        g = req.begin("lead", 100, 50)
        req.finish(g, input_tokens=100, output_tokens=50)
        with req.child("researcher", ceiling=3_000) as first:
            g = first.begin("researcher", 100, 200)
            first.finish(g, input_tokens=100, output_tokens=200)
            with first.child("checker", ceiling=500) as checker:
                g = checker.begin("checker", 100, 100)
                checker.finish(g, input_tokens=100, output_tokens=100, truncated=True)
        with req.child("researcher", ceiling=3_000) as second:
            g = second.begin("researcher", 100, wrap_up_tokens=80)
            assert second.extend(g, 100) is None
            second.finish(g, input_tokens=150, output_tokens=230)
            with pytest.raises(BudgetExceeded):
                second.begin("researcher", 9_000)
        with req.child("researcher", ceiling=3_000) as third:
            g = third.begin("researcher", 50, 50)
            third.finish(g, input_tokens=50, output_tokens=50)
    with controller.request(ceiling=1_000) as flat:
        g = flat.begin("lead", 10, 10)
        flat.finish(g, input_tokens=10, output_tokens=10)
    return req.request_id


@pytest.fixture
def team_db(tmp_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'team.db'}"
    root = run_team(Controller(PIPELINE, NoMore(), telemetry=url))
    assert flush(30)
    return url, root


def test_the_report_rolls_a_tree_up_to_the_parent_and_its_children(
    team_db: tuple[str, str], tmp_path: Path
) -> None:
    url, root = team_db
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["report", url, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "request trees" in result.output and "children by name" in result.output
    trees = json.loads(out.read_text())["trees"]
    assert (trees["trees"], trees["requests"], trees["shown"]) == (1, 5, 1)
    (tree,) = trees["roots"]
    assert tree["root"] == root and tree["requests"] == 5 and tree["depth"] == 2
    kids = {k["request_id"]: k for k in tree["children"]}
    assert set(kids) == {
        f"{root}::researcher",
        f"{root}::researcher::checker",
        f"{root}::researcher#2",
        f"{root}::researcher#3",
    }
    # Rolled up: the parent's own calls plus every descendant's, from the database's calls.
    with open_database(url) as db:
        calls = [c for c in db.load().calls if c.request_id.split("::")[0] == root]
    own = tree["own"]
    assert own["tokens"] == 150 and own["calls"] == 1
    rolled = tree["rolled_up"]
    assert rolled["tokens"] == own["tokens"] + sum(k["tokens"] for k in kids.values())
    assert rolled["tokens"] == sum(c.used or 0 for c in calls) == 150 + 300 + 200 + 380 + 100
    assert rolled["calls"] == own["calls"] + sum(k["calls"] for k in kids.values()) == 5
    assert rolled["statuses"] == {"completed": 3, "wrapped_up": 1, "cut": 1, "refused": 1}
    for status in ("completed", "wrapped_up", "cut", "refused"):
        assert rolled["statuses"].get(status, 0) == own["statuses"].get(status, 0) + sum(
            k["statuses"].get(status, 0) for k in kids.values()
        )
    assert tree["consumed"] == rolled["tokens"]  # the ledger's roll-up agrees
    first = kids[f"{root}::researcher"]
    assert (first["tokens"], first["subtree_tokens"], first["ran_out"]) == (300, 500, False)
    assert kids[f"{root}::researcher#2"]["ran_out"] is True
    assert kids[f"{root}::researcher::checker"]["parent_id"] == f"{root}::researcher"
    # Per child name: how much each kind of sub-agent used, how often it ran out.
    by_name = trees["children"]
    assert set(by_name) == {"researcher", "checker"}
    researcher = by_name["researcher"]
    assert (researcher["children"], researcher["tokens"], researcher["calls"]) == (3, 780, 3)
    assert researcher["statuses"] == {"completed": 2, "wrapped_up": 1, "refused": 1}
    assert (researcher["ran_out"], researcher["ran_out_rate"]) == (1, pytest.approx(1 / 3))
    assert researcher["tokens_per_child"]["max"] == 380
    checker = by_name["checker"]
    assert (checker["children"], checker["ran_out"], checker["statuses"]) == (1, 1, {"cut": 1})


def test_flat_requests_make_no_trees(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flat.db'}"
    call = CallUsage("r1", 1, "a", used_input=1, used_output=1, truncated=False)
    with Database(url, create=True) as db:
        db.write([RequestUsage("r1", "p", 100, 2, calls=(call,))])
        report = build_report(db.load())
    assert report["trees"] == {"trees": 0, "requests": 0, "shown": 0, "roots": [], "children": {}}


def test_a_tree_whose_root_is_outside_the_period_still_rolls_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'part.db'}"
    kid = RequestUsage(
        "r::k",
        "p",
        100,
        30,
        parent_id="r",
        root_id="r",
        depth=1,
        calls=(CallUsage("r::k", 1, "a", used_input=10, used_output=20, truncated=False),),
    )
    with Database(url, create=True) as db:
        db.write([kid])
        report = build_report(db.load())
    (tree,) = report["trees"]["roots"]
    assert tree["root"] == "r" and tree["status"] is None and tree["consumed"] is None
    assert tree["rolled_up"]["tokens"] == 30 and tree["own"]["calls"] == 0


def test_the_page_shows_the_trees(team_db: tuple[str, str]) -> None:
    url, root = team_db
    with open_database(url) as db:
        data = db.load()
    report = build_report(data)
    page = report_page(report, agent_calls(c for c in data.calls if c.used is not None))
    assert "Request trees" in page and "Children by name" in page
    assert root in page and "researcher" in page


# Appended to a copy of the page: the section titles, each figure's laid-out size, each
# table's width against the box it may scroll in.
TREE_PROBE = """<script>
document.body.setAttribute("data-tables", Array.from(
  document.querySelectorAll("div.scroll"),
  (el) => el.scrollWidth + "/" + el.clientWidth
).join(" "));
document.body.setAttribute("data-sections", Array.from(
  document.querySelectorAll("h2"), (el) => el.textContent.trim()
).join("|"));
document.body.setAttribute("data-figures", Array.from(
  document.querySelectorAll("figure"),
  (el) => {
    const drawn = el.querySelector("svg, img").getBoundingClientRect();
    const caption = el.querySelector("figcaption");
    return (caption ? caption.textContent.trim() : "") + "=" +
      Math.round(drawn.width) + "x" + Math.round(drawn.height);
  }
).join("|"));
</script>"""


def test_the_tree_sections_render_in_chromium(team_db: tuple[str, str], tmp_path: Path) -> None:
    import re

    from apportion.testing.chromium import chromium_or_skip, laid_out

    browser = chromium_or_skip()
    url, root = team_db
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", url, "--html", str(page)])
    assert result.exit_code == 0, result.output
    dom = laid_out(browser, page, TREE_PROBE, tmp_path)
    sections = re.search(r'data-sections="([^"]*)"', dom)
    assert sections is not None
    titles = sections.group(1).split("|")
    assert titles.index("Children by name") < titles.index("Request trees")
    tables = re.search(r'data-tables="([^"]*)"', dom)
    assert tables is not None
    for box in tables.group(1).split():  # every table fits its box: nothing scrolls away
        scrolled, shown = map(int, box.split("/"))
        assert scrolled <= shown, tables.group(1)
    figures = re.search(r'data-figures="([^"]*)"', dom)
    assert figures is not None
    sizes = dict(entry.rsplit("=", 1) for entry in figures.group(1).split("|"))
    (children,) = [size for caption, size in sizes.items() if caption.startswith("Children")]
    width, height = map(int, children.split("x"))
    assert width > 300 and height > 150
    assert root in dom and "1 of 3 ran out" in dom


def _kid(rid: str, parent: str, root: str | None, depth: int, used: int) -> RequestUsage:
    call = CallUsage(rid, 1, "a", used_input=used, used_output=0, truncated=False)
    return RequestUsage(
        rid, "p", 100, used, parent_id=parent, root_id=root, depth=depth, calls=(call,)
    )


def test_parent_links_that_loop_do_not_hang_the_report(tmp_path: Path) -> None:
    """Ingested or hand-made records may name themselves or each other as parents."""
    url = f"sqlite:///{tmp_path / 'loops.db'}"
    records = [
        _kid("self", "self", None, 0, 1),  # its own parent, no root recorded
        _kid("a", "b", "r", 1, 10),  # a and b each other's parents, under root r
        _kid("b", "a", "r", 1, 20),
        RequestUsage("r", "p", 100, 0),
    ]
    with Database(url, create=True) as db:
        db.write(records)
        report = build_report(db.load())
    trees = {t["root"]: t for t in report["trees"]["roots"]}
    assert trees["self"]["rolled_up"]["tokens"] == 1 and trees["self"]["requests"] == 1
    assert trees["r"]["rolled_up"]["tokens"] == 30  # each request counted once
    assert trees["r"]["requests"] == 3


def test_a_deep_chain_rolls_up_each_subtree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chain.db'}"
    ids = ["r"] + ["r" + "::c" * d for d in range(1, 300)]
    records = [RequestUsage("r", "p", 10_000, 0, root_id="r")]
    records += [_kid(ids[d], ids[d - 1], "r", d, 1) for d in range(1, 300)]
    with Database(url, create=True) as db:
        db.write(records)
        report = build_report(db.load())
    (tree,) = report["trees"]["roots"]
    assert tree["depth"] == 299 and tree["rolled_up"]["tokens"] == 299
    subtree = [k["subtree_tokens"] for k in tree["children"]]
    assert subtree == list(range(299, 0, -1))
