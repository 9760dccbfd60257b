"""The dashboard's report panel: ``apportion report`` over the gateway's telemetry database.

The panel reads the first SQL sink of the gateway's ``telemetry`` (SQLite or PostgreSQL)
for a window back from now (the last hour, day or week) and builds the budget-fit report
in the database's own SQL, as ``apportion report`` does
(:func:`apportion.analysis.window_report.report_database`: aggregates, not rows, are
read), over the calls of the tenant's requests only (their ids start with ``TENANT/``; an
admin: every tenant's, with the daily rollups where days were pruned), and offers the
recommended budgets file (:func:`apportion.analysis.profile.budgets_yaml`) for download.
Reading runs in a worker thread, so a slow database never stalls the live pages; a
database that cannot be read is reported on the panel (its password never shown) and the
rest of the dashboard goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from apportion.redaction import scrub
from apportion.serve.config import ServeConfig
from apportion.serve.gateway import Tenant

__all__ = ["WINDOWS", "ReportPanel", "build_panel", "telemetry_database"]

WINDOWS: Final = {"hour": 3600.0, "day": 86_400.0, "week": 604_800.0}
"""The windows the panel offers, in seconds back from now."""


@dataclass(frozen=True)
class ReportPanel:
    """What the report panel shows.

    Attributes:
        window: ``hour``, ``day`` or ``week``.
        database: the database read (password hidden), or ``None`` when none is set.
        document: the report (``build_report``'s document), or ``None`` on a problem.
        budgets: the recommended budgets file (YAML text), or ``None`` (no calls).
        problem: what went wrong, for the panel to say, or ``None``.
    """

    window: str
    database: str | None
    document: dict[str, Any] | None = None
    budgets: str | None = None
    problem: str | None = None


def telemetry_database(config: ServeConfig) -> str | None:
    """The first SQL database among the gateway's telemetry sinks, or ``None``."""
    from apportion.telemetry.urls import is_database_url

    for url in config.telemetry:
        if isinstance(url, str) and is_database_url(url):
            return url
    return None


def build_panel(config: ServeConfig, tenant: Tenant, window: str, now: float) -> ReportPanel:
    """The report of ``tenant``'s calls in the ``window`` before ``now`` (blocking I/O).

    Never raises for the database: whatever goes wrong reading it is the panel's
    ``problem``.
    """
    from apportion.telemetry.urls import redact

    url = telemetry_database(config)
    if url is None:
        return ReportPanel(
            window,
            None,
            problem="no telemetry database is configured: add one to the gateway's "
            "telemetry (for example telemetry: [sqlite:///apportion.db]) to see reports",
        )
    shown = redact(url)
    start = now - WINDOWS[window]
    try:
        from apportion.analysis.profile import budgets_yaml
        from apportion.analysis.report import fmt_time
        from apportion.analysis.window_report import report_database

        found = report_database(
            url,
            since=start,
            now=now,
            request_prefix=None if tenant.admin else tenant.prefix,
        )
        source = {"database": shown, "since": fmt_time(start), "window": window}
        text = budgets_yaml(found.budgets, source) if found.budgets else None
    except Exception as exc:  # any failure of the database is the panel's to say
        reason = scrub(f"{type(exc).__name__}: {exc}", url)
        return ReportPanel(
            window, shown, problem=f"the telemetry database cannot be read: {reason}"
        )
    return ReportPanel(window, shown, found.document, text)
