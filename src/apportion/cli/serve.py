"""``apportion serve``: run the budget gateway (uvicorn) for a ``serve.yaml``.

Registered on the ``apportion`` command by :func:`register` (see :mod:`apportion.cli`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from apportion.cli.console import console, fail
from apportion.errors import ApportionError, InvalidArgument


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="The gateway's serve.yaml (default: memory store, demo pipeline).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8080,
    workers: Annotated[
        int, typer.Option(help="Worker processes (more than 1 needs a shared store: Redis).")
    ] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Run the budget gateway: the budget API (and /docs) over HTTP for any language.

    With no --config: the memory store and the seed scenario's pipeline (the one
    `apportion demo` plays), no keys (tenant `default`): try
    `curl -X POST localhost:8080/v1/budget/requests -d '{"ceiling": 20000}'`.
    """
    from apportion.serve.app import CONFIG_ENV, SIGNING_ENV
    from apportion.serve.config import ServeConfig
    from apportion.serve.deps import require_serve

    try:
        require_serve()
        if not 0 <= port <= 65535:
            raise InvalidArgument("--port", port, "a port number, 0 to 65535")
        if not 1 <= workers <= 256:
            raise InvalidArgument("--workers", workers, "1 to 256 worker processes")
        loaded = ServeConfig.from_yaml(config) if config is not None else ServeConfig.default()
        if workers > 1 and not loaded.shared_store:
            raise InvalidArgument(
                "--workers",
                workers,
                "the memory store lives in one process, so workers would not share budgets; "
                "use one worker, or a shared store (store: redis://... in the config)",
            )
    except ApportionError as exc:
        raise fail(exc) from exc
    import uvicorn

    os.environ[CONFIG_ENV] = str(config.resolve()) if config is not None else ""
    if workers > 1 and loaded.signing_key_random:
        os.environ.setdefault(SIGNING_ENV, secrets.token_urlsafe(32))  # one key for all
    where = "config " + str(config) if config is not None else "no config: memory store"
    pipelines = ", ".join(loaded.pipelines)
    console.print(
        f"apportion gateway on http://{host}:{port} ({where}; store {loaded.store_shown}; "
        f"pipelines: {pipelines}; {workers} worker(s)); API docs at /docs",
        highlight=False,
        soft_wrap=True,
    )
    if loaded.open_mode and not _loopback(host):
        console.print(
            f"warning: no tenants are configured, so anyone who can reach {host} may use "
            "the gateway without a key; list tenants and their keys in the config",
            highlight=False,
            soft_wrap=True,
        )
    uvicorn.run(
        "apportion.serve.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command()(serve)
