"""Malformed files fed to every file-taking command: one ``error:`` line, exit 2, no hang.

The corpus (about 230 files) is built from a fixed seed: truncated and garbled YAML, a
call log given to the YAML commands and YAML to the CSV ones, PNG bytes, text that is not
UTF-8, lone surrogates, nesting 100,000 deep, integers of thousands of digits, token
counts at or above 2**63, empty files, directories, missing files and YAML alias bombs.
Every command of :data:`SLOTS` gets every file that is not valid for it, in process
(click's runner on the command Typer builds from ``apportion.cli.app``, built once, with
a per-case alarm as the hang detector); a few cases also run in a real process through
``apportion.cli.main`` to show that no traceback reaches the terminal.

When a command or option is renamed, change :data:`SLOTS` only.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import click.testing
import pytest
import typer.main
import yaml

from apportion.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WORKLOAD = EXAMPLES / "workloads" / "support-triage.yaml"
PIPELINE = EXAMPLES / "pipeline.yaml"

# --------------------------------------------------------------------------- the commands


@dataclass(frozen=True)
class Slot:
    """One way a command takes a file: its arguments, ``{file}`` the file under test.

    Other placeholders: ``{pipeline}`` (a valid pipeline YAML), ``{calls}`` (a valid call
    log CSV naming its agents), ``{workload}`` (a valid workload YAML), ``{tmp}`` (a
    scratch directory). ``accepts`` names the corpus kinds valid for this slot (left out).
    """

    args: tuple[str, ...]
    accepts: frozenset[str] = frozenset()


def _slot(*args: str, accepts: str = "") -> Slot:
    return Slot(tuple(args), frozenset(accepts.split()))


SLOTS: dict[str, Slot] = {
    "validate": _slot("validate", "{file}", accepts="pipeline"),
    "bench": _slot("bench", "{file}", "--requests", "3", accepts="workload"),
    "replay": _slot("replay", "{file}", "--pipeline", "{pipeline}", accepts="calls"),
    "replay --pipeline": _slot("replay", "{calls}", "--pipeline", "{file}", accepts="pipeline"),
    "learn": _slot("learn", "{file}", "--requests", "5", accepts="workload"),
    "learn (log)": _slot(
        "learn", "{file}", "--pipeline", "{pipeline}", "--requests", "5", accepts="calls"
    ),
    "learn --pipeline": _slot(
        "learn", "{calls}", "--pipeline", "{file}", "--requests", "5", accepts="pipeline"
    ),
    "learn --warm-start": _slot(
        "learn", "{workload}", "--warm-start", "{file}", "--requests", "5", accepts="state"
    ),
    "sweep": _slot(
        "sweep", "{file}", "--requests", "2", "--cache-dir", "{tmp}/cache", accepts="workload"
    ),
    "sweep --eval": _slot(
        "sweep",
        "--runner",
        "fuzzpipe:run",
        "--metric",
        "fuzzpipe:metric",
        "--eval",
        "{file}",
        "--cache-dir",
        "{tmp}/cache",
        accepts="examples",
    ),
    "optimize": _slot(
        "optimize",
        "{file}",
        "--ceiling",
        "4000",
        "--trials",
        "1",
        "--requests",
        "2",
        accepts="workload",
    ),
    "ingest": _slot(
        "ingest", "{file}", "--into", "sqlite:///{tmp}/in.db", accepts="calls log otlp"
    ),
    "ingest --format chatdev": _slot(
        "ingest",
        "{file}",
        "--format",
        "chatdev",
        "--into",
        "sqlite:///{tmp}/in.db",
        accepts="calls log",
    ),
    "ingest --format otlp": _slot(
        "ingest", "{file}", "--format", "otlp", "--into", "sqlite:///{tmp}/in.db", accepts="otlp"
    ),
    "report": _slot("report", "{file}", accepts="db"),
    "profile": _slot("profile", "{file}", "-o", "{tmp}/budgets.yaml", accepts="db"),
}
"""Every file-taking command of ``apportion --help``, once per file it takes."""

MAX_LINE = 300
"""An error line is at most this long (it quotes at most a short excerpt of the input)."""

TIMEOUT = 10.0
"""Seconds a case may take before it counts as a hang (bad input should fail at once)."""

# --------------------------------------------------------------------------- the corpus

LOG = frozenset({"log"})  # a call log that names no pipeline's agents: fine for ingest
OTLP = frozenset({"otlp"})
DIRECTORY = b"<directory>"
MISSING = b"<missing>"


@dataclass(frozen=True)
class Case:
    """One malformed input: a file name (its suffix matters to some commands), the bytes
    (or :data:`DIRECTORY` / :data:`MISSING`), and the kinds it is valid as (usually none).
    """

    name: str
    data: bytes
    valid_as: frozenset[str] = frozenset()


FUZZ_MODULE = """
from apportion import Agent, Pipeline

