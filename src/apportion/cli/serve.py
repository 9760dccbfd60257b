"""``apportion serve``: run the budget gateway (uvicorn) for a ``serve.yaml``.

Registered on the ``apportion`` command by :func:`register` (see :mod:`apportion.cli`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

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
    log_level: Annotated[
        str, typer.Option(help="Log level: debug, info, warning, error, critical.")
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option(help="json: one JSON object per line (the default); text: uvicorn's own."),
    ] = "json",
    shutdown_timeout: Annotated[
        int,
        typer.Option(
            help="Seconds a stop (SIGTERM) waits for calls in flight; those still running "
            "then are cancelled, which releases their grants."
        ),
    ] = 30,
) -> None:
    """Run the budget gateway: the budget API (and /docs) and the live dashboard (/) over HTTP.

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
        if log_level.lower() not in _LEVELS:
            raise InvalidArgument("--log-level", log_level, "one of " + ", ".join(_LEVELS))
        if log_format not in ("json", "text"):
            raise InvalidArgument("--log-format", log_format, "json or text")
        if not 0 <= shutdown_timeout <= 3600:
            raise InvalidArgument("--shutdown-timeout", shutdown_timeout, "0 to 3600 seconds")
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
    level = log_level.lower()
    logging_options: dict[str, Any] = {}
    if log_format == "json":
        from apportion.serve.ops import log_config

        logging_options = {"log_config": log_config(level), "access_log": False}
    multiproc = _metrics_dir(workers)
    where = "config " + str(config) if config is not None else "no config: memory store"
    pipelines = ", ".join(loaded.pipelines)
    said = (
        f"apportion gateway on http://{host}:{port} ({where}; store {loaded.store_shown}; "
        f"pipelines: {pipelines}; {workers} worker(s)); dashboard at /, API docs at /docs"
    )
    warning = None
    if loaded.open_mode and not _loopback(host):
        warning = (
            f"no tenants are configured, so anyone who can reach {host} may use "
            "the gateway without a key; list tenants and their keys in the config"
        )
    if log_format == "json":
        import logging
        import logging.config

        logging.config.dictConfig(logging_options["log_config"])
        log = logging.getLogger("apportion.serve")
        log.info(said, extra={"fields": {"host": host, "port": port, "workers": workers}})
        if warning is not None:
            log.warning(warning)
    else:
        console.print(said, highlight=False, soft_wrap=True)
        if warning is not None:
            console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    try:
        uvicorn.run(
            "apportion.serve.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=level,
            timeout_graceful_shutdown=shutdown_timeout,
            **logging_options,
        )
    finally:
        if multiproc is not None:
            shutil.rmtree(multiproc, ignore_errors=True)


_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _metrics_dir(workers: int) -> str | None:
    """With several workers, a fresh ``PROMETHEUS_MULTIPROC_DIR`` so /metrics sums them.

    Returns the folder made (removed when the server stops), or ``None`` (one worker,
    prometheus_client missing, or the variable already set by the operator).
    """
    from apportion.serve.ops import MULTIPROC_ENV, prometheus_available

    if workers < 2 or os.environ.get(MULTIPROC_ENV) or not prometheus_available():
        return None
    folder = tempfile.mkdtemp(prefix="apportion-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""
    app.command()(serve)
