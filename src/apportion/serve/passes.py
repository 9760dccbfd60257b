"""Budget passes: a request's remaining budget as a signed token another service redeems.

A proxied call's response carries ``Apportion-Budget-Token``: what the caller's request
may still spend (tokens, and USD under a cost ceiling), signed with the gateway's key
(HMAC-SHA256). A downstream service, in the same tenant, that calls the gateway with that
token in the same header gets a **child budget** carved from the request
(:meth:`~apportion.controller.AsyncRequest.child`): its spend rolls up into the parent's
ledger and summary, and what it leaves unused returns to the parent when it closes.

A pass is **narrow-only**:

* the child's ceiling is at most the token's amount (a downstream asking more with
  ``Apportion-Ceiling`` is refused: :class:`BudgetTokenWidened`) and at most what the
  parent can still spare when it is redeemed (the child draws what is there, up to the
  amount; nothing there: ``ChildBudgetExceeded``);
* a token whose bytes were changed (payload or signature), signed with another key, of
  another tenant, or malformed is refused (:class:`BudgetTokenInvalid`); one past its
  expiry too (:class:`BudgetTokenExpired`);
* its nonce opens one child only: a second redemption, by any replica sharing the store,
  is refused (:class:`BudgetTokenReplayed`). The nonce is claimed in the gateway's
  idempotency records, beside the store ("set if absent": ``SET NX`` on Redis), so
  replicas agree, and remembered until the token has expired. The child's id is made from
  the nonce too, so two redemptions racing cannot both open it.

The token is ``v1.<payload>.<signature>``, both parts base64url without padding; the
payload is compact JSON: ``req`` (the request id as the tenant sees it), ``ten`` (the
tenant), ``tok`` (tokens the bearer may draw), ``usd`` (USD, or ``null``), ``exp`` (expiry,
Unix seconds), ``non`` (a random nonce). The payload is readable by its bearer (it is not
secret), and changing any of it breaks the signature.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from apportion.errors import ApportionError, InvalidArgument

HEADER = "Apportion-Budget-Token"
"""The header a proxied response carries the pass in, and a downstream call presents it in."""

VERSION = "v1"
"""The token format's version (its first part)."""

DEFAULT_TTL = 600.0
"""Seconds a pass stays redeemable, by default."""

MIN_KEY_BYTES = 16
"""The shortest signing key accepted (bytes of its UTF-8 text)."""

MAX_TOKEN_CHARS = 4096
"""A longer header is refused before anything is decoded."""

NONCE_KEY = "apportion-pass:"
"""Prefix of the record that a nonce was redeemed (in the gateway's idempotency records)."""

CHILD_PREFIX = "pass-"
"""Prefix of a redeemed pass's child name (then the nonce)."""

_DOMAIN = b"apportion-budget-token.v1."


class BudgetTokenInvalid(ApportionError, ValueError):
    """A budget token is malformed, was changed, or was signed with another key.

    Attributes:
        header: the header that held it (``Apportion-Budget-Token``).
        reason: what is wrong (never the token itself, nor the key).
        code: the stable error code (``budget_token_invalid``).
    """

    code = "budget_token_invalid"
    header: str
    reason: str

    def __init__(self, reason: str, **fields: Any) -> None:
        ApportionError.__init__(self, f"{HEADER}: {reason}", header=HEADER, reason=reason, **fields)


class BudgetTokenExpired(BudgetTokenInvalid):
    """A budget token is past its expiry.

    Attributes:
        expires_at: when it expired (Unix seconds).
        now: the gateway's time when it was presented.
    """

    code = "budget_token_expired"
    expires_at: float
    now: float

    def __init__(self, expires_at: float, now: float) -> None:
        super().__init__(
            f"the token expired at {expires_at:.0f} (now {now:.0f}); ask the caller for a new one",
            expires_at=expires_at,
            now=now,
        )


class BudgetTokenReplayed(BudgetTokenInvalid):
    """A budget token was redeemed already (its nonce opened a child before).

    Attributes:
        request_id: the request the token was carved from.
    """

    code = "budget_token_replayed"
    request_id: str

    def __init__(self, request_id: str) -> None:
        super().__init__(
            "the token was redeemed already: a token opens one child budget; use the "
            "Apportion-Request the first call returned",
            request_id=request_id,
        )


