"""Traffic logged before apportion, into a telemetry database (``apportion ingest``).

Two formats, both turned into the :class:`~apportion.telemetry.records.RequestUsage`
records the SQL sink writes, so ``apportion report`` and ``apportion profile`` read them
like any other telemetry:

**ChatDev call logs** (CSV; see ``apportion replay`` for the format: ``run``, ``call``,
``agent``, ``prompt_tokens``, ``completion_tokens``, optional ``split`` and
``max_tokens``). One run is one request (its id is the run's name); each call is a grant
numbered by ``call``. When the call logged its ``max_tokens`` cap, the grant is the prompt
plus that cap and the call is truncated when ``completion_tokens >= max_tokens``;
otherwise the grant and the truncation are unknown (``NULL``) and the report says
``unknown`` for utilization and ceiling hits. No times are logged: ``--since`` leaves
such calls out. The split goes to the request's features.

**OpenTelemetry GenAI spans** (OTLP JSON: one ``{"resourceSpans": [...]}`` document, or
one per line as the collector's file exporter writes them). Every span with
``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens`` (or an
``apportion.grant.id``) is a call; its agent is ``gen_ai.agent.name``, on the span or on
its nearest ancestor (an ``invoke_agent`` span); spans without an agent are skipped and
counted. A request is the ``apportion.request.id`` of the spans, or their trace. The grant
is ``apportion.grant.context_tokens``/``output_tokens`` when apportion wrote the spans,
else the prompt plus ``gen_ai.request.max_tokens`` when that is known; the call is
truncated when ``apportion.truncated`` says so, or when a finish reason is ``length`` (or
``max_tokens``). The agent kind that budgeted a name not listed in the pipeline is
``apportion.agent.kind`` (the OTel sink writes it; ``None`` when absent). Spans written
by a newer apportion (``apportion.schema_version``) are
refused. A request span of a request tree (``apportion.request.parent_id``, ``root_id``,
``depth``) keeps its place in the tree, and is kept even without calls of its own (an
orchestrator that only fanned out).

Every mistake raises :class:`~apportion.errors.SpecError` naming the file, the line and
the field (CSV column, or the span attribute's path) before anything is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from apportion.calls import STATUSES
from apportion.errors import SchemaVersionError, SpecError
from apportion.files import load_json, read_text
from apportion.limits import MAX_INTEGER, MAX_TOKENS, excerpt
from apportion.telemetry.records import SCHEMA_VERSION, CallUsage, RequestUsage

__all__ = ["FORMATS", "Ingested", "detect_format", "read_chatdev", "read_otlp", "read_records"]

Format = Literal["chatdev", "otlp"]
FORMATS: Final = ("auto", "chatdev", "otlp")
"""The values ``--format`` accepts."""

_TRUNCATING_REASONS: Final = frozenset({"length", "max_tokens", "max_output_tokens"})
_USAGE_KEYS: Final = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


@dataclass
class Ingested:
    """What was read from the files.

    Attributes:
        records: one record per request.
        files: the files read.
        skipped: spans skipped, by reason.
    """

    records: list[RequestUsage] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        """Calls over all records."""
        return sum(len(r.calls) for r in self.records)


def detect_format(path: str | Path) -> Format:
    """The format of a file: by its suffix, else by its first character.

    ``otlp`` for ``.json``/``.jsonl``/``.ndjson`` or text starting with ``{`` or ``[``;
    ``chatdev`` otherwise.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".json", ".jsonl", ".ndjson"):
        return "otlp"
    if suffix == ".csv":
        return "chatdev"
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(256).lstrip()
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from exc
    return "otlp" if head[:1] in ("{", "[") else "chatdev"


def read_records(
    paths: Sequence[str | Path],
    *,
    fmt: str = "auto",
    pipeline: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Ingested:
    """Read every file (all of them, before anything is written).

    Args:
        paths: the files.
        fmt: ``auto`` (by suffix or content), ``chatdev`` or ``otlp``.
        pipeline: the pipeline name to record (default: ``chatdev`` for call logs; for
            spans, their ``apportion.pipeline``, else the service name, else ``otlp``).
        progress: called with 1 as each file has been read (for progress bars).

    Raises:
        SpecError: a file is missing or malformed (file, line, field).
        SchemaVersionError: spans from a newer apportion.
        ValueError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    result = Ingested()
    seen: dict[str, str] = {}
    for path in paths:
        kind = detect_format(path) if fmt == "auto" else fmt
        if kind == "chatdev":
            records = read_chatdev(path, pipeline=pipeline or "chatdev")
        else:
            records, skipped = read_otlp(path, pipeline=pipeline)
            for reason, count in skipped.items():
                result.skipped[reason] = result.skipped.get(reason, 0) + count
        for record in records:
            if record.request_id in seen:
                raise SpecError(
                    f"request {excerpt(record.request_id)} is also in {seen[record.request_id]}",
                    file=str(path),
                )
            seen[record.request_id] = str(path)
        result.records.extend(records)
        result.files.append(str(path))
        if progress is not None:
            progress(1)
    return result


# ----------------------------------------------------------------------- ChatDev


def read_chatdev(path: str | Path, *, pipeline: str = "chatdev") -> list[RequestUsage]:
    """Records from a ChatDev-style call log (see the module docstring).

    Raises:
        SpecError: the file is missing or malformed (file, line, column).
    """
    from apportion.sim.replay import load_calls

    log = load_calls(path)
    source = f"chatdev:{Path(path).name}"
    records = []
    for run in log.runs:
        calls = []
        for c in run.calls:
            capped = c.max_tokens is not None
            calls.append(
                CallUsage(
                    request_id=run.name,
                    grant_id=c.call,
                    agent=c.agent,
                    granted_context=c.prompt_tokens if capped else None,
                    granted_output=c.max_tokens,
                    used_input=c.prompt_tokens,
                    used_output=c.completion_tokens,
                    truncated=(c.completion_tokens >= c.max_tokens) if c.max_tokens else None,
                    overuse=max(0, c.completion_tokens - c.max_tokens) if c.max_tokens else 0,
                    settled="finish",
                )
            )
        records.append(
            RequestUsage(
                request_id=run.name,
                pipeline=pipeline,
                ceiling=None,
                consumed=run.tokens,
                status="closed",
                features={"split": run.split} if run.split else {},
                calls=tuple(calls),
                source=source,
            )
        )
    return records


# -------------------------------------------------------------------------- OTLP


@dataclass
class _Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start: float | None
    end: float | None
    attributes: dict[str, Any]
    service: str | None
    line: int
    where: str
    offset: int
    located: bool


class _Locator:
    """Finds the line of a span, or of one of its attributes, in the file's text."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self._starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def line_of(self, offset: int) -> int:
        import bisect

        return bisect.bisect_right(self._starts, offset)

    def span_offset(self, span_id: str, after: int) -> int:
        pattern = re.compile(r'"spanId"\s*:\s*"' + re.escape(span_id) + '"')
        match = pattern.search(self.text, after) or pattern.search(self.text)
        return match.start() if match else after

    def find_after(self, pattern: str, after: int) -> int:
        match = re.compile(pattern).search(self.text, after)
        return match.start() if match else after

    def fail(
        self, span: _Span | None, key: str, problem: str, line: int | None = None
    ) -> SpecError:
        if line is None and span is not None:
            line = span.line
            attribute = key.rsplit(".attributes.", 1)[-1] if ".attributes." in key else None
            if attribute is not None and span.located:
                pattern = re.compile(r'"key"\s*:\s*"' + re.escape(attribute) + '"')
                match = pattern.search(self.text, span.offset)
                if match:
                    line = self.line_of(match.start())
        return SpecError(problem, file=self.file, line=line, key=key)


def _documents(file: str, text: str) -> Iterator[tuple[Any, int]]:
    """The JSON documents of a file, with the line each starts on."""
    stripped = text.strip()
    if not stripped:
        raise SpecError("the file is empty: expected OTLP JSON", file=file, line=1)
    try:
        yield load_json(stripped, file), 1
        return
    except SpecError as exc:
        if exc.problem != "not valid JSON: Extra data":
            raise
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield load_json(line, file, line=number), number
        except SpecError as exc:
            raise SpecError(
                f"{exc.problem} (one document per line)", file=file, line=exc.line
            ) from None


def _value(node: Any) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    if not isinstance(node, Mapping):
        return node
    for key in ("stringValue", "boolValue", "intValue", "doubleValue"):
        if key in node:
            return node[key]
    if "arrayValue" in node:
        values = (
            node["arrayValue"].get("values", []) if isinstance(node["arrayValue"], Mapping) else []
        )
        return [_value(v) for v in values]
    return None


def _attributes(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(items, list):
        for item in items:
            if isinstance(item, Mapping) and isinstance(item.get("key"), str):
                out[item["key"]] = _value(item.get("value"))
    return out


def _list(node: Mapping[str, Any], key: str, loc: _Locator, where: str, line: int) -> list[Any]:
    value = node.get(key, [])
    if not isinstance(value, list):
        raise loc.fail(None, f"{where}{key}", f"must be a list, not {type(value).__name__}", line)
    return value


def _spans(file: str, text: str, loc: _Locator) -> list[_Span]:
    spans: list[_Span] = []
    cursor = 0
    for document, line in _documents(file, text):
        batches = document if isinstance(document, list) else [document]
        for d, batch in enumerate(batches):
            head = f"[{d}]." if isinstance(document, list) else ""
            if not isinstance(batch, Mapping) or "resourceSpans" not in batch:
                raise loc.fail(
                    None,
                    f"{head}resourceSpans",
                    "expected an OTLP JSON trace export: an object with 'resourceSpans'",
                    line,
                )
            for i, resource in enumerate(_list(batch, "resourceSpans", loc, head, line)):
                rwhere = f"{head}resourceSpans[{i}]"
                if not isinstance(resource, Mapping):
                    raise loc.fail(None, rwhere, "must be an object", line)
                described = resource.get("resource")
                if described is not None and not isinstance(described, Mapping):
                    raise loc.fail(None, f"{rwhere}.resource", "must be an object", line)
                rattrs = _attributes((described or {}).get("attributes"))
                service = rattrs.get("service.name")
                scopes_key = (
                    "scopeSpans" if "scopeSpans" in resource else "instrumentationLibrarySpans"
                )
                for j, scope in enumerate(_list(resource, scopes_key, loc, rwhere + ".", line)):
                    swhere = f"{rwhere}.{scopes_key}[{j}]"
                    if not isinstance(scope, Mapping):
                        raise loc.fail(None, swhere, "must be an object", line)
                    for k, raw in enumerate(_list(scope, "spans", loc, swhere + ".", line)):
                        where = f"{swhere}.spans[{k}]"
                        if not isinstance(raw, Mapping):
                            raise loc.fail(None, where, "a span must be an object", line)
                        span = _read_span(raw, where, service, line, loc, cursor)
                        cursor = max(cursor, span.offset)
                        spans.append(span)
    return spans


def _read_span(
    raw: Mapping[str, Any], where: str, service: Any, line: int, loc: _Locator, cursor: int
) -> _Span:
    """One span; ``line`` is its document's line (1 for a whole-file document)."""
    located = line == 1  # a whole-file document: find the span's own line in the text
    span_id, trace_id = raw.get("spanId"), raw.get("traceId")
    offset = cursor
    if located:
        if isinstance(span_id, str) and span_id:
            offset = loc.span_offset(span_id, cursor)
        elif isinstance(raw.get("name"), str):
            offset = loc.find_after(f'"name"\\s*:\\s*"{re.escape(raw["name"])}"', cursor)
    span_line = loc.line_of(offset) if located else line
    for key, value in (("traceId", trace_id), ("spanId", span_id)):
        if not isinstance(value, str) or not value:
            raise loc.fail(None, f"{where}.{key}", "missing or not a string", span_line)
    span = _Span(
        trace_id=str(trace_id),
        span_id=str(span_id),
        parent_id=str(raw.get("parentSpanId") or ""),
        name=str(raw.get("name") or ""),
        start=None,
        end=None,
        attributes=_attributes(raw.get("attributes")),
        service=service if isinstance(service, str) else None,
        line=span_line,
        where=where,
        offset=offset,
        located=located,
    )
    span.start = _time(raw, "startTimeUnixNano", span, loc)
    span.end = _time(raw, "endTimeUnixNano", span, loc)
    return span


def _time(raw: Mapping[str, Any], key: str, span: _Span, loc: _Locator) -> float | None:
    value = raw.get(key)
    if value is None or value == "" or value == 0 or value == "0":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INTEGER:
        return value / 1e9
    if isinstance(value, str) and _INTEGER.fullmatch(value) and len(value) < 20:
        number = int(value)
        if 0 < number <= MAX_INTEGER:
            return number / 1e9
    raise loc.fail(
        span,
        f"{span.where}.{key}",
        f"must be nanoseconds since the epoch (below 2**63), not {excerpt(value)}",
    )


def _count(span: _Span, key: str, loc: _Locator) -> int | None:
    value = span.attributes.get(key)
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()) and len(value) < 30:
        number = int(value.strip())
    if number is None or number < 0:
        raise loc.fail(
            span,
            f"{span.where}.attributes.{key}",
            f"must be a non-negative integer, not {excerpt(value)}",
        )
    if number > MAX_TOKENS:
        raise loc.fail(
            span,
            f"{span.where}.attributes.{key}",
            f"{excerpt(value)} is above the limit of {MAX_TOKENS:,}",
        )
    return number


def _status(span: _Span) -> str | None:
    """A call's ``apportion.call.status``, when it is one apportion writes (else ``None``)."""
    status = _text(span, "apportion.call.status")
    return status if status in STATUSES else None


def _flag(span: _Span, key: str, loc: _Locator) -> bool | None:
    value = span.attributes.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise loc.fail(
        span, f"{span.where}.attributes.{key}", f"must be true or false, not {excerpt(value)}"
    )


def _number(span: _Span, key: str, loc: _Locator) -> float | None:
    value = span.attributes.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise loc.fail(
            span, f"{span.where}.attributes.{key}", f"must be a finite number, not {excerpt(value)}"
        ) from None
    return number


def _text(span: _Span, *keys: str) -> str | None:
    for key in keys:
        value = span.attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def read_otlp(
    path: str | Path, *, pipeline: str | None = None
) -> tuple[list[RequestUsage], dict[str, int]]:
    """Records from an OTLP JSON span export (see the module docstring).

    Returns:
        The records, and the number of spans skipped by reason.

    Raises:
        SpecError: the file is missing or malformed (file, line, field).
        SchemaVersionError: a span was written by a newer apportion.
    """
    file = str(path)
    text = read_text(path)
    loc = _Locator(file, text)
    spans = _spans(file, text, loc)
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    for span in spans:
        version = _count(span, "apportion.schema_version", loc)
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(version, SCHEMA_VERSION, f"{file}, line {span.line}")
    skipped: dict[str, int] = {}
    requests: dict[str, dict[str, Any]] = {}
    for span in spans:
        is_request = "apportion.request.ceiling" in span.attributes or span.name.startswith(
            "apportion.request"
        )
        request_id = _text(span, "apportion.request.id") or span.trace_id
        if is_request and "apportion.grant.id" not in span.attributes:
            entry = requests.setdefault(request_id, {"calls": [], "span": None})
            entry["span"] = span
            continue
        if not any(k in span.attributes for k in (*_USAGE_KEYS, "apportion.grant.id")):
            continue
        agent = _agent(span, by_id)
        if agent is None:
            skipped["no gen_ai.agent.name"] = skipped.get("no gen_ai.agent.name", 0) + 1
            continue
        entry = requests.setdefault(request_id, {"calls": [], "span": None})
        entry["calls"].append((span, agent))
    records = []
    for request_id, entry in requests.items():
        head = entry["span"]
        in_tree = head is not None and _text(head, "apportion.request.root_id") is not None
        if not entry["calls"] and not in_tree:  # a tree keeps its callless requests
            continue
        records.append(_request(request_id, entry, loc, pipeline, file))
    return records, skipped


def _agent(span: _Span, by_id: Mapping[tuple[str, str], _Span]) -> str | None:
    node: _Span | None = span
    seen = set()
    while node is not None and node.span_id not in seen:
        seen.add(node.span_id)
        name = _text(node, "gen_ai.agent.name")
        if name:
            return name
        node = by_id.get((node.trace_id, node.parent_id)) if node.parent_id else None
    return None


def _request(
    request_id: str, entry: Mapping[str, Any], loc: _Locator, pipeline: str | None, file: str
) -> RequestUsage:
    calls: list[CallUsage] = []
    ordered = sorted(entry["calls"], key=lambda sa: (sa[0].start or 0.0, sa[0].offset))
    used_ids: set[int] = set()
    for number, (span, agent) in enumerate(ordered, start=1):
        used_input = _count(span, "gen_ai.usage.input_tokens", loc)
        used_output = _count(span, "gen_ai.usage.output_tokens", loc)
        cap = _count(span, "gen_ai.request.max_tokens", loc)
        granted_output = _count(span, "apportion.grant.output_tokens", loc)
        granted_context = _count(span, "apportion.grant.context_tokens", loc)
        if granted_output is None and cap is not None:
            granted_output = cap
            granted_context = used_input
        reasons = span.attributes.get("gen_ai.response.finish_reasons")
        if isinstance(reasons, str):
            reasons = [reasons]
        truncated = _flag(span, "apportion.truncated", loc)
        if truncated is None and isinstance(reasons, list) and reasons:
            truncated = any(str(r) in _TRUNCATING_REASONS for r in reasons)
        grant_id = _count(span, "apportion.grant.id", loc)
        if grant_id is None or grant_id in used_ids:
            grant_id = number
            while grant_id in used_ids:
                grant_id += 1
        used_ids.add(grant_id)
        finished = used_input is not None or used_output is not None
        settled = _text(span, "apportion.grant.settled") or ("finish" if finished else "release")
        if finished:
            used_input = used_input or 0
            used_output = used_output or 0
        calls.append(
            CallUsage(
                request_id=request_id,
                grant_id=grant_id,
                agent=agent,
                priority=_text(span, "apportion.agent.priority"),
                kind=_text(span, "apportion.agent.kind"),
                granted_context=granted_context,
                granted_output=granted_output,
                used_input=used_input,
                used_output=used_output,
                truncated=truncated,
                input_cut=_flag(span, "apportion.input_cut", loc),
                dropped_tokens=_count(span, "apportion.dropped_tokens", loc),
                overuse=_count(span, "apportion.overuse", loc) or 0,
                extensions=_count(span, "apportion.grant.extensions", loc) or 0,
                settled=settled,
                model=_text(span, "gen_ai.request.model", "gen_ai.response.model"),
                cost_usd=_number(span, "apportion.cost_usd", loc),
                estimated=_flag(span, "apportion.usage_estimated", loc),
                finish_reason=str(reasons[0]) if isinstance(reasons, list) and reasons else None,
                began_at=span.start,
                at=span.end,
                status=_status(span),
            )
        )
    calls.sort(key=lambda c: c.grant_id)
    head: _Span | None = entry["span"]
    first: _Span | None = ordered[0][0] if ordered else head
    name = (
        pipeline
        or (_text(head, "apportion.pipeline") if head is not None else None)
        or (_text(first, "apportion.pipeline") if first is not None else None)
        or (first.service if first is not None else None)
        or "otlp"
    )
    starts = [c.began_at for c in calls if c.began_at is not None]
    ends = [c.at for c in calls if c.at is not None]
    consumed = sum((c.used_input or 0) + (c.used_output or 0) for c in calls)
    ceiling = outcome = None
    status = "closed"
    opened, closed = min(starts, default=None), max(ends, default=None)
    parent_id = root_id = None
    depth = 0
    if head is not None:
        parent_id = _text(head, "apportion.request.parent_id")
        root_id = _text(head, "apportion.request.root_id")
        depth = _count(head, "apportion.request.depth", loc) or 0
        ceiling = _count(head, "apportion.request.ceiling", loc)
        outcome = _number(head, "apportion.request.outcome", loc)
        consumed = _count(head, "apportion.request.consumed", loc) or consumed
        status = _text(head, "apportion.request.status") or status
        opened = head.start if head.start is not None else opened
        closed = head.end if head.end is not None else closed
    return RequestUsage(
        request_id=request_id,
        pipeline=str(name),
        ceiling=ceiling,
        consumed=consumed,
        overflow=(_count(head, "apportion.request.overflow", loc) or 0) if head else 0,
        status=status,
        outcome=outcome,
        opened_at=opened,
        closed_at=closed,
        calls=tuple(calls),
        source=f"otlp:{Path(file).name}",
        parent_id=parent_id,
        root_id=root_id,
        depth=depth,
    )
