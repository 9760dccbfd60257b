"""The proxy's two operations in the gateway's OpenAPI document (``/openapi.json``).

The proxy's routes are plain Starlette routes (:func:`apportion.serve.proxy.proxy_routes`:
no FastAPI validation on the hot path), so FastAPI does not describe them;
:func:`document_proxy` adds them to the document it makes: ``POST /v1/chat/completions``
and ``POST /v1/responses``, their ``Apportion-*`` request headers, a loose request body
(OpenAI's: ``model`` and ``messages`` / ``input``, any other field passed on), the
answer (a JSON object, or server-sent events for ``stream: true``) with its
``Apportion-*`` response headers, and the JSON error of every refusal
(``{"error": {"code", "message", ...}}``, OpenAI-style: ``type`` and ``param`` too).
"""

from __future__ import annotations

from typing import Any, Final

from apportion.serve.forward import GRANTED, REMAINING, REQUEST, STATUS, USED

__all__ = ["document_proxy", "proxy_paths"]

_ID: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"

_REQUEST_HEADERS: Final = (
    (
        REQUEST,
        {"type": "string", "pattern": _ID, "example": "ticket-42"},
        "The request id (in the caller's tenant). The first call that carries "
        "Apportion-Ceiling opens it.",
    ),
    (
        "Apportion-Agent",
        {"type": "string", "example": "intake"},
        "The agent making the call (an agent of the pipeline, or one of its kinds).",
    ),
    (
        "Apportion-Ceiling",
        {"type": "string", "pattern": r"^[0-9]+$", "example": "20000"},
        "Tokens: opens the request with this ceiling (a positive whole number).",
    ),
    (
        "Apportion-Ceiling-USD",
        {"type": "string", "example": "0.5"},
        "A cost ceiling in USD for the request it opens.",
    ),
    (
        "Apportion-Features",
        {"type": "string", "example": "messages=40, doc_tokens=1200"},
        "What is known of the request it opens, as name=number pairs separated by commas: "
        "its policy predicts every call's budget from them.",
    ),
    (
        "Apportion-Pipeline",
        {"type": "string"},
        "The pipeline of the request it opens (default: the first configured).",
    ),
    (
        "Apportion-Parent",
        {"type": "string", "pattern": _ID},
        "With Apportion-Ceiling: open the request as a child budget of this request.",
    ),
    (
        "Apportion-Budget-Token",
        {"type": "string"},
        "Instead of Apportion-Request: a signed budget token another service's answer "
        "carried; the call opens a child budget carved from it.",
    ),
    (
        "Idempotency-Key",
        {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
        "A retry with the same key gets the first answer; the call is made once.",
    ),
    (
        "Apportion-Upstream-Key",
        {"type": "string"},
        "The caller's own provider key, for an upstream configured pass_through_key.",
    ),
)

_RESPONSE_HEADERS: Final = (
    (REQUEST, "text", "The request id the call drew on."),
    (GRANTED, "integer", "Tokens the call's grant held (extensions included)."),
    (USED, "integer", "Tokens the provider billed (not on a stream: see its last event)."),
    (REMAINING, "integer", "The request's free tokens after the call."),
    (STATUS, "text", "completed, wrapped_up or cut (open on a stream's headers)."),
    ("Apportion-Budget-Token", "text", "The request's remaining budget, signed."),
)

_ERRORS: Final = {
    400: "A bad body or header (the error names it), or the calls without Apportion-* "
    "headers a gateway that budgets every call refuses (budget_headers_missing)",
    401: "No key, or an unknown one",
    402: "Refused: over the request's (or its parent's) token or cost budget",
    403: "A budget token tampered with, expired, replayed or widened",
    404: "No such request, agent or pipeline (for this tenant), or the provider's 404",
    409: "The request is closed, or an idempotent call with this key is still running",
    413: "Body too large",
    429: "A shared pool's window is spent, too many failed authentications, or the "
    "provider's rate limit",
    502: "The provider failed (its message, keys scrubbed)",
    503: "The store cannot be reached",
    504: "The provider timed out",
}

_BODIES: Final = {
    "/v1/chat/completions": (
        "messages",
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "role": {"type": "string"},
                    "content": {"type": ["string", "array", "null"]},
                },
            },
        },
        "Chat completions through the budget (OpenAI-compatible)",
    ),
    "/v1/responses": (
        "input",
        {"type": ["string", "array"], "minLength": 1, "minItems": 1, "items": {"type": "object"}},
        "Responses through the budget (OpenAI-compatible)",
    ),
}


def _operation(path: str, secured: bool) -> dict[str, Any]:
    key, messages, summary = _BODIES[path]
    body_schema = {
        "type": "object",
        "required": ["model", key],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            key: messages,
            "stream": {"type": "boolean"},
        },
        "additionalProperties": True,
    }
    example_text: Any = [{"role": "user", "content": "Sort this ticket."}]
    if key == "input":
        example_text = "Sort this ticket."
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    operation: dict[str, Any] = {
        "tags": ["proxy"],
        "summary": summary,
        "description": (
            "The provider's answer in the OpenAI wire format, with the call counted, "
            "fitted into its grant, capped, extended when cut and settled. Send "
            "Apportion-Request and Apportion-Agent (and Apportion-Ceiling on the call that "
            "opens the request). A stream's settled figures come as its last event, an SSE "
            'comment: `: apportion {"granted": ..., "used": ..., "status": ...}`.'
        ),
        "operationId": "proxy_" + path.rsplit("/", 1)[-1].replace(".", "_"),
        "parameters": [
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": description,
                "schema": schema,
            }
            for name, schema, description in _REQUEST_HEADERS
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": body_schema,
                    "example": {"model": "gpt-4o-mini", key: example_text},
                }
            },
        },
        "responses": {
            "200": {
                "description": "The provider's answer (server-sent events for stream: true)",
                "headers": {
                    name: {
                        "description": description,
                        "schema": {"type": "integer" if kind == "integer" else "string"},
                    }
                    for name, kind, description in _RESPONSE_HEADERS
                },
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **{
                str(status): {"description": why, "content": error}
                for status, why in _ERRORS.items()
            },
        },
    }
    if secured:
        operation["security"] = [{"HTTPBearer": []}]
    return operation


def proxy_paths(secured: bool) -> dict[str, Any]:
    """The OpenAPI ``paths`` of the proxy (``secured``: calls carry a tenant's key)."""
    return {path: {"post": _operation(path, secured)} for path in _BODIES}


def document_proxy(app: Any) -> None:
    """Make ``app.openapi()`` (FastAPI's) describe the proxy's operations too."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document: dict[str, Any] = plain()
            schemes = document.get("components", {}).get("securitySchemes", {})
            document.setdefault("paths", {}).update(proxy_paths("HTTPBearer" in schemes))
        schema: dict[str, Any] = app.openapi_schema
        return schema

    app.openapi = openapi
