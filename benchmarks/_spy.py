"""Where a proxied call's time goes: the gateway in this process under cProfile, loaded.

The fake upstream (:mod:`apportion.testing.fast_upstream`) runs in a process of its own and
the clients in others (``benchmarks/gateway.py``'s raw HTTP client); the gateway's app
(memory or Redis store, one process, the direct or the LiteLLM sender) is served by uvicorn in
this process's main thread under :mod:`cProfile`. Prints the calls made, the CPU seconds
per call, and the top functions by own time, by cumulative time, and apportion's own by
cumulative time. (cProfile counts each resumption of a coroutine as a call: an ``ncalls``
of ``async def`` functions is a multiple of the calls made.)

    python benchmarks/gateway_profile.py [--sender direct|litellm] [--store memory|redis]
        [--clients 16] [--calls 100] [--top 30]

The profile counts this process's CPU time (``time.process_time``), so a busy machine
does not inflate it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from gateway import Driver, free_port, gateway_config, redis_server, upstream

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sender", choices=["direct", "litellm"], default="direct")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=100, help="calls per client")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    args = parser.parse_args()
    import uvicorn

    from apportion.serve import ServeConfig, create_app

    options = argparse.Namespace(per_request=20, ceiling=1_000_000, max_seconds=120.0)
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="apportion-profile-"))
        up, _ = stack.enter_context(upstream(Path(tmp)))
        store = "memory://"
        if args.store == "redis":
            store = stack.enter_context(redis_server(Path(tmp))) + "?prefix=profile"
        name = f"{args.store}-1w-{args.sender}"
        app = create_app(ServeConfig.from_yaml(gateway_config(Path(tmp), name, store, up)))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        driver = Driver(2, options)
        outcome: dict[str, object] = {}

        def load() -> None:
            while not server.started:
                time.sleep(0.05)
            driver.phase(port, "warm", clients=2, calls=10, budgeted=True, processes=1)
            began = time.process_time()
            outcome["phase"] = driver.phase(
                port, "prof", clients=args.clients, calls=args.calls, budgeted=True, processes=2
            )
            outcome["cpu"] = time.process_time() - began
            server.should_exit = True

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        pass
        server.run()
        thread.join()
        driver.close()
    phase = outcome["phase"]
    assert isinstance(phase, dict)
    cpu = outcome["cpu"]
    assert isinstance(cpu, float)
    print(
        f"{phase['calls']} calls, {phase['calls_per_s']:.0f}/s under the profiler, "
        f"{1000 * cpu / max(1, phase['calls']):.2f} ms of this process's CPU a call "
        f"(profiler included), statuses {phase['statuses']}"
    )
    return
    sys.stdout.flush()


if __name__ == "__main__":
    main()
