"""The gateway's core, free of HTTP: :class:`Gateway` (tenants, requests, idempotency).

A :class:`Gateway` is built from a :class:`~apportion.serve.config.ServeConfig`. It opens
the store once and runs one :class:`~apportion.controller.AsyncController` per pipeline
over it. It keeps no request in memory: every call attaches to the request by id
(:meth:`Gateway.request`, ``Controller.aattach``), so any replica on the same store (Redis)
serves any call of any request, and a replica that dies loses nothing but its in-flight
calls (their grants' leases expire).

Request ids live in the tenant's namespace: the store holds ``TENANT/ID``, the API shows
``ID``. Another tenant's id is simply not there (``UnknownRequest``, 404), and every error
shown to a tenant names its own ids only (see :mod:`apportion.serve.errors_json`).

A budget API call with an ``Idempotency-Key`` runs its operations under operation ids
derived from the tenant and the key (:func:`~apportion.controller.operation_ids`), and a
keyed ``open`` without a request id of the caller's gets one derived from them too. So
when a call's store operation was carried out but its outcome was lost (the store
unreachable after the controller's own retries: 503, and the idempotency record dropped),
the client's retry with the same key repeats the same operation ids on the same request,
and the store answers them with their first outcomes instead of granting, drawing or
settling twice. A proxied call does not (its 503 may be the upstream's, after the store
settled its grant: its retry must begin afresh).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from apportion.controller import AsyncController, AsyncRequest, operation_ids
from apportion.errors import (
    ApportionError,
    InvalidArgument,
    RequestClosed,
    SpecError,
    StoreUnavailable,
    UnknownRequest,
)
from apportion.ledger import Grant, check_outcome
from apportion.policies import resolve_policy
from apportion.reaper import Reaper
from apportion.serve.config import OPEN_TENANT, ServeConfig, hash_key, ranked
from apportion.serve.errors import (
    AuthenticationFailed,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    PoolDraining,
    UnknownGrant,
    UnknownPipeline,
)
from apportion.serve.errors_json import error_response
from apportion.serve.feed_hub import FeedHub
from apportion.serve.guard import FailureWindow
from apportion.serve.handles import issue_handle, read_handle
from apportion.serve.idempotency import IdempotencyRecords, Outcome, open_records
from apportion.stores import LedgerView, Store, open_store
from apportion.summary import Summary

__all__ = ["ID_PATTERN", "Gateway", "Tenant"]

ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""A request id a client may choose (``::`` is kept for children's ids)."""

