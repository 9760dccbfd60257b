"""A client process of ``test_replicas_processes``: proxied calls with the official OpenAI client.

Kept apart from the test module (light imports) so ``multiprocessing``'s spawned children
import only this.
"""

from __future__ import annotations

from typing import Any

import openai

AGENTS = ("intake", "retriever", "reasoner", "critic", "formatter")


def make_calls(spec: dict[str, Any], barrier: Any, results: Any) -> None:
    """Make ``spec["calls"]`` calls, spread over the shared requests and the gateways' URLs.

    Waits at ``barrier`` first (every process starts together). Each call's first word is
    its request's id (the fake upstream bills per first word). Puts ``(index, calls)`` in
    ``results``: per call, ``(request id, HTTP status, Apportion-Used, error code)`` (0 and
    the gateway's code when refused).
    """
    index: int = spec["index"]
    urls: list[str] = spec["urls"]
    requests: list[str] = spec["requests"]
    clients = [
        openai.OpenAI(base_url=f"{url}/v1", api_key=spec["key"], max_retries=0, timeout=120)
        for url in urls
    ]
    barrier.wait(120)
    out: list[tuple[str, int, int, str]] = []
    for n in range(spec["calls"]):
        rid = requests[(index + n) % len(requests)]
        agent = AGENTS[(index + n) % len(AGENTS)]
        client = clients[(index + n // len(requests)) % len(clients)]  # every request: each URL
        headers = {
            "Apportion-Request": rid,
            "Apportion-Ceiling": str(spec["ceiling"]),
            "Apportion-Agent": agent,
        }
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"{rid} {spec['prompt']}"}],
                extra_headers=headers,
            )
        except openai.APIStatusError as error:
            out.append((rid, error.status_code, 0, str(error.code)))
            continue
        out.append((rid, raw.status_code, int(raw.headers["Apportion-Used"]), ""))
    results.put((index, out))