class BudgetTokenWidened(BudgetTokenInvalid):
    """A downstream asked for more than its budget token carries (``Apportion-Ceiling``).

    Attributes:
        requested: the ceiling asked for.
        available: the most the token lets it draw.
    """

    code = "budget_token_widened"
    requested: int
    available: int

    def __init__(self, requested: int, available: int) -> None:
        super().__init__(
            f"Apportion-Ceiling {requested} is more than the token carries ({available}); "
            "a token can only be narrowed",
            requested=requested,
            available=available,
        )


@dataclass(frozen=True, slots=True)
class BudgetPass:
    """What a budget token carries (its signed payload).

    Attributes:
        request_id: the request it was carved from, as its tenant names it.
        tenant: the tenant the request belongs to.
        tokens: the most tokens the bearer's child budget may draw.
        usd: the most USD it may spend, or ``None`` (no cost ceiling).
        expires_at: Unix seconds after which it is refused.
        nonce: random; it opens one child only.
    """

    request_id: str
    tenant: str
    tokens: int
    usd: float | None
    expires_at: float
    nonce: str

    @property
    def child_name(self) -> str:
        """The name of the child budget this pass opens (one per nonce)."""
        return f"{CHILD_PREFIX}{self.nonce}"

    @property
    def nonce_key(self) -> str:
        """The record that the nonce was redeemed (per tenant)."""
        return f"{NONCE_KEY}{self.tenant}:{self.nonce}"


def signing_key(key: str | bytes) -> bytes:
    """The gateway's signing key as bytes, checked.

    Raises:
        InvalidArgument: not text or bytes, or shorter than :data:`MIN_KEY_BYTES` (the key
            itself is never quoted).
    """
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise InvalidArgument(
            "signing_key", "<hidden>", f"a secret of at least {MIN_KEY_BYTES} bytes"
        )
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not all(c.isalnum() or c in "-_" for c in text):
        raise BudgetTokenInvalid("not a budget token (bad encoding)")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise BudgetTokenInvalid("not a budget token (bad encoding)") from error


def _signature(key: bytes, payload: str, domain: bytes = _DOMAIN) -> bytes:
    return hmac.digest(key, domain + payload.encode("ascii"), "sha256")


def seal(key: str | bytes, body: Mapping[str, Any], *, domain: bytes, version: str) -> str:
    """``body`` as a signed token: ``VERSION.<payload>.<signature>`` (base64url, no padding).

    The one HMAC codec of the gateway: budget tokens (:func:`issue`) and grant handles
    (:mod:`apportion.serve.handles`) are both made by it, each with its own ``domain`` (a
    token of one kind never verifies as the other).

    Raises:
        InvalidArgument: a bad signing key.
    """
    secret = signing_key(key)
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii"))
    return f"{version}.{payload}.{_b64(_signature(secret, payload, domain))}"


def unseal(
    key: str | bytes,
    token: object,
    *,
    domain: bytes,
    version: str,
    invalid: Callable[[str], ApportionError] = BudgetTokenInvalid,
) -> Any:
    """The JSON body of a token :func:`seal` made, once its signature is checked.

    Raises:
        ApportionError: ``invalid(reason)`` (default :class:`BudgetTokenInvalid`): not such
            a token, or its payload or signature was changed (never quoting the token).
    """
    secret = signing_key(key)
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise invalid("malformed")
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != version:
        raise invalid(f"malformed (expected {version}.<payload>.<signature>)")
    _, payload, signature = parts
    try:
        given, data = _unb64(signature), _unb64(payload)
    except BudgetTokenInvalid as error:
        raise invalid("malformed (bad encoding)") from error
    if not hmac.compare_digest(given, _signature(secret, payload, domain)):
        raise invalid("the signature does not match: it was changed or is not ours")
    try:
        return json.loads(data)
    except ValueError as error:
        raise invalid("malformed (bad payload)") from error


