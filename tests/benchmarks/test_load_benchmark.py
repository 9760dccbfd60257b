"""``benchmarks/load.py``: many processes on one store, and a standalone server beside a cluster."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from script_run import run_script

from apportion.stores.redis import RedisStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stores"))
from redis_server import RedisServer


def _require_redis() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if os.environ.get("CI"):
            pytest.fail("the load benchmark needs redis-server and redis-cli")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def test_the_load_benchmark_compares_a_standalone_server_with_a_cluster() -> None:
    _require_redis()
    out = run_script(
        "load.py", "--cluster", "--cluster-processes", "2,3", "--requests", "6", "--calls", "2"
    )
    result = json.loads(out)
    runs = result["runs"]
    assert [(r["topology"], r["processes"]) for r in runs] == [
        ("standalone", 2),
        ("cluster", 2),
        ("standalone", 3),
        ("cluster", 3),
    ]
    for r in runs:
        assert r["overspend"] == r["tokens_lost"] == r["accounting_errors"] == 0
        assert r["pairs_per_s"] > 0 and r["begin_p50_us"] <= r["begin_p99_us"]
        assert r["durability"] == "off"  # the servers it starts write no AOF
    pace = {(r["topology"], r["processes"]): r["pairs_per_s"] for r in runs}
    assert result["cluster_vs_standalone"] == {
        str(n): round(pace["cluster", n] / pace["standalone", n], 2) for n in (2, 3)
    }


def test_the_load_benchmark_measures_server_time_and_its_ceiling() -> None:
    _require_redis()
    out = run_script(
        "load.py", "--processes", "2", "--requests", "5", "--calls", "2", "--window-seconds", "0"
    )
    result = json.loads(out)
    assert result["overspend"] == result["tokens_lost"] == result["accounting_errors"] == 0
    assert result["server_us_per_script"] > 0 and result["trivial_ops_per_s"] > 0
    ratio = result["ops_per_s"] / result["trivial_ops_per_s"]  # both rounded to whole ops
    assert result["ratio_to_trivial"] > 0 and abs(result["ratio_to_trivial"] - ratio) < 0.01


def test_the_load_benchmark_gives_every_call_an_operation_id_when_asked() -> None:
    _require_redis()
    server = RedisServer(fsync="no")
    server.start()
    try:
        out = run_script(
            "load.py", "--store", server.url, "--processes", "2", "--requests", "3",
            "--calls", "2", "--window-seconds", "0", "--no-ceiling", "--op-ids",
        )  # fmt: skip
        result = json.loads(out)
        assert result["op_ids"] is True
        assert result["overspend"] == result["tokens_lost"] == result["accounting_errors"] == 0
        client = RedisStore(server.url)._client
        records = sorted(k.decode() for k in client.scan_iter("*:o:p*"))
        assert len(records) == 2 * 3  # one operation record per request of the run
        fields = {f.decode() for f in client.hkeys(records[0])}
        assert {"", "b0", "f0", "b1", "f1", "close"} <= {f.split(":")[-1] for f in fields}
    finally:
        server.cleanup()


def test_the_load_benchmark_refuses_a_store_with_cluster() -> None:
    with pytest.raises(AssertionError, match="leave --store out"):
        run_script("load.py", "--cluster", "--store", "redis://127.0.0.1:1/0")