_LOOKUP_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(::[A-Za-z0-9_.#-]{1,64})*$")
_KEY_PATTERN: Final = re.compile(r"^[\x21-\x7e]{1,255}$")

_CALL_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "apportion_serve_call_key", default=None
)
"""The operation key of the keyed call running (a digest of its tenant and key)."""

DRAIN_KEY: Final = "pool-drain:"
"""Prefix of the record that a pool is draining (in the idempotency records)."""

DRAIN_SECONDS: Final = 10 * 365 * 86400.0
"""How long a drain is kept (until lifted, in practice)."""


@dataclass(frozen=True)
class Tenant:
    """Who is calling: a tenant's name, and whether its key is an admin key."""

    name: str
    admin: bool = False

    @property
    def prefix(self) -> str:
        """What the store's ids of this tenant start with (``NAME/``)."""
        return f"{self.name}/"


class Gateway:
    """Budgets over the store for every tenant: open, attach by id, run calls once.

    Args:
        config: what to serve (default :meth:`ServeConfig.default`).
        store: a store object to use instead of opening ``config.store`` (tests).
        clock: seconds as a float, for every controller (default ``time.time``).

    Raises:
        UnknownStore, InvalidArgument: the store URL cannot be opened.
        MissingExtra: the store's (or a telemetry sink's) library is not installed.
    """

    def __init__(
        self,
        config: ServeConfig | None = None,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None else ServeConfig.default()
        self.clock = clock
        self.store: Store = store if store is not None else open_store(self.config.store)
        self.records: IdempotencyRecords = open_records(
            self.config.store, getattr(self.store, "prefix", None)
        )
        self.added_telemetry: tuple[str, ...] = ()
        """Sinks every config this gateway takes gets (``create_app`` adds Prometheus's)."""
        self.failures = FailureWindow(
            self.config.auth_failure_limit, self.config.auth_failure_window, clock=clock
        )
        self._configure(self.config)
        self._seen = file_signature(self.config.file)
        """The config file's ``stat`` when last read (:meth:`check_config`)."""
        self._retiring: list[threading.Thread] = []
        self._reaper: Reaper | None = None
        self.feed_hub = FeedHub(self.store)
        """The one reader of the store's feed the dashboard's streams share (started by
        the first stream, not here)."""
        self._unwritten: dict[str, tuple[str, str, Outcome | None, float]] = {}
        """Idempotency records the store was down to write: (fingerprint, operation,
        outcome or ``None`` to drop the claim, ttl)."""
        self._writing = asyncio.Lock()
        """Held while a call writes the records of ``_unwritten`` (one at a time)."""

    def _configure(self, config: ServeConfig) -> None:
        """Build what a config decides: the controllers, the keys, the failure window.

        All or nothing: a controller that cannot be built leaves the running ones (the
        sinks of those built meanwhile are closed). The failure window is kept (its
        counts too), with the new limit and window.
        """
        telemetry = list(config.telemetry) or None
        controllers: dict[str, AsyncController] = {}
        try:
            for name, entry in config.pipelines.items():
                controllers[name] = AsyncController(
                    entry.pipeline,
                    resolve_policy(entry.policy, store=self.store, options=entry.policy_options),
                    self.store,
                    clock=self.clock,
                    lease_seconds=config.lease_seconds,
                    request_ttl=config.request_ttl,
                    telemetry=telemetry,
                    catalog=config.models,
                )
        except BaseException:
            _close_sinks([c for made in controllers.values() for c in made.sinks])
            raise
        for controller in controllers.values():  # a reap is store-wide: each to its own
            controller.reaps_for(controllers.values())
        by_agents: dict[frozenset[str], str] = {}
        for name, entry in config.pipelines.items():
            by_agents.setdefault(ranked(entry.pipeline), name)
        keys = {
            digest: Tenant(t.name, t.admin)
            for t in config.tenants.values()
            for digest in t.key_hashes
        }
        self.failures.configure(config.auth_failure_limit, config.auth_failure_window)
        self.config, self.controllers, self._by_agents, self._keys = (
            config,
            controllers,
            by_agents,
            keys,
        )

    def reload(self, config: ServeConfig | None = None) -> ServeConfig:
        """Take a new config (default: re-read the config file); a bad one changes nothing.

        Tenants, keys, pipelines, upstreams and limits change at once; the failed
        authentications counted so far are kept. The old controllers' telemetry sinks are
        flushed and closed (in a thread: :meth:`wait_retired`).

        The store stays (a new store URL needs a restart); without a ``signing_key`` in the
        new config, the running key is kept, so grant handles and budget tokens already
        given out stay good. Requests of a pipeline no longer configured cannot be reached.

        A reload is this process's: with several workers, each reloads itself when it sees
        the file changed (:meth:`watch_config`).

        Raises:
            SpecError: the file is unreadable or invalid, or it changes the store (with the
                file, line and key); the gateway was started without a file.
        """
        try:
            if config is None:
                file = self.config.file
                if file is None:
                    raise SpecError(
                        "the gateway was started without a config file: nothing to reload"
                    )
                self._seen = file_signature(file)  # before reading: a later change is seen
                config = ServeConfig.from_yaml(file)
            if config.store != self.config.store:
                raise SpecError(
                    "the store cannot change while the gateway runs: restart it",
                    file=config.file,
                    key="store",
                )
            if config.signing_key_random:
                config = dataclasses.replace(
                    config, signing_key=self.config.signing_key, signing_key_random=False
                )
            missing = tuple(url for url in self.added_telemetry if url not in config.telemetry)
            if missing:
                config = dataclasses.replace(config, telemetry=(*config.telemetry, *missing))
            old = list(self.controllers.values())
            self._configure(config)
        except ApportionError as exc:
            _log.warning(
                "config_reload_failed",
                extra={"fields": {"worker": os.getpid(), **error_response(exc)[1]["error"]}},
            )
            raise
        from apportion.serve.ops import hide_config

        hide_config(config)  # its secrets never reach a log line either
        self._retire(old)
        _log.info(
            "config_reloaded",
            extra={"fields": {"worker": os.getpid(), "file": config.file}},
        )
        return config

    def check_config(self) -> bool:
        """Reload the config file if it changed since it was last read; whether it did.

        A bad file is logged (``config_reload_failed``) and left until it changes again;
        the running config stays.
        """
        file = self.config.file
        if file is None or file_signature(file) == self._seen:
            return False
        try:
            self.reload()
        except ApportionError:
            return False
        return True

    async def watch_config(self) -> None:
        """Reload the config file when it changes, checked every ``config_poll_seconds``.

        Each worker of ``apportion serve --workers N`` runs this (the app's lifespan), so
        all of them take a changed file within that time; ends at once without a file or
        with ``config_poll_seconds: 0``. Runs until cancelled.
        """
        while True:
            every = self.config.config_poll_seconds
            if self.config.file is None or every <= 0:
                return
            await asyncio.sleep(every)
            try:
                self.check_config()
            except Exception:  # never let the watcher die
                _log.exception("config_watch_failed")

    def _retire(self, controllers: list[AsyncController]) -> None:
        """Flush and close the telemetry sinks of controllers no longer used (a thread)."""
        channels = [channel for controller in controllers for channel in controller.sinks]
        if not channels:
            return
        thread = threading.Thread(
            target=_close_sinks, args=(channels,), name="apportion-retire-sinks", daemon=True
        )
        self._retiring = [t for t in self._retiring if t.is_alive()]
        self._retiring.append(thread)
        thread.start()

    def wait_retired(self, timeout: float | None = None) -> None:
        """Wait until the sinks of replaced configs are flushed and closed."""
        for thread in list(self._retiring):
            thread.join(timeout)

    # ------------------------------------------------------------------ lifetime

    def start(self, reap_every: float | None = None) -> None:
        """Start the TTL reaper (idle requests past their TTL close, leases expire)."""
        if self._reaper is None:
            every = reap_every
            if every is None:
                every = max(1.0, min(30.0, self.config.lease_seconds / 4))
            self._reaper = Reaper(self.reap, every).start()

    async def aclose(self) -> None:
        """Stop the reaper and the feed's reader, close the records' connections."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.stop()
        await self.feed_hub.aclose()
        await self.records.aclose()

    def reap(self) -> int:
        """Expire ended leases and overdue requests store-wide (each learned, recorded).

        One controller's reap is store-wide; its peers (:meth:`Controller.reaps_for`) learn
        from and record the expired requests of their pipelines.
        """
        return next(iter(self.controllers.values())).reap()

    # ------------------------------------------------------------------ tenants

    def authenticate(self, headers: Mapping[str, str], client: str | None = None) -> Tenant:
        """The tenant whose key the ``Authorization: Bearer KEY`` header carries.

        With no tenants configured (open mode) every call is tenant ``default``. Failures
        are counted per ``client`` address (:class:`~apportion.serve.guard.FailureWindow`):
        past the configured limit, every call from it is refused for a while.

        Raises:
            AuthenticationFailed: no key, a malformed header, or a key no tenant holds
                (the key is never quoted).
            AuthenticationThrottled: too many failures from ``client`` lately (429).
        """
        if self.config.open_mode:
            return Tenant(OPEN_TENANT, admin=True)
        self.failures.check(client)
        try:
            return self._tenant_of(headers)
        except AuthenticationFailed:
            self.failures.failed(client)
            raise

    def authorize_metrics(self, headers: Mapping[str, str], client: str | None = None) -> None:
        """Let the call read ``/metrics``, or refuse it (``config.metrics_access``).

        ``public``: anyone. ``admin``: an admin key, or the config's ``metrics_key`` (a
        scraper's key, good for nothing else). Failures count as failed authentications.

        Raises:
            AuthenticationFailed: no key, or a key that is neither (401).
            Forbidden: a tenant's key that is not an admin key (403).
            AuthenticationThrottled: too many failures from ``client`` lately (429).
        """
        config = self.config
        if config.metrics_access == "public":
            return
        self.failures.check(client)
        wanted = config.metrics_key_hash
        if wanted is not None:
            scheme, _, key = (_header(headers, "authorization") or "").strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(hash_key(key.strip()), wanted):
                return
        if config.open_mode:  # no tenant keys: the metrics key is the only way in
            self.failures.failed(client)
            raise AuthenticationFailed("/metrics needs the metrics key: Authorization: Bearer")
        try:
            tenant = self._tenant_of(headers)
        except AuthenticationFailed:
            self.failures.failed(client)
            raise
        if not tenant.admin:
            raise Forbidden(tenant.name, "read the metrics")

    def _tenant_of(self, headers: Mapping[str, str]) -> Tenant:
        value = _header(headers, "authorization")
        if value is None:
            raise AuthenticationFailed("missing Authorization: Bearer <key> header")
        scheme, _, key = value.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationFailed("malformed Authorization header: Bearer <key> expected")
        tenant = self._keys.get(hash_key(key))
        if tenant is None:
            raise AuthenticationFailed("unknown key")
        return tenant

    # ------------------------------------------------------------------ requests

    def controller(self, pipeline: str | None) -> tuple[str, AsyncController]:
        """The pipeline's name and controller (``None``: the first configured).

        Raises:
            UnknownPipeline: the gateway does not serve it.
        """
        if pipeline is None:
            name = next(iter(self.controllers))
            return name, self.controllers[name]
        found = self.controllers.get(pipeline) if isinstance(pipeline, str) else None
        if found is None:
            raise UnknownPipeline(pipeline, self.controllers)
        return pipeline, found

    async def open(
        self,
        tenant: Tenant,
        pipeline: str | None = None,
        ceiling: int | None = None,
        cost_ceiling: float | None = None,
        features: Mapping[str, Any] | None = None,
        pool: str | None = None,
        parent: str | None = None,
        *,
        request_id: str | None = None,
        pool_priority: str = "standard",
        name: str | None = None,
        share: float | None = None,
        priority: str = "standard",
    ) -> AsyncRequest:
        """Open a request in ``tenant``'s namespace (or a child of its request ``parent``).

        Args:
            tenant: the caller.
            pipeline: the pipeline's name (default: the first configured); a child's is
                its parent's.
            ceiling: tokens (default: the pipeline's configured ceiling; a child needs
                ``ceiling`` or ``share``).
            cost_ceiling: USD (default: the pipeline's configured one, if any).
            features: what is known of the request up front.
            pool: a shared pool of the tenant to draw the ceiling from (root requests);
                the store's pool is ``TENANT/POOL`` (see :meth:`pool_name`).
            parent: the id of an open request of the tenant to carve a child from.
            request_id: an id of the caller's own (default: a random one).
            pool_priority: the request's class in the pool.
            name: a child's name (default: ``child``).
            share: a child's share of what its parent can spare (instead of ``ceiling``).
            priority: a child's priority class.

        Returns:
            The open request (its ``request_id`` is the store's; see :meth:`public_id`).

        Raises:
            UnknownPipeline, UnknownRequest, InvalidCeiling, InvalidArgument,
            DuplicateRequest, BudgetExceeded (and subclasses), StoreUnavailable.
        """
        if parent is not None:
            for field, value in (
                ("pool", pool),
                ("request_id", request_id),
                ("cost_ceiling", cost_ceiling),
            ):
                if value is not None:
                    raise InvalidArgument(field, value, "a child draws from its parent: omit it")
            if pool_priority != "standard":
                raise InvalidArgument("pool_priority", pool_priority, "a child has no pool")
            if pipeline is not None:
                self.controller(pipeline)  # an unknown name is refused all the same
            mother = await self.request(tenant, parent)
            kid = mother.child(
                name if name is not None else "child",
                ceiling=ceiling,
                share=share,
                priority=priority,
                features=features,
            )
            await kid.open()
            return kid
        for field, value in (("name", name), ("share", share)):
            if value is not None:
                raise InvalidArgument(field, value, "only a child has it: give parent too")
        if priority != "standard":
            raise InvalidArgument("priority", priority, "a child's class: give parent too")
        pipeline_name, controller = self.controller(pipeline)
        entry = self.config.pipelines[pipeline_name]
        if pool is not None and await self.draining(self.pool_name(tenant, pool)):
            raise PoolDraining(str(pool))
        keyed = _CALL_KEY.get()
        if request_id is None and keyed is not None:  # a retry of the call opens the same
            request_id = f"k{keyed[:31]}"
        elif request_id is None:
            request_id = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        elif not isinstance(request_id, str) or not ID_PATTERN.match(request_id):
            raise InvalidArgument(
                "request_id", request_id, "1 to 128 letters, digits, '_', '.' or '-' (not first)"
            )
        req = controller.arequest(
            entry.ceiling if ceiling is None else ceiling,
            features,
            request_id=tenant.prefix + request_id,
            pool=None if pool is None else self.pool_name(tenant, pool),
            pool_priority=pool_priority,
            ceiling_usd=entry.ceiling_usd if cost_ceiling is None else cost_ceiling,
        )
        await req.open()
        return req

    async def request(self, tenant: Tenant, request_id: str) -> AsyncRequest:
        """A handle on ``tenant``'s open request ``request_id``, from any replica.

        Raises:
            UnknownRequest: no such request in the tenant's namespace (another tenant's
                id is not found either).
            RequestClosed: it is closed.
        """
        internal = self._internal(tenant, request_id)
        controller = await self._controller_of(internal)
        return await controller.aattach(internal)

    async def summary(self, tenant: Tenant, request_id: str) -> Summary:
        """The summary of ``tenant``'s request, open or closed (as long as the store keeps it).

        Raises:
            UnknownRequest: no such request in the tenant's namespace.
        """
        internal = self._internal(tenant, request_id)
        state = await self.store.aget(internal)
        name = self._pipeline_of(state.ranks)
        return Summary.of(state, self.config.pipelines[name].pipeline.names)

    @staticmethod
    def pool_name(tenant: Tenant, pool: object) -> str:
        """The store's name of ``tenant``'s pool ``pool`` (``TENANT/POOL``: pools are per tenant).

        Raises:
            InvalidArgument: not a pool name (a non-empty string without braces).
        """
        if not isinstance(pool, str) or not pool or "{" in pool or "}" in pool:
            raise InvalidArgument("pool", pool, "a pool name is a non-empty string without braces")
        return tenant.prefix + pool

    async def draining(self, pool: str) -> bool:
        """Whether the store's pool ``pool`` is being drained (kept beside the store)."""
        return await self.records.get_value(DRAIN_KEY + pool) is not None

    async def drain(self, pool: str, draining: bool = True) -> None:
        """Drain the store's pool ``pool`` (no new request draws from it), or lift that."""
        if draining:
            await self.records.put_value(DRAIN_KEY + pool, "1", DRAIN_SECONDS)
        else:
            await self.records.forget(DRAIN_KEY + pool)

    def public_id(self, tenant: Tenant, request_id: str) -> str:
        """The id ``tenant`` knows a request by (the store's, without the tenant's prefix)."""
        return request_id.removeprefix(tenant.prefix)

    @staticmethod
    def public_id_of(request_id: str) -> str:
        """A store id without its tenant's prefix (``TENANT/ID`` -> ``ID``)."""
        return request_id.split("/", 1)[-1]

    def grant(self, tenant: Tenant, req: AsyncRequest, handle: object) -> Grant:
        """The grant a handle names in ``req``, as the store knows it.

        The handle (see :mod:`apportion.serve.handles`) is checked first: its signature,
        its tenant and its request. An open grant comes from the request's state; a settled
        one is named by its id and agent, so the store answers ``GrantSettled`` (or settles
        an expired one late).

        Raises:
            GrantInvalid: the handle is malformed, changed, or of another tenant or request.
            UnknownGrant: no such grant was made (a handle of a request since replaced).
        """
        grant_id, agent = read_handle(
            self.config.signing_key, handle, tenant=tenant.name, request_id=req.request_id
        )
        stored_agent = req.pipeline.resolve(agent).name
        state = req.state
        if not 1 <= grant_id < getattr(state, "next_grant_id", 2**53 + 1):
            raise UnknownGrant(self.public_id_of(req.request_id), grant_id)
        current = state.grants.get(grant_id)
        if current is not None and current.agent == stored_agent:
            return current if agent == stored_agent else current._replace(agent=agent)
        return Grant(req.request_id, agent, grant_id, 0, 0, 0.0)

    def grant_handle(self, tenant: Tenant, grant: Grant) -> str:
        """The signed handle of ``grant`` (of ``tenant``'s request) that clients send back."""
        return issue_handle(
            self.config.signing_key,
            tenant=tenant.name,
            request_id=grant.request_id,
            grant_id=grant.grant_id,
            agent=grant.agent,
        )

    async def score(self, tenant: Tenant, request_id: str, value: float) -> None:
        """Keep ``value`` as the request's outcome score, told to the policy at close.

        Kept beside the store (any replica may close the request).

        Raises:
            InvalidArgument: not a finite number.
            UnknownRequest, RequestClosed: no such open request.
        """
        outcome = check_outcome(value)
        if outcome is None:
            raise InvalidArgument("outcome", value, "an outcome score is a finite number")
        req = await self.request(tenant, request_id)
        await self.records.put_value(
            f"score:{req.request_id}", repr(outcome), self.config.request_ttl
        )

    async def close(self, tenant: Tenant, request_id: str, status: str = "closed") -> Summary:
        """Close ``tenant``'s request (its score, if one was given, goes to the policy).

        Returns:
            Its final summary.
        """
        req = await self.request(tenant, request_id)
        kept = await self.records.get_value(f"score:{req.request_id}")
        if kept is not None:
            req.score(float(kept))
        await req.close(status)
        return req.summary()

    # ------------------------------------------------------------------ idempotency

    async def idempotent(
        self,
        tenant: Tenant,
        key: str | None,
        op_name: str,
        fn: Callable[[], Awaitable[Outcome]],
        *,
        fingerprint: str | None = None,
        store_ids: bool = False,
    ) -> Outcome:
        """Run ``fn`` once per ``(tenant, key)``; a retry gets the first outcome.

        ``fn`` returns the call's outcome (status and JSON body); an
        :class:`~apportion.errors.ApportionError` it raises becomes its error outcome
        (recorded too: a refused call stays refused). With ``key`` ``None`` ``fn`` just
        runs.

        Args:
            tenant: the caller (keys are per tenant).
            key: the ``Idempotency-Key`` header, or ``None``.
            op_name: the operation (``begin``, ``finish`` ...), recorded with the key.
            fn: the operation.
            fingerprint: what identifies the call (the HTTP routes pass a digest of method,
                path and body): the same key with another fingerprint is refused. Default:
                ``op_name`` alone.
            store_ids: run ``fn``'s store operations under operation ids derived from the
                tenant and key (and a keyed open without an id under an id derived from
                them), so that a run again after a 503 repeats them and the store answers
                with their first outcomes. Only for calls whose one 503 is the store
                unreachable (the budget API): a proxied call's 503 may be the upstream's,
                after the store settled everything, and its retry must run afresh.

        Raises:
            InvalidArgument: a malformed key (1 to 255 printable ASCII characters).
            IdempotencyKeyReused: the key was used for another call.
            IdempotencyInProgress: the first call with the key is still running.
        """
        if key is None:
            return await self._outcome(tenant, fn)
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise InvalidArgument(
                "Idempotency-Key", key, "1 to 255 printable ASCII characters, no spaces"
            )
        if fingerprint is None:
            fingerprint = op_name
        record = f"{tenant.name}:{hashlib.sha256(key.encode()).hexdigest()}"
        ttl = self.config.request_ttl
        if self._unwritten or self._writing.locked():
            await self._write_records()
        try:
            claim = await self.records.claim(record, fingerprint, op_name, ttl)
        except StoreUnavailable:  # the claim may have been written: drop it once back
            self._unwritten[record] = (fingerprint, op_name, None, ttl)
            raise
        if claim.state == "done":
            assert claim.outcome is not None
            return claim.outcome
        if claim.state == "mismatch":
            raise IdempotencyKeyReused(key, claim.operation)
        if claim.state == "running":
            raise IdempotencyInProgress(key, claim.operation)
        key_digest = hashlib.sha256(record.encode("utf-8")).hexdigest()[:40]
        token = _CALL_KEY.set(key_digest if store_ids else None)
        try:
            with operation_ids(key_digest) if store_ids else contextlib.nullcontext():
                outcome = await self._outcome(tenant, fn)
        except BaseException:
            await self._write_record(record, (fingerprint, op_name, None, ttl))
            raise
        finally:
            _CALL_KEY.reset(token)
        if outcome.status == 503:  # the store was unreachable: let the retry run again
            await self._write_record(record, (fingerprint, op_name, None, ttl))
        else:
            await self._write_record(record, (fingerprint, op_name, outcome, ttl))
        return outcome

    async def _write_record(
        self, record: str, done: tuple[str, str, Outcome | None, float]
    ) -> None:
        """Complete a claimed record with its outcome, or (``None``) drop the claim.

        When the store cannot be reached (Redis stopped mid-call), the write waits in
        ``_unwritten`` and is made before this gateway's next keyed call, so the claim
        does not stay ``running`` for its whole TTL: a retry gets the outcome (or runs
        again).
        """
        fingerprint, op_name, outcome, ttl = done
        try:
            if outcome is None:
                await self.records.forget_claim(record, fingerprint, op_name)
            else:
                await self.records.complete(record, fingerprint, op_name, outcome, ttl)
        except StoreUnavailable:
            self._unwritten[record] = done

    async def _write_records(self) -> None:
        """Write the records the store was down for (raises while it still is).

        One call writes them at a time; the others wait until it is done: a retry that
        came meanwhile would otherwise claim its key before the drop of its first claim
        was written, and meet it ``in_progress``.
        """
        async with self._writing:
            for record in list(self._unwritten):
                done = self._unwritten.pop(record, None)
                if done is None:  # another call wrote it meanwhile
                    continue
                await self._write_record(record, done)
                if record in self._unwritten:
                    raise StoreUnavailable(self.config.store_shown, "still unreachable")

    async def _outcome(self, tenant: Tenant, fn: Callable[[], Awaitable[Outcome]]) -> Outcome:
        try:
            return await fn()
        except ApportionError as exc:
            status, body = error_response(exc, tenant.prefix)
            return Outcome(status, json.dumps(body).encode("utf-8"))

    # ------------------------------------------------------------------ watching

    def visible_prefix(self, tenant: Tenant) -> str:
        """What the store's ids ``tenant`` may see start with (an admin: every tenant's)."""
        return "" if tenant.admin else tenant.prefix

    async def open_requests(self, tenant: Tenant, limit: int = 1000) -> list[LedgerView]:
        """The open requests ``tenant`` may see, by store id (an admin sees every tenant's).

        Listed from the store's index of open requests (no scan of every key), then read
        (at most ``limit``, the first by id); a request that closed or vanished between
        the two is left out.

        Raises:
            InvalidArgument: ``limit`` is not an integer in ``[1, 10000]``.
            StoreUnavailable: the store cannot be reached.
        """
        from apportion.serve.gather import gather_bounded

        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidArgument("limit", limit, "an integer in [1, 10000]")
        ids = await self.store.aopen_requests(self.visible_prefix(tenant))

        async def state(request_id: str) -> LedgerView | None:
            try:
                return await self.store.aget(request_id)
            except UnknownRequest:
                return None

        states = await gather_bounded(state(i) for i in ids[:limit])
        return [s for s in states if s is not None and s.status == "open"]

    # ------------------------------------------------------------------ helpers

    def _internal(self, tenant: Tenant, request_id: object) -> str:
        if not isinstance(request_id, str) or not _LOOKUP_PATTERN.match(request_id):
            raise UnknownRequest(request_id if isinstance(request_id, str) else repr(request_id))
        return tenant.prefix + request_id

    def _pipeline_of(self, ranks: Mapping[str, int]) -> str:
        if len(self.controllers) == 1:
            return next(iter(self.controllers))
        name = self._by_agents.get(frozenset(ranks))
        if name is None:  # a request of a pipeline no longer configured
            raise UnknownPipeline(None, self.controllers)
        return name

    async def _controller_of(self, internal: str) -> AsyncController:
        if len(self.controllers) == 1:
            return next(iter(self.controllers.values()))
        state = await self.store.aget(internal)
        if state.status != "open":
            raise RequestClosed(internal, state.status)
        return self.controllers[self._pipeline_of(state.ranks)]


RETIRE_FLUSH_SECONDS: Final = 30.0
"""How long a replaced sink's records may take to be written before it is closed."""

_log = logging.getLogger("apportion.serve")


def file_signature(file: str | None) -> tuple[int, int, int] | None:
    """What tells that a file changed: its ``stat`` (mtime, size, inode); ``None``: none."""
    if file is None:
        return None
    try:
        found = os.stat(file)
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


def _close_sinks(channels: list[Any]) -> None:
    """Flush each telemetry channel (bounded), then close its sink (errors: a warning)."""
    for channel in channels:
        try:
            channel.flush(RETIRE_FLUSH_SECONDS)
            close = getattr(channel.sink, "close", None)
            if close is not None:
                close()
        except Exception as exc:  # telemetry never breaks the gateway
            warnings.warn(f"closing telemetry sink {channel.name}: {exc!r}", stacklevel=1)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        for key, found in headers.items():
            if key.lower() == name:
                return found
    return value
