"""How to take percentiles in the database: the measurement behind the report's choice.

On a database ``benchmarks/report.py`` wrote (``--db`` or ``--url``), P50/P90/P99 of
``used_input`` per agent over the finished calls, each way timed (best of two):

- ``group_by_value_counts``: ``GROUP BY agent, used_input`` with ``count(*)``, the
  percentile interpolated from the counts in Python (what the report does: exact, and the
  counts merge with the daily rollups' histograms);
- ``window_functions``: ``row_number()`` and ``count(*)`` over ``PARTITION BY agent``,
  keeping the rows at the interpolation ranks;
- ``percentile_cont`` (PostgreSQL): ``percentile_cont(ARRAY[...]) WITHIN GROUP``;
- ``duckdb``: DuckDB reading the SQLite file needs its ``sqlite`` extension, which DuckDB
  downloads on first use; where that fails (no network) the line says why.

Prints one JSON line.

    python benchmarks/report_methods.py URL
"""

from __future__ import annotations

import argparse
import json
import os
import time

from sqlalchemy import create_engine, text

FINISHED = "settled = 'finish' AND used_input IS NOT NULL AND used_output IS NOT NULL"
RANKS = ", ".join(
    f"{low}, {low} + 1"
    for low in (f"CAST(floor((n - 1) * {q}) AS INTEGER)" for q in (0.5, 0.9, 0.99))
)
QUERIES = {
    "group_by_value_counts": (
        f"SELECT agent, used_input, count(*) FROM apportion_calls WHERE {FINISHED} "
        "GROUP BY agent, used_input"
    ),
    "window_functions": (
        "SELECT agent, rn, used_input FROM (SELECT agent, used_input, row_number() OVER "
        "(PARTITION BY agent ORDER BY used_input) - 1 AS rn, count(*) OVER (PARTITION BY "
        f"agent) AS n FROM apportion_calls WHERE {FINISHED}) w WHERE rn IN ({RANKS})"
    ),
}
PERCENTILE_CONT = (
    "SELECT agent, percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY used_input) "
    f"FROM apportion_calls WHERE {FINISHED} GROUP BY agent"
)


def _duckdb(path: str) -> dict[str, object]:
    try:
        import duckdb
    except ImportError:
        return {"error": "duckdb is not installed"}
    conn = duckdb.connect()
    try:
        conn.execute("INSTALL sqlite")
        conn.execute("LOAD sqlite")
    except Exception as exc:
        return {"error": str(exc).splitlines()[0][:200]}
    start = time.perf_counter()
    conn.execute(
        f"SELECT agent, quantile_cont(used_input, [0.5, 0.9, 0.99]) FROM sqlite_scan('{path}', "
        f"'apportion_calls') WHERE {FINISHED} GROUP BY agent"
    ).fetchall()
    return {"seconds": round(time.perf_counter() - start, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the database benchmarks/report.py wrote (a SQLAlchemy URL)")
    url = parser.parse_args().url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    queries = dict(QUERIES)
    if url.startswith("postgresql"):
        queries["percentile_cont"] = PERCENTILE_CONT
    out: dict[str, object] = {"database": "postgresql" if "postgresql" in url else "sqlite"}
    engine = create_engine(url)
    with engine.connect() as conn:
        for name, query in queries.items():
            best = None
            for _ in range(2):
                start = time.perf_counter()
                rows = conn.execute(text(query)).all()
                seconds = time.perf_counter() - start
                best = seconds if best is None else min(best, seconds)
            out[name] = {"seconds": round(best or 0.0, 3), "rows": len(rows)}
        calls = conn.execute(text("SELECT count(*) FROM apportion_calls")).scalar()
    if url.startswith("sqlite:///"):
        out["duckdb"] = _duckdb(url[len("sqlite:///") :])
    out["calls"] = calls
    out["load_average"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
