"""The admin API: a tenant's shared pools and the config's reload (admin keys only).

Routes (an admin key: a tenant with ``admin: true``; any other key is ``403 forbidden``):

* ``GET /v1/admin/pools?tenant=T``: the tenant's pools, each with its current window;
* ``POST /v1/admin/pools/{tenant}`` (``name``, ``capacity``, ``window_seconds``,
  ``reserve``): define one (``409 duplicate_pool`` if it exists);
* ``PATCH /v1/admin/pools/{tenant}/{name}`` (``capacity``, ``reserve``, ``draining``):
  resize it (what is drawn stays drawn), change its reserves, drain it or lift a drain;
* ``POST /v1/admin/pools/{tenant}/{name}/drain``: no new request draws from it (``409
  pool_draining``); open ones run on and give back what they leave;
* ``POST /v1/admin/reload``: re-read the config file (tenants, keys, pipelines, upstreams,
  limits); a bad file changes nothing and is ``422`` with the ``SpecError``'s fields.

Pools are per tenant: the tenant's ``team`` is the store's ``TENANT/team``
(:meth:`~apportion.serve.gateway.Gateway.pool_name`). A drain is kept beside the store (in
the gateway's records), so every replica sharing the store sees it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Query

from apportion.errors import InvalidArgument, UnknownPool
from apportion.pools import Pool
from apportion.serve import schemas as s
from apportion.serve.errors import DuplicatePool, Forbidden
from apportion.serve.gateway import Gateway, Tenant
from apportion.serve.routes import acting_as, tenant_dependency

__all__ = ["admin_routes"]

PREFIX = "/v1/admin"


def _reserve(reserve: dict[Any, int] | None) -> dict[str, int]:
    return {str(k): v for k, v in (reserve or {}).items()}


def _admin(caller: Tenant, operation: str) -> None:
    if not caller.admin:
        raise Forbidden(caller.name, operation)


def _owner(gateway: Gateway, caller: Tenant, tenant: str, operation: str) -> Tenant:
    _admin(caller, operation)
    owner = acting_as(gateway, caller, tenant, operation)
    if gateway.config.open_mode or tenant in gateway.config.tenants:
        return owner
    raise InvalidArgument("tenant", tenant, "a configured tenant")


async def _pool_json(gateway: Gateway, owner: Tenant, store_name: str) -> dict[str, Any]:
    status = await gateway.store.aget_pool(store_name, gateway.clock())
    shown = status.to_dict()
    shown["name"] = store_name.removeprefix(owner.prefix)
    return {"tenant": owner.name, **shown, "draining": await gateway.draining(store_name)}


def admin_routes(app: FastAPI, gateway: Gateway) -> None:
    """Add the admin API to ``app``."""
    caller_of = Depends(tenant_dependency(gateway))
    errors = s.error_responses

    @app.get(
        f"{PREFIX}/pools",
        tags=["admin"],
        response_model=s.PoolsOut,
        responses=errors(401, 403, 422, 503),
    )
    async def list_pools(
        tenant: str = Query(description="the tenant whose pools to list"),
        caller: Tenant = caller_of,
    ) -> Any:
        """A tenant's pools and their current windows."""
        owner = _owner(gateway, caller, tenant, "list pools")
        names = await gateway.store.apool_names(owner.prefix)
        return {
            "tenant": owner.name,
            "pools": [await _pool_json(gateway, owner, name) for name in names],
        }

    @app.post(
        f"{PREFIX}/pools/{{tenant}}",
        tags=["admin"],
        status_code=201,
        response_model=s.PoolOut,
        responses=errors(401, 403, 409, 422, 503),
    )
    async def create_pool(tenant: str, body: s.PoolBody, caller: Tenant = caller_of) -> Any:
        """Define a tenant's shared pool (its requests name it in `pool`)."""
        owner = _owner(gateway, caller, tenant, "define pools")
        name = gateway.pool_name(owner, body.name)
        try:
            await gateway.store.aget_pool(name, gateway.clock())
        except UnknownPool:
            pass
        else:
            raise DuplicatePool(body.name)
        pool = Pool(name, body.capacity, body.window_seconds, _reserve(body.reserve))
        await gateway.store.adefine_pool(pool)
        return await _pool_json(gateway, owner, name)

    @app.patch(
        f"{PREFIX}/pools/{{tenant}}/{{name}}",
        tags=["admin"],
        response_model=s.PoolOut,
        responses=errors(401, 403, 404, 422, 503),
    )
    async def change_pool(
        tenant: str, name: str, body: s.PoolPatch, caller: Tenant = caller_of
    ) -> Any:
        """Resize a pool (what is drawn stays drawn), change its reserves, drain or lift it."""
        owner = _owner(gateway, caller, tenant, "change pools")
        store_name = gateway.pool_name(owner, name)
        current = (await gateway.store.aget_pool(store_name, gateway.clock())).pool
        if body.capacity is not None or body.reserve is not None:
            pool = Pool(
                store_name,
                body.capacity if body.capacity is not None else current.capacity,
                current.window_seconds,
                _reserve(body.reserve) if body.reserve is not None else dict(current.reserve),
            )
            await gateway.store.adefine_pool(pool)
        if body.draining is not None:
            await gateway.drain(store_name, body.draining)
        return await _pool_json(gateway, owner, store_name)

    @app.post(
        f"{PREFIX}/pools/{{tenant}}/{{name}}/drain",
        tags=["admin"],
        response_model=s.PoolOut,
        responses=errors(401, 403, 404, 422, 503),
    )
    async def drain_pool(tenant: str, name: str, caller: Tenant = caller_of) -> Any:
        """Take no new request into the pool (open ones run on); `draining: false` lifts it."""
        owner = _owner(gateway, caller, tenant, "drain pools")
        store_name = gateway.pool_name(owner, name)
        await gateway.store.aget_pool(store_name, gateway.clock())  # an unknown pool: 404
        await gateway.drain(store_name)
        return await _pool_json(gateway, owner, store_name)

    @app.post(
        f"{PREFIX}/reload",
        tags=["admin"],
        response_model=s.ReloadOut,
        responses=errors(401, 403, 422),
    )
    async def reload(caller: Tenant = caller_of) -> Any:
        """Re-read the config file: tenants, keys, pipelines and upstreams change at once."""
        _admin(caller, "reload the config")
        config = gateway.reload()
        return {
            "file": config.file,
            "tenants": sorted(config.tenants),
            "pipelines": sorted(config.pipelines),
            "upstreams": [u.name for u in config.upstreams],
        }