def issue(
    key: str | bytes,
    *,
    request_id: str,
    tenant: str,
    tokens: int,
    usd: float | None,
    now: float,
    ttl: float = DEFAULT_TTL,
    nonce: str | None = None,
) -> str:
    """A signed budget token for ``tokens`` (and ``usd``) of ``request_id``.

    Args:
        key: the gateway's signing key.
        request_id: the request, as its tenant names it.
        tenant: the tenant.
        tokens: the most tokens the bearer may draw (0 or more).
        usd: the most USD, or ``None``.
        now: the gateway's time (Unix seconds).
        ttl: seconds the token stays redeemable.
        nonce: the nonce (default: 16 random bytes, hex).

    Raises:
        InvalidArgument: a bad argument.
    """
    secret = signing_key(key)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise InvalidArgument("tokens", tokens, "a number of tokens, 0 or more")
    if usd is not None and (
        isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd)
    ):
        raise InvalidArgument("usd", usd, "a finite number of USD, or None")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
        raise InvalidArgument("ttl", ttl, "a positive number of seconds")
    if not isinstance(request_id, str) or not isinstance(tenant, str):
        raise InvalidArgument("request_id", request_id, "the request id and tenant are text")
    body = {
        "req": request_id,
        "ten": tenant,
        "tok": tokens,
        "usd": None if usd is None else max(0.0, float(usd)),
        "exp": round(float(now) + float(ttl), 3),
        "non": nonce if nonce is not None else secrets.token_hex(16),
    }
    return seal(secret, body, domain=_DOMAIN, version=VERSION)


def verify(key: str | bytes, token: object, *, now: float, tenant: str | None = None) -> BudgetPass:
    """The pass a budget token carries, once its signature, tenant and expiry are checked.

    Args:
        key: the gateway's signing key.
        token: the header's value.
        now: the gateway's time (Unix seconds).
        tenant: the presenting caller's tenant: a token of another tenant is refused.

    Raises:
        BudgetTokenInvalid: malformed, changed, signed with another key, or of another
            tenant.
        BudgetTokenExpired: past its expiry.
    """
    body = unseal(key, token, domain=_DOMAIN, version=VERSION, invalid=_invalid_token)
    budget = _read(body)
    if tenant is not None and budget.tenant != tenant:
        raise BudgetTokenInvalid("the token belongs to another tenant")
    if not now < budget.expires_at:
        raise BudgetTokenExpired(budget.expires_at, now)
    return budget


def _invalid_token(reason: str) -> BudgetTokenInvalid:
    return BudgetTokenInvalid(f"not a budget token: {reason}")


def _read(body: object) -> BudgetPass:
    """The pass of a signed payload (signed by us: its shape is still checked)."""
    bad = BudgetTokenInvalid("not a budget token (bad payload)")
    if not isinstance(body, dict):
        raise bad
    request_id, tenant = body.get("req"), body.get("ten")
    tokens, usd = body.get("tok"), body.get("usd")
    expires, nonce = body.get("exp"), body.get("non")
    if not (isinstance(request_id, str) and isinstance(tenant, str)):
        raise bad
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise bad
    if usd is not None and (isinstance(usd, bool) or not isinstance(usd, int | float)):
        raise bad
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise bad
    if not (isinstance(nonce, str) and nonce.isalnum()):
        raise bad
    return BudgetPass(
        request_id, tenant, tokens, None if usd is None else float(usd), float(expires), nonce
    )


def narrowed(budget: BudgetPass, ceiling: int | None) -> int:
    """The child ceiling to ask for: the token's amount, or less when ``ceiling`` says so.

    Raises:
        BudgetTokenWidened: ``ceiling`` is more than the token carries.
        BudgetTokenInvalid: the token carries nothing to draw.
    """
    if budget.tokens < 1:
        raise BudgetTokenInvalid("the token carries no tokens to draw")
    if ceiling is None:
        return budget.tokens
    if ceiling > budget.tokens:
        raise BudgetTokenWidened(ceiling, budget.tokens)
    return ceiling


CLAIM_SKEW = 60.0
"""Seconds a redeemed nonce is remembered past its token's expiry (clock skew between hosts)."""


async def claim_nonce(records: Any, budget: BudgetPass, child_id: str, now: float) -> None:
    """Record that ``budget``'s nonce opened ``child_id``; refuse it a second time.

    ``records`` are the gateway's idempotency records (:mod:`apportion.serve.idempotency`),
    which live beside the store (Redis for several replicas: ``SET NX``), so every replica
    agrees. The claim is kept until the token has expired (and :data:`CLAIM_SKEW` more):
    after that the token is refused as expired anyway.

    Raises:
        BudgetTokenReplayed: the nonce was redeemed before.
    """
    ttl = max(1.0, budget.expires_at - now) + CLAIM_SKEW
    claim = await records.claim(budget.nonce_key, child_id, "budget-token", ttl)
    if claim.state != "new":
        raise BudgetTokenReplayed(budget.request_id)