PIPELINE = Pipeline([Agent("draft"), Agent("check", after=["draft"])])


def run(controller, example):
    with controller.request(ceiling=4000) as req:
        for agent in ("draft", "check"):
            grant = req.begin(agent, input_tokens=10)
            req.finish(grant, input_tokens=10, output_tokens=1)
    return 1


def metric(example, output):
    return 1.0
"""


HEADER = "run,call,agent,prompt_tokens,completion_tokens\n"
USAGE = "gen_ai.usage.input_tokens"


def _calls_csv(rows: int) -> str:
    rng = random.Random(7)
    lines = ["run,call,agent,prompt_tokens,completion_tokens"]
    agents = ("triage", "reasoner", "formatter")
    for r in range(rows):
        for c, agent in enumerate(agents, start=1):
            lines.append(f"r{r},{c},{agent},{rng.randint(50, 3000)},{rng.randint(5, 600)}")
    return "\n".join(lines) + "\n"


def _otlp(attributes: dict[str, object], **span: object) -> bytes:
    attrs = [{"key": k, "value": v} for k, v in attributes.items()]
    raw = {"traceId": "t1", "spanId": "s1", "name": "chat", "attributes": attrs, **span}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [raw]}]}]}).encode()


def _bomb(depth: int, width: int) -> bytes:
    lines = ["a0: &a0 [x, x]"]
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return ("\n".join(lines) + "\n").encode()


def _valid_as(data: bytes) -> frozenset[str]:
    """What a truncated file still is (a pipeline cut after an agent is one)."""
    from apportion import Pipeline
    from apportion.errors import SpecError

    try:
        Pipeline.from_dict(yaml.safe_load(data))
    except (SpecError, yaml.YAMLError):
        return frozenset()
    return frozenset({"pipeline"})


def corpus() -> list[Case]:
    """About 200 malformed inputs, the same on every run (seeded)."""
    rng = random.Random(15)
    workload = WORKLOAD.read_bytes()
    pipeline = PIPELINE.read_bytes()
    calls = _calls_csv(1500).encode()  # ~55 kB: a whole call log quoted would be a page
    cases: list[Case] = [
        Case("empty.yaml", b""),
        Case("empty.csv", b""),
        Case("empty.json", b""),
        Case("blank.yaml", b"  \n\n\t\n"),
        Case("null.yaml", b"~\n"),
        Case("dashes.yaml", b"---\n---\n"),
        Case("two-docs.yaml", pipeline + b"\n---\n" + pipeline),
        Case("nul.yaml", b"\x00" * 64),
        Case("nul-in-key.yaml", b"na\x00me: x\nagents: []\n"),
        Case("dir.yaml", DIRECTORY),
        Case("dir.csv", DIRECTORY),
        Case("missing.yaml", MISSING),
        Case("missing.csv", MISSING),
        Case("missing-\udcff.yaml".encode("utf-8", "surrogateescape").decode("latin-1"), MISSING),
        Case("image.png", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(2048))),
        Case("image.yaml", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(512))),
        Case("image.csv", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(512))),
        Case("image.json", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
        Case("latin1.yaml", "name: caf\xe9\nagents:\n  - name: r\xe9sum\xe9\n".encode("latin-1")),
        Case("latin1.csv", _calls_csv(2).replace("triage", "tri\xe2ge").encode("latin-1")),
        Case("utf16.yaml", pipeline.decode().encode("utf-16")),
        Case("utf16.csv", _calls_csv(2).encode("utf-16")),
        Case("utf16.json", _otlp({}).decode().encode("utf-16")),
        Case("surrogate-bytes.yaml", b"name: \xed\xa0\x80\nagents: []\n"),
        Case(
            "surrogate-bytes.csv",
            _calls_csv(1).replace("triage", "\udc80").encode("utf-8", "surrogatepass"),
        ),
        Case("surrogate-escape.yaml", b'name: "\\ud800"\nagents:\n  - name: "\\udfff"\n'),
        Case("surrogate-key.yaml", b'"\\ud800": 1\n'),
        Case("surrogate-agent.yaml", b'agents:\n  - name: a\n    after: ["\\ud800"]\n'),
        Case("surrogate.json", b'{"resourceSpans": "\\ud800"}'),
        Case(
            "surrogate-attr.json",
            _otlp({"gen_ai.agent.name": {"stringValue": "\ud800"}, USAGE: {"intValue": 1}}),
        ),
        Case("deep-flow.yaml", b"[" * 100_000),
        Case("deep-flow-closed.yaml", b"[" * 100_000 + b"]" * 100_000),
        Case("deep-map.yaml", b"{a: " * 50_000 + b"1" + b"}" * 50_000),
        Case("deep-block.yaml", "".join(" " * i + "- \n" for i in range(0, 4000, 2)).encode()),
        Case("deep.json", b"[" * 100_000 + b"]" * 100_000),
        Case("deep-object.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        Case("deep-lines.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n{}\n"),
        Case("deep.csv", b"run,call,agent,prompt_tokens,completion_tokens\n" + b"[" * 100_000),
        Case("long-line.yaml", b"a" * 200_000 + b": 1\n"),
        Case("long-key.yaml", b"name: x\n" + b"k" * 100_000 + b": 1\nagents: []\n"),
        Case("long-value.yaml", b"name: " + b"v" * 200_000 + b"\nagents: 5\n"),
        Case(
            "long-agent.yaml", b"agents:\n  - name: " + b"n" * 100_000 + b"\n    priority: nope\n"
        ),
        Case("long-after.yaml", b"agents:\n  - name: a\n    after: [" + b"b" * 100_000 + b"]\n"),
        Case(
            "long-cell.csv",
            b"run,call,agent,prompt_tokens,completion_tokens\nr,1,a," + b"9" * 100_000 + b",1\n",
        ),
        Case(
            "long-field.csv",
            b"run,call,agent,prompt_tokens,completion_tokens\nr,1," + b"a" * 200_000 + b",1,1\n",
        ),
        Case("long-column.csv", b"x" * 100_000 + b",run\n1,2\n"),
        Case("alias-bomb.yaml", _bomb(9, 9)),
        Case("alias-bomb-wide.yaml", _bomb(5, 60)),
        Case("alias-bomb-in-agents.yaml", _bomb(9, 9) + b"agents: *a8\n"),
        Case(
            "alias-bomb-map.yaml",
            b"a: &a {x: 1, y: 1}\n"
            + b"".join(
                b"b%d: &b%d {%s}\n"
                % (
                    i,
                    i,
                    b", ".join(
                        b"k%d: *%s" % (k, b"a" if i == 0 else b"b%d" % (i - 1)) for k in range(9)
                    ),
                )
                for i in range(8)
            ),
        ),
        Case("alias-self.yaml", b"a: &a [*a]\n"),
        Case("alias-undefined.yaml", b"name: *nope\n"),
        Case("merge-bad.yaml", b"a: &a 5\nb:\n  <<: *a\n"),
        Case("merge-list.yaml", b"a: &a {name: x}\n<<: [*a, *a, 3]\n"),
        Case("tag-python.yaml", b"name: !!python/object/apply:os.system ['true']\n"),
        Case("tag-custom.yaml", b"name: !custom x\nagents: []\n"),
        Case("tag-binary.yaml", b"name: !!binary aGVsbG8=\nagents:\n  - name: a\n"),
        Case("tag-set.yaml", b"agents: !!set {a, b}\n"),
        Case("tag-timestamp.yaml", b"name: 2020-01-01\nagents:\n  - name: 2020-01-01T00:00:00\n"),
        Case("tag-omap.yaml", b"agents: !!omap [{a: 1}, {b: 2}]\n"),
        Case("tag-float-key.yaml", b"? !!float 1.5\n: x\n"),
        Case("key-list.yaml", b"? [a, b]\n: c\n"),
        Case("key-map.yaml", b"? {a: 1}\n: c\n"),
        Case("key-null.yaml", b"~: 1\n"),
        Case("key-int.yaml", b"1: 2\n"),
        Case("dup-key.yaml", b"name: a\nname: b\nagents: []\n"),
        Case("scalar.yaml", b"just a string\n"),
        Case("number.yaml", b"42\n"),
        Case("list.yaml", b"- a\n- b\n"),
        Case("tab-indent.yaml", b"name: x\nagents:\n\t- name: a\n"),
        Case("bad-indent.yaml", b"name: x\n  agents:\n - name: a\n"),
        Case("unclosed-quote.yaml", b'name: "abc\nagents: []\n'),
        Case("unclosed-flow.yaml", b"agents: [{name: a, after: [b}\n"),
        Case("bom.yaml", b"\xef\xbb\xbf" + b"name: 5\nagents: 7\n"),
        Case("crlf-garbage.yaml", b"name: x\r\r\n\ragents:\r - \x7f\x1b[31m\n"),
        Case("ansi.yaml", b"name: \x1b[2J\x1b[31mred\nagents: 1\n"),
        Case("rich-markup.yaml", b"name: '[bold red]x[/]'\nagents: '[link=x]y[/link]'\n"),
    ]
    # integers of thousands of digits, and huge or negative counts, in each format
    for digits in (4000, 5000):
        big = b"9" * digits
        cases += [
            Case(f"int{digits}.yaml", big + b"\n"),
            Case(
                f"int{digits}-ceiling.yaml", workload.replace(b"ceiling: 20000", b"ceiling: " + big)
            ),
            Case(f"int{digits}-median.yaml", workload.replace(b"median: 12", b"median: " + big)),
            Case(f"int{digits}-max-output.yaml", pipeline.replace(b"4096", big)),
            Case(
                f"int{digits}.csv",
                _calls_csv(1).replace(",1,triage,", ",1,triage," + "9" * digits + "0,", 1).encode(),
            ),
            Case(
                f"int{digits}-call.csv",
                _calls_csv(1).replace("r0,1,", "r0," + "9" * digits + ",", 1).encode(),
            ),
            Case(
                f"int{digits}.json",
                _otlp({"gen_ai.agent.name": {"stringValue": "a"}}).replace(
                    b'"attributes"', b'"startTimeUnixNano": ' + big + b', "attributes"'
                ),
            ),
            Case(
                f"int{digits}-tokens.json",
                _otlp(
                    {
                        "gen_ai.agent.name": {"stringValue": "a"},
                        "gen_ai.usage.input_tokens": {"intValue": "9" * digits},
                    }
                ),
            ),
            Case(f"int{digits}-raw.json", b'{"resourceSpans": ' + big + b"}"),
        ]
    for value in (2**63, 10**30, -1):
        text = str(value)
        cases += [
            Case(f"tokens{text}.csv", f"{HEADER}r,1,triage,{text},1\n".encode()),
            Case(
                f"tokens{text}.json",
                _otlp(
                    {
                        "gen_ai.agent.name": {"stringValue": "a"},
                        "gen_ai.usage.output_tokens": {"intValue": text},
                    }
                ),
            ),
            Case(
                f"tokens{text}-int.json",
                _otlp(
                    {
                        "gen_ai.agent.name": {"stringValue": "a"},
                        "gen_ai.usage.input_tokens": {"intValue": value},
                    }
                ),
            ),
            Case(
                f"grant{text}.json",
                _otlp(
                    {
                        "gen_ai.agent.name": {"stringValue": "a"},
                        "gen_ai.usage.input_tokens": {"intValue": 5},
                        "apportion.grant.id": {"intValue": value},
                    }
                ),
            ),
            Case(
                f"time{text}.json",
                _otlp(
                    {"gen_ai.agent.name": {"stringValue": "a"}, USAGE: {"intValue": 5}},
                    startTimeUnixNano=str(abs(value)),
                ),
                OTLP if abs(value) < 2**63 else frozenset(),
            ),
            Case(
                f"ceiling{text}.yaml",
                workload.replace(b"ceiling: 20000", f"ceiling: {text}".encode()),
            ),
            Case(
                f"requests{text}.yaml",
                workload.replace(b"requests: 1000", f"requests: {text}".encode()),
            ),
            Case(f"seed{text}.yaml", workload.replace(b"seed: 7", f"seed: {text}".encode())),
            Case(
                f"typical{text}.yaml",
                pipeline.replace(
                    b"min_output: 64", f"min_output: 64\n    typical_input: {text}".encode()
                ),
            ),
        ]
    # floats that do not fit
    for text in ("1e400", "-1e400", ".nan", ".inf", "1e308"):
        cases.append(
            Case(f"float{text}.yaml", workload.replace(b"noise: 0.3", f"noise: {text}".encode()))
        )
    cases.append(
        Case("float-estimator.yaml", pipeline.replace(b"per_input: 0.05", b"per_input: 1e400"))
    )
    cases += [
        Case("int100000.yaml", b"9" * 100_000 + b"\n"),
        Case("int100000.csv", f"{HEADER}r,1,triage,{'9' * 100_000},1\n".encode()),
        Case(f"tokens{2**63 - 1}.csv", f"{HEADER}r,1,triage,{2**63 - 1},1\n".encode()),
        Case(
            f"tokens{2**63 - 1}.json",
            _otlp({"gen_ai.agent.name": {"stringValue": "a"}, USAGE: {"intValue": 2**63 - 1}}),
        ),
        Case(
            "median-huge.yaml",
            workload.replace(b"median: 12, p90: 40", b"median: 1e300, p90: 1e301"),
        ),
        Case("base-huge.yaml", workload.replace(b"base: 600", b"base: 1e300")),
        Case(
            "price-huge.yaml",
            (EXAMPLES / "workloads" / "routing.yaml")
            .read_bytes()
            .replace(b"input_price:", b"input_price: 1e400 #"),
        ),
    ]
    # one format given to the commands of another
    cases += [
        Case("calls.yaml", calls, frozenset({"calls"})),
        Case("calls.csv", calls, frozenset({"calls"})),
        Case("calls", calls, frozenset({"calls"})),
        Case("workload.csv", workload, frozenset({"workload"})),
        Case("workload.json", workload, frozenset({"workload"})),
        Case("workload.yaml", workload, frozenset({"workload"})),
        Case("pipeline.csv", pipeline, frozenset({"pipeline"})),
        Case("pipeline.yaml", pipeline, frozenset({"pipeline"})),
        Case(
            "otlp.yaml",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "gen_ai.usage.input_tokens": {"intValue": 5},
                }
            ),
            frozenset({"otlp"}),
        ),
        Case("otlp.csv", _otlp({"gen_ai.agent.name": {"stringValue": "a"}}), OTLP),
        Case("script.py", FUZZ_MODULE.encode()),
        Case(
            "sqlite-header.yaml",
            b"SQLite format 3\x00" + bytes(rng.randrange(256) for _ in range(1000)),
        ),
        Case(
            "sqlite-header.db",
            b"SQLite format 3\x00" + bytes(rng.randrange(256) for _ in range(4096)),
        ),
        Case("garbage.db", bytes(rng.randrange(256) for _ in range(4096))),
        Case("text.db", b"hello\n"),
    ]
    # CSV and JSON shapes
    header = b"run,call,agent,prompt_tokens,completion_tokens\n"
    cases += [
        Case("header-only.csv", header),
        Case("missing-column.csv", b"run,call,agent\nr,1,a\n"),
        Case("dup-column.csv", b"run,run,call,agent,prompt_tokens,completion_tokens\n"),
        Case("many-columns.csv", ",".join(f"c{i}" for i in range(30_000)).encode() + b"\n1\n"),
        Case("many-dup-columns.csv", b"run," * 30_000 + b"\n"),
        Case("unterminated.csv", header + b'r,1,"a\n'),
        Case("extra-fields.csv", header + b"r,1,a,1,1,1,1\n"),
        Case("float-tokens.csv", header + b"r,1,a,1.5,1\n"),
        Case("exp-tokens.csv", header + b"r,1,a,1e3,1\n"),
        Case("empty-cell.csv", header + b"r,1,a,,1\n"),
        Case("arabic-digits.csv", header + "r,1,a,\u0663,1\n".encode()),
        Case("fullwidth-digits.csv", header + "r,1,a,\uff11,1\n".encode()),
        Case("semicolons.csv", b"run;call;agent;prompt_tokens;completion_tokens\nr;1;a;1;1\n"),
        Case("nul.csv", header + b"r,1,a\x00,1,1\n", LOG),
        Case("cr-only.csv", header.replace(b"\n", b"\r") + b"r,1,a,1,1\r", LOG),
        Case("unknown-agent.csv", header + b"r,1,nobody,1,1\n", LOG),
        Case("json-list.json", b"[]", OTLP),
        Case("json-object.json", b"{}"),
        Case("json-string.json", b'"resourceSpans"'),
        Case("json-number.json", b"1e400"),
        Case("json-nan.json", b'{"resourceSpans": NaN}'),
        Case("json-spans-int.json", b'{"resourceSpans": 5}'),
        Case("json-spans-null.json", b'{"resourceSpans": [null]}'),
        Case("json-scope-str.json", b'{"resourceSpans": [{"scopeSpans": "x"}]}'),
        Case("json-span-list.json", b'{"resourceSpans": [{"scopeSpans": [{"spans": [[1]]}]}]}'),
        Case("json-resource-str.json", b'{"resourceSpans": [{"resource": "x", "scopeSpans": []}]}'),
        Case(
            "json-attrs-str.json",
            json.dumps(
                {
                    "resourceSpans": [
                        {
                            "resource": {"attributes": 5},
                            "scopeSpans": [
                                {"spans": [{"traceId": "t", "spanId": "s", "attributes": "x"}]}
                            ],
                        }
                    ]
                }
            ).encode(),
            OTLP,
        ),
        Case(
            "json-array-value.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"arrayValue": 5},
                    "gen_ai.usage.input_tokens": {"intValue": 1},
                }
            ),
            OTLP,
        ),
        Case(
            "json-agent-int.json",
            _otlp(
                {"gen_ai.agent.name": {"intValue": 5}, "gen_ai.usage.input_tokens": {"intValue": 1}}
            ),
            OTLP,
        ),
        Case(
            "json-tokens-str.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "gen_ai.usage.input_tokens": {"stringValue": "many"},
                }
            ),
        ),
        Case(
            "json-tokens-float.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "gen_ai.usage.input_tokens": {"doubleValue": 1e300},
                }
            ),
        ),
        Case(
            "json-tokens-list.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "gen_ai.usage.input_tokens": {"arrayValue": {"values": [1]}},
                }
            ),
        ),
        Case(
            "json-cost-huge.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "gen_ai.usage.input_tokens": {"intValue": 1},
                    "apportion.cost_usd": {"stringValue": "1e999"},
                }
            ),
        ),
        Case(
            "json-cost-nan.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "gen_ai.usage.input_tokens": {"intValue": 1},
                    "apportion.cost_usd": {"stringValue": "nan"},
                }
            ),
        ),
        Case(
            "json-reasons-map.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "gen_ai.usage.input_tokens": {"intValue": 1},
                    "gen_ai.response.finish_reasons": {"kvlistValue": {}},
                }
            ),
            OTLP,
        ),
        Case(
            "json-time-neg.json",
            _otlp({"gen_ai.agent.name": {"stringValue": "a"}}, startTimeUnixNano=-5),
        ),
        Case(
            "json-time-float.json",
            _otlp({"gen_ai.agent.name": {"stringValue": "a"}}, startTimeUnixNano=1e400),
        ),
        Case(
            "json-ids-int.json",
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 1, "spanId": 2}]}]}]}',
        ),
        Case(
            "json-schema-new.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "apportion.schema_version": {"intValue": 99},
                }
            ),
        ),
        Case(
            "json-schema-huge.json",
            _otlp(
                {
                    "gen_ai.agent.name": {"stringValue": "a"},
                    "apportion.schema_version": {"intValue": "9" * 5000},
                }
            ),
        ),
        Case("jsonl-bad-second.jsonl", _otlp({}) + b"\n{not json\n"),
        Case("json-in-yaml.yaml", b'{"name": "x", "agents": [{"name": 5}]}'),
        Case(
            "json-nul.json",
            _otlp(
                {"gen_ai.agent.name": {"stringValue": "a\x00"}, USAGE: {"intValue": 1}},
                traceId="t\x00",
                name="apportion.request",
            ),
            OTLP,
        ),
    ]
    # wrong shapes of otherwise valid YAML
    cases += [
        Case("agents-int.yaml", b"name: x\nagents: 5\n"),
        Case("agents-str.yaml", b"name: x\nagents: abc\n"),
        Case("agents-ints.yaml", b"name: x\nagents: [1, 2]\n"),
        Case("agents-empty.yaml", b"name: x\nagents: []\n"),
        Case("name-list.yaml", b"name: [a]\nagents: [{name: a}]\n"),
        Case(
            "after-cycle.yaml", b"agents:\n  - {name: a, after: [b]}\n  - {name: b, after: [a]}\n"
        ),
        Case(
            "after-unknown.yaml",
            b"agents:\n"
            + b"".join(b"  - {name: agent%d}\n" % i for i in range(1000))
            + b"  - {name: z, after: [nobody]}\n",
        ),
        Case("dup-agents.yaml", b"agents:\n" + b"  - {name: a}\n" * 3),
        Case("workload-no-agents.yaml", workload.split(b"agents:")[0]),
        Case("workload-unknown-key.yaml", workload + b"bogus: 1\n"),
        Case("workload-bad-feature.yaml", workload.replace(b"{messages: 20}", b"{nosuch: 20}", 1)),
        Case("workload-as-list.yaml", b"- " + workload.replace(b"\n", b"\n  ")),
        Case("state.json", b'{"format": "apportion.policy", "version": 99}'),
        Case("state-list.json", b"[1, 2, 3]"),
        Case("state-learn-json.json", b'{"state": 5}'),
        Case("examples-str.jsonl", b'"x"\n'),
    ]
    # truncated and garbled copies of valid files
    for source, base in ((workload, "workload"), (pipeline, "pipeline"), (calls[:4000], "calls")):
        suffix = "csv" if base == "calls" else "yaml"
        for k in range(4):
            cut = rng.randrange(1, len(source) // 2)
            cases.append(Case(f"{base}-cut{k}.{suffix}", source[:cut], _valid_as(source[:cut])))
        for k in range(4):
            data = bytearray(source)
            for _ in range(rng.randrange(1, 12)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cases.append(Case(f"{base}-garbled{k}.{suffix}", bytes(data)))
    return [
        replace(c, valid_as=c.valid_as | {"examples"}) if _examples(c.data) else c for c in cases
    ]


def _examples(data: bytes) -> bool:
    """Whether ``data`` is a valid examples file: JSON objects, one a line."""
    try:
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        return bool(lines) and all(isinstance(json.loads(line), dict) for line in lines)
    except ValueError:  # not UTF-8, not JSON, or an integer past Python's digit limit
        return False
    except RecursionError:
        return False


CORPUS = corpus()

# --------------------------------------------------------------------------- running


class Hang(BaseException):
    """A case ran past :data:`TIMEOUT` (a BaseException: the runner does not swallow it)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The corpus on disk, and the valid companions the slots name."""
    root = tmp_path_factory.mktemp("fuzz")
    corpus_dir = root / "corpus"
    corpus_dir.mkdir()
    paths: dict[str, Path] = {}
    for case in CORPUS:
        path = corpus_dir / case.name
        if case.data == DIRECTORY:
            path.mkdir()
        elif case.data != MISSING:
            path.write_bytes(case.data)
        paths[case.name] = path
    (root / "calls.csv").write_text(_calls_csv(3))
    (root / "fuzzpipe.py").write_text(textwrap.dedent(FUZZ_MODULE))
    sys.path.insert(0, str(root))
    yield {"root": root, **paths}
    sys.path.remove(str(root))
    sys.modules.pop("fuzzpipe", None)


def _args(slot: Slot, file: Path, root: Path) -> list[str]:
    values = {
        "file": str(file),
        "pipeline": str(PIPELINE),
        "calls": str(root / "calls.csv"),
        "workload": str(WORKLOAD),
        "tmp": str(root),
    }
    return [arg.format(**values) for arg in slot.args]


@functools.cache
def _command() -> click.Command:
    """The click command of ``app``, built once (Typer's runner rebuilds it every call)."""
    return typer.main.get_command(app)


def _run(args: list[str]) -> tuple[int | None, str, BaseException | None]:
    """Run the CLI in process under an alarm; (exit code, output, unexpected exception)."""

    def alarm(signum: int, frame: object) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        result = click.testing.CliRunner().invoke(_command(), args)
    except Hang:
        return None, "", Hang()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.output, unexpected


def _problem(code: int | None, output: str, unexpected: BaseException | None) -> str | None:
    """What is wrong with one run's outcome, or None."""
    if isinstance(unexpected, Hang):
        return f"hang (over {TIMEOUT:g} s)"
    if unexpected is not None:
        return f"raised {type(unexpected).__name__}: {str(unexpected)[:120]}"
    lines = [line for line in output.splitlines() if line.strip()]
    if "Traceback" in output:
        return "printed a traceback"
    if code != 2:
        return f"exit code {code} (wanted 2); output: {output[:160]!r}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"{len(lines)} lines, wanted one 'error:' line: {output[:160]!r}"
    if len(lines[0]) > MAX_LINE:
        return f"error line of {len(lines[0]):,} characters: {lines[0][:120]!r}..."
    return None


@pytest.mark.parametrize("slot_name", sorted(SLOTS))
def test_every_malformed_file_gives_one_error_line(
    slot_name: str, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files["root"])
    slot = SLOTS[slot_name]
    problems = []
    for case in CORPUS:
        if case.valid_as & slot.accepts:
            continue
        outcome = _run(_args(slot, files[case.name], files["root"]))
        problem = _problem(*outcome)
        if problem is not None:
            problems.append(f"{case.name}: {problem}")
    assert not problems, f"{len(problems)} of {len(CORPUS)} files:\n" + "\n".join(problems)


def test_corpus_is_about_two_hundred_files() -> None:
    assert 190 <= len(CORPUS) <= 260
    assert len({case.name for case in CORPUS}) == len(CORPUS)


# A slot whose arguments drifted from the CLI (a renamed option) would fail every case
# with a usage error: each slot must accept a valid file.
VALID = {
    "validate": PIPELINE,
    "bench": WORKLOAD,
    "replay --pipeline": PIPELINE,
    "learn --pipeline": PIPELINE,
    "optimize": WORKLOAD,
}


@pytest.mark.parametrize("slot_name", sorted(VALID))
def test_each_slot_takes_a_valid_file(
    slot_name: str, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files["root"])
    code, output, unexpected = _run(_args(SLOTS[slot_name], VALID[slot_name], files["root"]))
    assert unexpected is None and code == 0, output


SUBPROCESS_CASES = [
    ("validate", "image.png"),
    ("bench", "calls.yaml"),
    ("ingest", "tokens9223372036854775808.json"),
    ("validate", "alias-bomb.yaml"),
    ("bench", "deep-flow.yaml"),
]


@pytest.mark.parametrize(("slot_name", "case_name"), SUBPROCESS_CASES)
def test_real_process_prints_one_line(
    slot_name: str, case_name: str, files: dict[str, Path]
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = "from apportion.cli import main; main()"
    args = _args(SLOTS[slot_name], files[case_name], files["root"])
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=files["root"],
    )
    problem = _problem(done.returncode, done.stdout + done.stderr, None)
    assert problem is None, problem


def test_an_unexpected_exception_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("APPORTION_DEBUG", None)
    script = (
        "import apportion.spec, apportion.cli\n"
        "def broken(path): raise KeyError('x' * 10_000)\n"
        "apportion.spec.Pipeline.from_yaml = broken\n"
        "apportion.cli.main()\n"
    )
    args = [sys.executable, "-c", script, "validate", str(PIPELINE)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: internal error (KeyError: ") and len(lines[0]) < MAX_LINE
    shown = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={**env, "APPORTION_DEBUG": "1"}
    )
    assert "Traceback" in shown.stderr
