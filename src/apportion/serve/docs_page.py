"""The ``/docs`` page: the OpenAPI document rendered as one self-contained HTML page.

FastAPI's own Swagger UI loads its script and styles from a CDN; this page loads nothing:
no script, no style sheet, no font, no image from anywhere. Each operation is listed with
its parameters, its body's schema and its answers, from the document itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["docs_html"]

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1b1b1b;line-height:1.45}
h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.2rem}
.op{border:1px solid #ddd;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.method{font-weight:700;font-family:monospace;padding:.1rem .4rem;border-radius:4px;
background:#e8eef7}
code,pre{font-family:ui-monospace,monospace;font-size:.9em}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;border-radius:4px}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;text-align:left;vertical-align:top}
"""


def _resolve(document: Mapping[str, Any], node: Any, depth: int = 0) -> Any:
    """``node`` with its ``$ref``s replaced by their schemas (to a few levels)."""
    if depth > 6:
        return node
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = document
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return _resolve(document, target, depth + 1)
        return {k: _resolve(document, v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(document, v, depth + 1) for v in node]
    return node


def _schema_block(document: Mapping[str, Any], schema: Any) -> str:
    text = json.dumps(_resolve(document, schema), indent=2)
    return f"<pre>{escape(text)}</pre>"


def docs_html(document: Mapping[str, Any]) -> str:
    """The page for ``document`` (an OpenAPI 3 document as a dict)."""
    info = document.get("info", {})
    title = escape(str(info.get("title", "API")))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{title}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{title} <small>{escape(str(info.get('version', '')))}</small></h1>",
        f"<p>{escape(str(info.get('description', '')))}</p>",
        "<p>The machine-readable document: <a href='openapi.json'>openapi.json</a>.</p>",
    ]
    by_tag: dict[str, list[str]] = {}
    for path, item in document.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            tag = (op.get("tags") or ["other"])[0]
            block = [
                "<div class='op'>",
                f"<p><span class='method'>{escape(method.upper())}</span> "
                f"<code>{escape(path)}</code> {escape(str(op.get('summary', '')))}</p>",
            ]
            if op.get("description"):
                block.append(f"<p>{escape(str(op['description']))}</p>")
            params = op.get("parameters", [])
            if params:
                rows = "".join(
                    f"<tr><td><code>{escape(str(p.get('name')))}</code></td>"
                    f"<td>{escape(str(p.get('in')))}</td>"
                    f"<td>{'required' if p.get('required') else 'optional'}</td>"
                    f"<td>{escape(str(p.get('description', '')))}</td></tr>"
                    for p in params
                )
                block.append(
                    f"<table><tr><th>parameter</th><th>in</th><th></th><th></th></tr>{rows}</table>"
                )
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                block.append("<p>Body:</p>" + _schema_block(document, body.get("schema", {})))
            answers = "".join(
                f"<li><code>{escape(str(status))}</code> "
                f"{escape(str(r.get('description', '')))}</li>"
                for status, r in op.get("responses", {}).items()
            )
            block.append(f"<p>Answers:</p><ul>{answers}</ul></div>")
            by_tag.setdefault(str(tag), []).append("".join(block))
    for tag, blocks in by_tag.items():
        parts.append(f"<h2>{escape(tag)}</h2>")
        parts.extend(blocks)
    parts.append("</body></html>")
    return "".join(parts)
