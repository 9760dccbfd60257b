"""The errors only the gateway raises (every one an :class:`~apportion.errors.ApportionError`).

Each carries its facts as fields, like every apportion error; none ever holds a key, a
provider secret or a password (a key is named by its tenant, never quoted).
"""

from __future__ import annotations

from collections.abc import Iterable

from apportion.errors import ApportionError, InvalidArgument
from apportion.limits import excerpt, listing


class AuthenticationFailed(ApportionError, PermissionError):
    """A call carried no API key, or one no tenant holds.

    Attributes:
        reason: what was wrong (``missing``, ``malformed`` or ``unknown key``); the key
            itself is never quoted.
    """

    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(f"authentication failed: {reason}", reason=reason)


class AuthenticationThrottled(ApportionError, PermissionError):
    """Too many failed authentications from this client address: wait, then retry.

    Attributes:
        retry_after: whole seconds until a call is taken again (the ``Retry-After``).
        limit: failures allowed per window.
        window: the window, in seconds.
    """

    retry_after: int
    limit: int
    window: float

    def __init__(self, retry_after: int, limit: int, window: float) -> None:
        super().__init__(
            f"too many failed authentications from this address ({limit} within "
            f"{window:g} s); retry after {retry_after} s",
            retry_after=retry_after,
            limit=limit,
            window=window,
        )


class Forbidden(ApportionError, PermissionError):
    """The tenant's key may not do this (an admin operation with a tenant's key).

    Attributes:
        tenant: the caller's tenant.
        operation: what was asked.
    """

    tenant: str
    operation: str

    def __init__(self, tenant: str, operation: str) -> None:
        super().__init__(
            f"tenant {tenant!r} may not {operation}: it needs an admin key",
            tenant=tenant,
            operation=operation,
        )


class UnknownPipeline(ApportionError, LookupError):
    """A pipeline name the gateway's configuration does not list.

    Attributes:
        pipeline: the name given.
        known: the configured pipelines.
    """

    pipeline: object
    known: list[str]

    def __init__(self, pipeline: object, known: Iterable[str]) -> None:
        known_list = sorted(known)
        super().__init__(
            f"unknown pipeline {excerpt(pipeline)}; the gateway serves: {listing(known_list)}",
            pipeline=pipeline,
            known=known_list,
        )


class InvalidBody(InvalidArgument):
    """A request body that is not JSON, not an object, too large, or with a bad field.

    Attributes:
        argument: the field (dotted: ``features.messages``), or ``body``.
        value: the value given (an excerpt).
        reason: what is wrong with it.
    """


class IdempotencyKeyReused(ApportionError, ValueError):
    """An ``Idempotency-Key`` sent again with another operation or another body.

    Attributes:
        key: the idempotency key.
        operation: the operation it was first used for.
    """

    key: str
    operation: str

    def __init__(self, key: str, operation: str) -> None:
        super().__init__(
            f"idempotency key {excerpt(key)} was first used for {operation} with another "
            "body; a retry must repeat the first call exactly (use a new key for a new call)",
            key=key,
            operation=operation,
        )


class IdempotencyInProgress(ApportionError, RuntimeError):
    """The first call with this ``Idempotency-Key`` is still running: retry shortly.

    Attributes:
        key: the idempotency key.
        operation: the operation running.
    """

    key: str
    operation: str

    def __init__(self, key: str, operation: str) -> None:
        super().__init__(
            f"the first call with idempotency key {excerpt(key)} ({operation}) is still "
            "running; retry it shortly to get its outcome",
            key=key,
            operation=operation,
        )


class UnknownGrant(ApportionError, LookupError):
    """No grant with this id was ever made in the request.

    Attributes:
        request_id: the request.
        grant_id: the grant id given.
    """

    request_id: str
    grant_id: int

    def __init__(self, request_id: str, grant_id: int) -> None:
        super().__init__(
            f"request {request_id!r} has no grant {grant_id}",
            request_id=request_id,
            grant_id=grant_id,
        )


class GrantInvalid(ApportionError, PermissionError):
    """A grant handle that is malformed, changed, or of another tenant or request.

    Attributes:
        argument: the field that held it (``grant``).
        reason: what is wrong (never the handle itself).
    """

    argument: str
    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"grant: {reason}; use the grant handle begin answered for this request",
            argument="grant",
            reason=reason,
        )


class DuplicatePool(ApportionError, ValueError):
    """A pool of this name is defined already (resize it instead).

    Attributes:
        pool: the pool's name.
    """

    pool: str

    def __init__(self, pool: str) -> None:
        super().__init__(f"pool {pool!r} exists already: PATCH it to resize it", pool=pool)


class PoolDraining(ApportionError, RuntimeError):
    """The pool is being drained: no new request may draw from it.

    Attributes:
        pool: the pool's name.
    """

    pool: str

    def __init__(self, pool: str) -> None:
        super().__init__(
            f"pool {pool!r} is draining: it takes no new requests (an admin lifts it)",
            pool=pool,
        )


__all__ = [
    "AuthenticationFailed",
    "AuthenticationThrottled",
    "DuplicatePool",
    "Forbidden",
    "GrantInvalid",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "InvalidBody",
    "PoolDraining",
    "UnknownGrant",
    "UnknownPipeline",
]
