"""The budget API's bodies and answers, as pydantic models (they make ``/openapi.json``).

Imported only by :mod:`apportion.serve.app` (pydantic comes with FastAPI, the ``serve``
extra). Bodies refuse unknown fields and coerce nothing: ``"5"`` is not a token count.
The library checks the values themselves (a ceiling of 0 is ``invalid_ceiling``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from apportion.ledger import MAX_TOKENS

__all__ = [
    "BeginBody",
    "CloseBody",
    "ErrorOut",
    "ExtendBody",
    "ExtendOut",
    "FinishBody",
    "FittedBody",
    "FittedOut",
    "GrantOut",
    "GrantRef",
    "Health",
    "OpenBody",
    "PoolBody",
    "PoolOut",
    "PoolPatch",
    "PoolsOut",
    "ReloadOut",
    "RequestOut",
    "ScoreBody",
    "ScoreOut",
    "SettledOut",
    "SummaryOut",
    "error_responses",
]

# The bounds below are the library's (it checks them and answers with its own codes:
# ``invalid_ceiling``, ``invalid_token_count``); the schema states them for clients.
Tokens = Annotated[
    int,
    Field(
        strict=True,
        description="a token count",
        json_schema_extra={"minimum": 0, "maximum": MAX_TOKENS},
    ),
]
Ceiling = Annotated[
    int,
    Field(
        strict=True,
        description="a token ceiling",
        json_schema_extra={"minimum": 1, "maximum": MAX_TOKENS},
    ),
]
Name = Annotated[str, Field(min_length=1, max_length=256)]
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
ChildName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
PoolName = Annotated[str, Field(pattern=r"^[^{}]{1,256}$")]
Feature = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Usd = Annotated[
    float,
    Field(strict=False, allow_inf_nan=False, json_schema_extra={"exclusiveMinimum": 0}),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenBody(_Body):
    """Open a request, or a child budget of one (``parent``)."""

    pipeline: Name | None = Field(None, description="a configured pipeline (default: the first)")
    ceiling: Ceiling | None = Field(
        None, description="tokens the request may consume (default: the pipeline's)"
    )
    cost_ceiling: Usd | None = Field(None, description="USD the request may cost")
    features: dict[Annotated[str, Field(max_length=256)], Feature] | None = Field(
        None, description="what is known up front (messages, doc_tokens ...)"
    )
    pool: PoolName | None = Field(None, description="a shared pool to draw the ceiling from")
    pool_priority: Literal["critical", "standard", "peripheral"] = "standard"
    parent: Name | None = Field(None, description="an open request to carve a child from")
    name: ChildName | None = Field(None, description="the child's name (default: child)")
    share: (
        Annotated[
            float,
            Field(
                strict=False,
                allow_inf_nan=False,
                json_schema_extra={"exclusiveMinimum": 0, "maximum": 1},
            ),
        ]
        | None
    ) = Field(None, description="a child's share of what its parent can spare, in (0, 1]")
    priority: Literal["critical", "standard", "peripheral"] = Field(
        "standard", description="a child's priority class"
    )
    request_id: Id | None = Field(None, description="an id of your own (default: random)")


class BeginBody(_Body):
    """Reserve a grant for one model call."""

    agent: Name
    input_tokens: Tokens = Field(description="input tokens the call has in hand")
    output_tokens: Tokens | None = Field(None, description="output wanted (default: policy's)")
    model: Name | None = None
    min_context_tokens: Tokens = 0
    wrap_up_tokens: Tokens | None = None


class GrantRef(_Body):
    """A grant of the request, by the handle ``begin`` answered (``grant``)."""

    grant: Annotated[str, Field(min_length=1, max_length=4096)] = Field(
        description="the grant's handle, as begin answered it (opaque, signed)"
    )


class ExtendBody(GrantRef):
    """Grow an open grant."""

    output_tokens: Tokens
    context_tokens: Tokens = 0


class FinishBody(GrantRef):
    """Settle a grant with the call's usage (``null``: estimated, flagged)."""

    input_tokens: Tokens | None
    output_tokens: Tokens | None
    truncated: bool = False
    text: Annotated[str, Field(max_length=10_000_000)] | None = None
    usage_estimated: bool = False


class FittedBody(GrantRef):
    """Messages of the grant's call that fitting dropped or shortened (counts, no content)."""

    messages: Tokens = Field(description="messages dropped or shortened")
    tokens: Tokens = Field(0, description="tokens they removed")


