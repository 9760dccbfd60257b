"""ServeConfig: defaults, a full file, and errors that name the file, line and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from apportion.errors import ApportionError, SpecError
from apportion.serve.config import DEFAULT_PIPELINE, MissingKey, ServeConfig, hash_key
from conftest import KEYS, write_config

PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"


def test_default_is_the_memory_store_and_the_demo_pipeline() -> None:
    config = ServeConfig.default()
    assert config.store == "memory://" and not config.shared_store
    assert list(config.pipelines) == [DEFAULT_PIPELINE]
    entry = config.pipelines[DEFAULT_PIPELINE]
    assert "reasoner" in entry.pipeline.names and entry.ceiling == 20_000
    assert config.open_mode and config.unbudgeted == "reject"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.store = "redis://x"  # type: ignore[misc]


def test_a_full_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-provider-secret")
    monkeypatch.setenv("GLOBEX_KEYS", "k-one-1234, k-two-5678")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE.read_text())
    path = tmp_path / "serve.yaml"
    path.write_text(
        "store: redis://:hunter2@127.0.0.1:6399/0\n"
        "request_ttl: 120\n"
        "budget_token_ttl: 30\n"
        "unbudgeted: pass\n"
        "telemetry: sqlite:///x.db\n"
        "pipelines:\n"
        "  support: {path: pipeline.yaml, policy: uniform, ceiling: 9000}\n"
        "tenants:\n"
        "  acme: {keys: [sk-acme-1234567]}\n"
        "  globex: {keys_env: GLOBEX_KEYS, admin: true}\n"
        "upstreams:\n"
        "  openai: {prefix: gpt-, api_base: 'http://127.0.0.1:9/v1', api_key_env: UPSTREAM_KEY}\n"
        "  mine: {prefix: '', pass_through_key: true, direct: true}\n"
    )
    config = ServeConfig.from_yaml(path)
    assert config.pipelines["support"].ceiling == 9000
    assert config.pipelines["support"].policy == "uniform"
    assert config.telemetry == ("sqlite:///x.db",) and config.unbudgeted == "pass"
    assert config.tenants["globex"].admin and not config.tenants["acme"].admin
    assert config.tenants["globex"].key_hashes == {hash_key("k-one-1234"), hash_key("k-two-5678")}
    assert config.upstreams[0].api_key == "sk-provider-secret"
    assert config.upstreams[1].pass_through_key and config.upstreams[1].direct
    assert not config.upstreams[0].direct and config.budget_token_ttl == 30
    assert config.upstream_for("gpt-4o") is config.upstreams[0]
    assert config.upstream_for("claude-3") is config.upstreams[1]
    assert ServeConfig.default().upstream_for("gpt-4o") is None
    shown = repr(config)
    for secret in ("sk-provider-secret", "hunter2", "sk-acme-1234567", "k-one-1234"):
        assert secret not in shown
    assert "hunter2" not in config.store_shown


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("store: memory://\nbogus: 1\n", 2, "bogus"),
        ("store: 42\n", 1, "store"),
        ("request_ttl: -1\n", 1, "request_ttl"),
        ("unbudgeted: maybe\n", 1, "unbudgeted"),
        ("tenants:\n  acme: {keys: []}\n", 2, "tenants.acme"),
        ("tenants:\n  'bad name': {keys: [k]}\n", 2, "tenants.bad name"),
        ("tenants:\n  a: {keys: [same-key]}\n  b: {keys: [same-key]}\n", 3, "tenants.b"),
        ("pipelines:\n  p: {path: nowhere.yaml}\n", None, None),
        ("pipelines:\n  p: {policy: elastic}\n", 2, "pipelines.p"),
        ("pipelines:\n  p:\n    workload: x.yaml\n    ceiling: 0\n", None, None),
        ("upstreams:\n  u: {api_base: 'ftp://x'}\n", 2, "upstreams.u.api_base"),
        ("upstreams:\n  u: {api_key: k, pass_through_key: true}\n", 2, "upstreams.u"),
        ("signing_key: short\n", 1, "signing_key"),
        ("budget_token_ttl: 0\n", 1, "budget_token_ttl"),
        ("upstreams:\n  u: {api_key: k, direct: yes-please}\n", 2, "upstreams.u.direct"),
        ("metrics: sometimes\n", 1, "metrics"),
        ("metrics_key: same-key\n", 1, "metrics_key"),
        ("config_poll_seconds: -1\n", 1, "config_poll_seconds"),
    ],
)
def test_bad_files_name_the_line_and_key(
    tmp_path: Path, text: str, line: int | None, key: str | None
) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        ServeConfig.from_yaml(path)
    if line is not None:
        assert caught.value.line == line, caught.value
    if key is not None:
        assert caught.value.key is not None and caught.value.key.startswith(key), caught.value
    assert "same-key" not in str(caught.value)


def test_a_missing_variable_is_named_not_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_VARIABLE_X", raising=False)
    path = tmp_path / "serve.yaml"
    path.write_text("tenants:\n  acme:\n    keys_env: NO_SUCH_VARIABLE_X\n")
    with pytest.raises(MissingKey) as caught:
        ServeConfig.from_yaml(path)
    assert caught.value.variable == "NO_SUCH_VARIABLE_X" and caught.value.line == 3
    assert isinstance(caught.value, ApportionError)


def test_the_test_config_holds_hashes_only(tmp_path: Path) -> None:
    config = ServeConfig.from_yaml(write_config(tmp_path))
    for name, key in KEYS.items():
        assert config.tenants[name].key_hashes == {hash_key(key)}
        assert key not in repr(config)
