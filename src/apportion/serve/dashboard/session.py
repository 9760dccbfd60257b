"""The dashboard's session cookie: a gateway key exchanged once for a signed cookie.

A browser cannot send ``Authorization: Bearer`` on a page load, so the login form takes a
tenant's key, checks it as the API does (:meth:`Gateway.authenticate
<apportion.serve.gateway.Gateway.authenticate>`, failures counted per client address) and
answers a cookie sealed with the gateway's signing key (the HMAC codec of budget tokens and
grant handles, :func:`apportion.serve.passes.seal`, under a domain of its own). The cookie
names the tenant and when it ends, never the key; it is ``HttpOnly`` (no script reads it),
``SameSite=Strict`` (no other site's page sends it) and ``Secure`` over HTTPS. Whether the
tenant is an admin is read from the gateway's current configuration on every page, not
from the cookie, and a tenant removed by a reload loses its sessions at once.
"""

from __future__ import annotations

import math
from typing import Final

from apportion.errors import ApportionError
from apportion.serve.gateway import Gateway, Tenant
from apportion.serve.passes import seal, unseal

__all__ = ["COOKIE", "SESSION_SECONDS", "issue_session", "read_session", "session_cookie"]

COOKIE: Final = "apportion_session"
"""The session cookie's name."""

SESSION_SECONDS: Final = 8 * 3600
"""How long a session lasts (then the login form asks for the key again)."""

_DOMAIN: Final = b"apportion-dashboard-session.v1."
_VERSION: Final = "s1"


def issue_session(gateway: Gateway, tenant: Tenant, now: float) -> str:
    """The sealed session of ``tenant``, valid for :data:`SESSION_SECONDS` from ``now``."""
    body = {"ten": tenant.name, "exp": math.floor(now) + SESSION_SECONDS}
    return seal(gateway.config.signing_key, body, domain=_DOMAIN, version=_VERSION)


def read_session(gateway: Gateway, value: str | None, now: float) -> Tenant | None:
    """The tenant of a session cookie, or ``None`` (absent, forged, expired, tenant gone)."""
    if gateway.config.open_mode:
        return gateway.authenticate({})
    if not value:
        return None
    try:
        body = unseal(gateway.config.signing_key, value, domain=_DOMAIN, version=_VERSION)
    except ApportionError:
        return None
    if not isinstance(body, dict):
        return None
    name, ends = body.get("ten"), body.get("exp")
    if not isinstance(name, str) or type(ends) is not int or ends <= now:
        return None
    entry = gateway.config.tenants.get(name)
    if entry is None:
        return None
    return Tenant(name, entry.admin)


def session_cookie(value: str, *, path: str, secure: bool, clear: bool = False) -> str:
    """The ``Set-Cookie`` header value that sets (or, ``clear``, removes) the session."""
    age = 0 if clear else SESSION_SECONDS
    parts = [
        f"{COOKIE}={'' if clear else value}",
        f"Path={path or '/'}",
        f"Max-Age={age}",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