class ScoreBody(_Body):
    """The request's outcome score (0..1 by convention)."""

    outcome: Annotated[float, Field(strict=False, allow_inf_nan=False)]


class CloseBody(_Body):
    """How the request ended."""

    status: Literal["closed", "failed"] = "closed"


class GrantOut(BaseModel):
    """A grant: what one model call may read and write."""

    grant: str = Field(description="the grant's handle: send it to extend, renew, finish, release")
    request_id: str
    grant_id: int
    agent: str
    context_tokens: int
    output_tokens: int
    working_tokens: int = Field(description="the working call's cap: output less wrap-up")
    wrap_up_tokens: int
    lease_expires_at: float
    model: str | None


class ExtendOut(BaseModel):
    """The grown grant, or ``null``: wrap up now."""

    grant: GrantOut | None


class SummaryOut(BaseModel):
    """A request's summary (see ``apportion.Summary``)."""

    model_config = ConfigDict(extra="allow")

    request_id: str
    status: str
    ceiling: int
    consumed: int
    reserved: int
    free: int
    agents: dict[str, Any]


class RequestOut(BaseModel):
    """An opened request."""

    request_id: str
    parent_id: str | None
    ceiling: int
    cost_ceiling: float | None
    summary: SummaryOut


class AgentTotals(BaseModel):
    """The settled grant's agent after it: tokens consumed, held, over-used, available."""

    consumed: int
    reserved: int
    overuse: int
    available: int


class Totals(BaseModel):
    """A request's totals (the full summary: ``GET /v1/budget/requests/{id}``)."""

    request_id: str
    status: str
    ceiling: int
    consumed: int
    reserved: int
    free: int
    overflow: int
    agent: AgentTotals


class SettledOut(BaseModel):
    """A settled grant and the request's totals after."""

    request_id: str
    grant_id: int
    agent: str
    summary: Totals


class FittedOut(BaseModel):
    """The note kept."""

    request_id: str
    messages: int
    tokens: int


class ScoreOut(BaseModel):
    """The score kept."""

    request_id: str
    outcome: float


class Health(BaseModel):
    """Up (or ready)."""

    status: str


class ErrorDetail(BaseModel):
    """An error: a stable code, a message, and the error's fields."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error answer."""

    error: ErrorDetail


_WHY = {
    400: "Malformed JSON",
    401: "No key, or an unknown one",
    403: "Not allowed with this key",
    404: "No such request, grant or pipeline (for this tenant)",
    409: "Refused: over budget, closed, settled, or an idempotent call still running",
    413: "Body too large",
    422: "A field is missing or wrong",
    429: "A shared pool's window is spent, or too many failed authentications (Retry-After)",
    503: "The store cannot be reached",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses (and 400, 413; 429 beside 401)."""
    keyed = {429} if 401 in statuses else set()  # failed authentication is rate-limited
    every = sorted({400, 413, *statuses, *keyed})
    return {s: {"model": ErrorOut, "description": _WHY.get(s, "Error")} for s in every}


# ---------------------------------------------------------------------- the admin API

Reserve = dict[Literal["critical", "standard", "peripheral"], Tokens]


class PoolBody(_Body):
    """Define a tenant's shared pool."""

    name: PoolName = Field(description="the pool's name, as the tenant's requests name it")
    capacity: Ceiling = Field(description="tokens each window holds")
    window_seconds: Annotated[
        float, Field(strict=False, allow_inf_nan=False, json_schema_extra={"exclusiveMinimum": 0})
    ] = Field(60.0, description="the window's length (60: tokens per minute)")
    reserve: Reserve | None = Field(None, description="tokens held back per priority class")


class PoolPatch(_Body):
    """Resize a pool, change its reserves, or drain it (or lift a drain)."""

    capacity: Ceiling | None = None
    reserve: Reserve | None = None
    draining: bool | None = Field(None, description="true: no new request draws from it")


class PoolOut(BaseModel):
    """A pool's configuration and its current window."""

    model_config = ConfigDict(extra="allow")

    tenant: str
    name: str
    capacity: int
    window_seconds: float
    drawn: int
    remaining: int
    open_draws: int
    returned: int
    draining: bool


class PoolsOut(BaseModel):
    """A tenant's pools."""

    tenant: str
    pools: list[PoolOut]


class ReloadOut(BaseModel):
    """What the reloaded config serves."""

    file: str | None
    tenants: list[str]
    pipelines: list[str]
    upstreams: list[str]
