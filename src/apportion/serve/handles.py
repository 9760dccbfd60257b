"""Grant handles: a grant over the gateway is an opaque string bound to tenant and request.

``begin`` answers a grant with ``grant``, a handle signed with the gateway's signing key
(the same HMAC codec as budget tokens, :func:`apportion.serve.passes.seal`, under a domain
of its own); ``extend``, ``renew``, ``finish`` and ``release`` take it back. The handle
names the tenant, the store's request id, the grant id and the agent, so it cannot be
forged, changed, used by another tenant or at another request: any of those is
:class:`~apportion.serve.errors.GrantInvalid` (403 ``grant_invalid``), before anything is
read or written. Its payload is readable by its holder (it is not secret, and the readable
fields are answered beside it anyway); only the gateway can make one.

A handle is ``g1.<payload>.<signature>``; the payload is compact JSON: ``ten`` (tenant),
``req`` (the store's request id), ``gid`` (the grant id), ``agt`` (the agent as asked).
It stays valid for the grant's whole life (an extension keeps the same handle); a settled
grant's handle is answered ``grant_settled`` by the store, as before.
"""

from __future__ import annotations

from typing import Final

from apportion.serve.errors import GrantInvalid
from apportion.serve.passes import seal, unseal

__all__ = ["VERSION", "issue_handle", "read_handle"]

VERSION: Final = "g1"
"""A grant handle's first part (its format's version)."""

_DOMAIN: Final = b"apportion-grant-handle.v1."


def issue_handle(key: bytes, *, tenant: str, request_id: str, grant_id: int, agent: str) -> str:
    """The signed handle of grant ``grant_id`` of ``agent`` in ``tenant``'s ``request_id``.

    Args:
        key: the gateway's signing key.
        tenant: the tenant's name.
        request_id: the store's request id (``TENANT/ID``).
        grant_id: the grant's id in the request.
        agent: the agent as the grant names it.
    """
    body = {"ten": tenant, "req": request_id, "gid": grant_id, "agt": agent}
    return seal(key, body, domain=_DOMAIN, version=VERSION)


def read_handle(key: bytes, handle: object, *, tenant: str, request_id: str) -> tuple[int, str]:
    """The grant id and agent a handle names, once its signature, tenant and request match.

    Args:
        key: the gateway's signing key.
        handle: the ``grant`` a client sent.
        tenant: the caller's tenant.
        request_id: the store's id of the request the call is made at.

    Raises:
        GrantInvalid: malformed, changed, signed with another key, of another tenant, or
            of another request (the handle is never quoted).
    """
    body = unseal(key, handle, domain=_DOMAIN, version=VERSION, invalid=GrantInvalid)
    if not isinstance(body, dict):
        raise GrantInvalid("malformed (bad payload)")
    grant_id, agent = body.get("gid"), body.get("agt")
    if type(grant_id) is not int or not isinstance(agent, str):
        raise GrantInvalid("malformed (bad payload)")
    if body.get("ten") != tenant:
        raise GrantInvalid("the grant belongs to another tenant")
    if body.get("req") != request_id:
        raise GrantInvalid("the grant belongs to another request")
    return grant_id, agent
