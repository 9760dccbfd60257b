"""The live budget dashboard of ``apportion serve``: requests, agents and pools as they run.

Served by the gateway at ``/`` (see ``docs/dashboard.md``), and mountable into any ASGI
app with :func:`create_dashboard`. Pages are rendered on the server from the store (the
open-request index and each request's ledger and events); a little plain JavaScript
(``assets/dashboard.js``, served by the package: no build step, nothing fetched from
elsewhere) keeps them live over Server-Sent Events read from the store's event feed, so
every replica on one Redis store shows every replica's changes. A browser signs in once
with a gateway key and keeps a signed, ``HttpOnly``, ``SameSite=Strict`` session cookie
(:mod:`apportion.serve.dashboard.session`); each tenant sees only its own requests, an
admin key every tenant's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apportion.serve.deps import require_serve

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from apportion.serve.gateway import Gateway

__all__ = ["create_dashboard"]


def create_dashboard(gateway: Gateway) -> Starlette:
    """The dashboard over ``gateway`` as an ASGI app of its own (mount it anywhere).

    Mounted under a path (``app.mount("/budgets", create_dashboard(gateway))``), its links
    and cookie follow the mount's ``root_path``.

    Raises:
        MissingExtra: Starlette is not installed (``pip install "apportion[serve]"``).
    """
    require_serve()
    from starlette.applications import Starlette

    from apportion.serve.dashboard.routes import dashboard_routes

    return Starlette(routes=dashboard_routes(gateway))
