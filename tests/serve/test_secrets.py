"""No key, provider secret or database password in any answer, page or log line.

A real ``apportion serve`` (a subprocess: its whole output is read) with every kind of
secret in its config (tenants' keys, a provider key, a database password in the store URL,
the signing key) is driven into errors: an unreachable store, unknown keys, failed
authentication past its limit, an unreachable provider (with the gateway's key and with a
caller's passed-through key), a bad config reloaded. Every answer, the pages and the
server's log are scanned for every secret.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from conftest import KEYS, auth, free_port, output, start_cli, stop, wait_ready, write_config

PROVIDER_KEY = "sk-provider-SECRET-7f3a19"
DB_PASSWORD = "dbpass-SECRET-91c2"
SIGNING_KEY = "a-test-signing-key-of-some-length"
CALLER_KEY = "sk-caller-SECRET-55e0"
GUESSED_KEY = "sk-guess-SECRET-0d41"


def test_secrets_never_reach_an_answer_a_page_or_the_log(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: the store and the providers are down
    store = f"redis://:{DB_PASSWORD}@127.0.0.1:{dead}/0"
    base = f"http://127.0.0.1:{dead}/v1"
    extra = (
        "unbudgeted: pass\n"
        "auth_failure_limit: 3\n"
        "upstreams:\n"
        f"  held: {{prefix: gpt-, model: openai/gpt-x, api_base: {base},"
        f" api_key: {PROVIDER_KEY}}}\n"
        f"  passed: {{prefix: pt-, api_base: {base}, pass_through_key: true, direct: true}}\n"
    )
    path = write_config(tmp_path, store=store, extra=extra)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_cli("--config", str(path), port=port)
    answers: list[httpx.Response] = []
    try:
        wait_ready(url, process)
        with httpx.Client(base_url=url, timeout=120) as client:
            answers.append(client.post("/v1/budget/requests", json={}, headers=auth("acme")))
            answers.append(client.get("/readyz"))
            chat = {"messages": [{"role": "user", "content": "hi"}]}
            answers.append(
                client.post(
                    "/v1/chat/completions", json={"model": "gpt-x", **chat}, headers=auth("acme")
                )
            )
            answers.append(
                client.post(
                    "/v1/chat/completions",
                    json={"model": "pt-x", **chat},
                    headers={**auth("acme"), "Apportion-Upstream-Key": CALLER_KEY},
                )
            )
            answers.append(client.get("/openapi.json"))
            answers.append(client.get("/docs"))
            good = path.read_text()
            path.write_text(good.replace("admin: true", "admin: true, keys_env: NOT_SET_VAR"))
            answers.append(client.post("/v1/admin/reload", headers=auth("ops")))
            path.write_text(good + f"  broken: {{keys: {GUESSED_KEY}}}\n")
            answers.append(client.post("/v1/admin/reload", headers=auth("ops")))
            for _ in range(4):
                bad = {"Authorization": f"Bearer {GUESSED_KEY}"}
                answers.append(client.get("/v1/budget/requests/x", headers=bad))
                answers.append(client.post("/v1/chat/completions", json=chat, headers=bad))
    finally:
        stop(process)
    log = output(process)
    statuses = [a.status_code for a in answers]
    assert statuses[:4] == [503, 503, statuses[2], statuses[3]] and statuses[2] >= 500
    assert statuses[3] >= 500 and statuses[6] == 422 and statuses[7] == 422
    assert statuses[-2:] == [429, 429]
    secrets = [*KEYS.values(), PROVIDER_KEY, DB_PASSWORD, SIGNING_KEY, CALLER_KEY, GUESSED_KEY]
    for answer in answers:
        text = answer.text + "".join(f"{k}: {v}\n" for k, v in answer.headers.items())
        for secret in secrets:
            assert secret not in text, (answer.request.url, secret, text[:500])
    assert log.strip()  # the server did log (access lines, warnings)
    for secret in secrets:
        assert secret not in log, (secret, log[-2000:])
