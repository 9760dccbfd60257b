"""The gateway's configuration: :class:`ServeConfig`, frozen and validated, read from YAML.

A ``serve.yaml`` looks like this (every key optional; relative paths are read from the
config file's folder)::

    store: redis://127.0.0.1:6379/0     # default memory:// (one process only)
    request_ttl: 3600                   # seconds an open request may live (then it expires)
    lease_seconds: 600                  # seconds a grant may stay unsettled
    unbudgeted: reject                  # proxy calls without Apportion-* headers: reject|pass
    max_body_bytes: 10485760            # largest request body (10 MiB)
    signing_key_env: APPORTION_SIGNING_KEY   # or signing_key: "..." (tokens', handles' HMAC)
    budget_token_ttl: 600               # seconds a signed budget token stays redeemable
    auth_failure_limit: 10              # failed authentications per client address ...
    auth_failure_window: 60             # ... within this many seconds, then 429
    telemetry: [sqlite:///apportion.db] # sinks, as for `apportion` (a URL or a list)
    metrics: admin                      # /metrics: admin (an admin key, or metrics_key) or
                                        # public (no key); default admin with tenants
    metrics_key_env: METRICS_KEY        # or metrics_key: "..." (a scraper's own key)
    config_poll_seconds: 2              # each worker re-reads a changed config file so often
    models: models.yaml                 # a model catalog (prices, limits, capability): a
                                        # routing policy routes the proxy's calls over it
    pipelines:
      support:
        path: pipeline.yaml             # a pipeline file (or workload: a workload file)
        policy: elastic                 # or {name: routed, cost_weight: 1.0}: with options
        ceiling: 20000                  # a request's ceiling when the call names none
    tenants:
      acme:
        keys: [sk-acme-1]               # or keys_env: NAME, or key_sha256: [hex digest]
      ops:
        keys_env: OPS_KEYS              # comma-separated keys in that variable
        admin: true
    upstreams:
      openai:
        prefix: gpt-                    # requests for models starting so go here
        model: openai/gpt-4o-mini       # the LiteLLM model (default: the one asked for)
        api_base: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY     # or api_key: ..., or pass_through_key: true
        direct: false                   # true: raw JSON to an OpenAI-protocol server, no LiteLLM

Keys are kept only as SHA-256 digests; no key, provider secret or signing key appears in a
``repr``, a message or a log line. Without ``tenants`` the gateway is open: every call is
tenant ``default`` (fit for a laptop, never for a shared host). :meth:`ServeConfig.default`
is what ``apportion serve`` runs with no config: the memory store and the shipped seed
scenario's pipeline (the one ``apportion demo`` plays).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from apportion.catalog import Catalog
from apportion.errors import ApportionError, SpecError
from apportion.ledger import MAX_TOKENS
from apportion.limits import excerpt
from apportion.policies.base import Policy
from apportion.redaction import redact
from apportion.spec import Pipeline
from apportion.yamlfile import YamlList, YamlMap, load_yaml

__all__ = [
    "DEFAULT_PIPELINE",
    "NAME_PATTERN",
    "PipelineConfig",
    "ServeConfig",
    "TenantConfig",
    "UpstreamConfig",
    "hash_key",
]

NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What a pipeline, tenant or upstream name may be (it becomes part of request ids)."""

DEFAULT_PIPELINE: Final = "seed-scenario"
"""The pipeline of :meth:`ServeConfig.default`: the seed scenario's (``apportion demo``)."""

OPEN_TENANT: Final = "default"
"""The tenant every call is when the configuration lists no tenants."""

_TOP_KEYS: Final = frozenset(
    {
        "store",
        "request_ttl",
        "lease_seconds",
        "unbudgeted",
        "max_body_bytes",
        "signing_key",
        "signing_key_env",
        "budget_token_ttl",
        "auth_failure_limit",
        "auth_failure_window",
        "telemetry",
        "metrics",
        "metrics_key",
        "metrics_key_env",
        "config_poll_seconds",
        "pipelines",
        "tenants",
        "upstreams",
        "models",
    }
)
_PIPELINE_KEYS: Final = frozenset({"path", "workload", "policy", "ceiling", "ceiling_usd"})
_TENANT_KEYS: Final = frozenset({"keys", "keys_env", "key_sha256", "admin"})
_UPSTREAM_KEYS: Final = frozenset(
    {"prefix", "model", "api_base", "api_key", "api_key_env", "pass_through_key", "direct"}
)


def ranked(pipeline: Pipeline) -> frozenset[str]:
    """The agent names a request of ``pipeline`` has in its ledger (its ``ranks``)."""
    return frozenset(agent.name for agent in pipeline.agents)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a tenant's API key is kept as."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline the gateway serves.

    Attributes:
        name: its name in the API (``"pipeline": NAME``).
        pipeline: the loaded pipeline.
        source: the file it was read from (a pipeline or a workload file).
        policy: the policy's registered name (``elastic`` ...), or a policy object (a
            config built in code).
        ceiling: a request's token ceiling when the call names none.
        ceiling_usd: a request's cost ceiling when the call names none (``None``: none).
        policy_options: the policy's options (``policy: {name: routed, cost_weight: 1}``).
    """

    name: str
    pipeline: Pipeline
    source: str
    policy: str | Policy = "elastic"
    ceiling: int = 20_000
    ceiling_usd: float | None = None
    policy_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TenantConfig:
    """A tenant: its name, the digests of its keys, whether its keys are admin keys."""

    name: str
    key_hashes: frozenset[str] = field(repr=False)
    admin: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    """Where the proxy sends a model's calls (through LiteLLM).

    Attributes:
        name: the upstream's name.
        prefix: requests whose model starts with this go here (``""``: every model).
        model: the LiteLLM model to call (``None``: the model the client asked for).
        api_base: the provider's base URL (``None``: LiteLLM's default for the model).
        api_key: the provider key held by the gateway (never shown), or ``None``.
        pass_through_key: forward the caller's own provider key instead.
        direct: send the call's JSON straight to the upstream instead of through LiteLLM
            (an upstream speaking OpenAI's protocol; a fraction of the CPU per call).
    """

    name: str
    prefix: str = ""
    model: str | None = None
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    pass_through_key: bool = False
    direct: bool = False


@dataclass(frozen=True)
class ServeConfig:
    """What one gateway serves, and how (see the module docstring for the YAML).

    Attributes:
        pipelines: name -> :class:`PipelineConfig` (at least one).
        store: the store URL (``memory://``, ``redis://...``); shown redacted.
        telemetry: sink URLs for closed requests (as ``Controller(telemetry=...)``).
        tenants: name -> :class:`TenantConfig`; empty: open mode, tenant ``default``.
        upstreams: the proxy's providers, tried in order (first matching prefix).
        unbudgeted: what the proxy does with a call without budget headers.
        request_ttl: seconds an open request may live before it expires.
        lease_seconds: seconds a grant may stay unsettled before its tokens return.
        max_body_bytes: largest request body accepted.
        signing_key: the HMAC key of signed budget tokens (never shown).
        signing_key_random: the key was made up at start (set one for several replicas).
        budget_token_ttl: seconds a signed budget token stays redeemable.
        auth_failure_limit: failed authentications per client address within
            ``auth_failure_window`` seconds before its calls are refused (429).
        auth_failure_window: seconds.
        metrics: who may read ``/metrics``: ``"public"`` (anyone), ``"admin"`` (an admin
            key, or the ``metrics_key``), or ``None``: ``admin`` when tenants are
            configured, ``public`` in open mode (see :attr:`metrics_access`).
        metrics_key_hash: the SHA-256 digest of a key that may read ``/metrics`` only (a
            Prometheus scraper's), or ``None``.
        config_poll_seconds: how often each worker checks whether the config file changed
            (then it reloads it); ``0``: never (an admin's reload only).
        models: the model catalog the controllers price and route on (``models:``, a
            catalog YAML file), or ``None`` (LiteLLM's bundled prices; nothing to route).
        file: the config file, or ``None``.
    """

    pipelines: Mapping[str, PipelineConfig]
    store: str = field(default="memory://", repr=False)
    telemetry: tuple[str, ...] = field(default=(), repr=False)
    tenants: Mapping[str, TenantConfig] = field(default_factory=lambda: MappingProxyType({}))
    upstreams: tuple[UpstreamConfig, ...] = ()
    unbudgeted: Literal["reject", "pass"] = "reject"
    request_ttl: float = 3600.0
    lease_seconds: float = 600.0
    max_body_bytes: int = 10 * 1024 * 1024
    signing_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    signing_key_random: bool = True
    budget_token_ttl: float = 600.0
    auth_failure_limit: int = 10
    auth_failure_window: float = 60.0
    metrics: Literal["public", "admin"] | None = None
    metrics_key_hash: str | None = field(default=None, repr=False)
    config_poll_seconds: float = 2.0
    models: Catalog | None = field(default=None, repr=False)
    file: str | None = None

    def __post_init__(self) -> None:
        if not self.pipelines:
            raise SpecError("a gateway serves at least one pipeline", file=self.file)
        if self.unbudgeted not in ("reject", "pass"):
            raise SpecError(
                f"unbudgeted={excerpt(self.unbudgeted)}: reject or pass",
                file=self.file,
                key="unbudgeted",
            )
        if self.metrics not in (None, "public", "admin"):
            raise SpecError(
                f"metrics={excerpt(self.metrics)}: public or admin", file=self.file, key="metrics"
            )
        if self.metrics == "admin" and self.open_mode and self.metrics_key_hash is None:
            raise SpecError(
                "metrics: admin needs a key to read them, and without tenants there is no "
                "admin key: give metrics_key (or metrics_key_env), or tenants",
                file=self.file,
                key="metrics",
            )
        object.__setattr__(self, "pipelines", MappingProxyType(dict(self.pipelines)))
        object.__setattr__(self, "tenants", MappingProxyType(dict(self.tenants)))

    @property
    def store_shown(self) -> str:
        """The store URL with its password hidden (what messages and logs show)."""
        return redact(self.store)

    @property
    def shared_store(self) -> bool:
        """Whether the store is shared between processes (every scheme but ``memory``)."""
        return not self.store.startswith("memory:")

    def upstream_for(self, model: str) -> UpstreamConfig | None:
        """The first upstream whose ``prefix`` starts ``model`` (``None``: none does)."""
        for upstream in self.upstreams:
            if model.startswith(upstream.prefix):
                return upstream
        return None

    @property
    def metrics_access(self) -> Literal["public", "admin"]:
        """Who may read ``/metrics``: ``public`` (no key) or ``admin`` (an admin or metrics key).

        By default ``admin`` with tenants, ``public`` in open mode.
        """
        if self.metrics is not None:
            return self.metrics
        return "public" if self.open_mode else "admin"

    @property
    def open_mode(self) -> bool:
        """Whether no tenants are configured: every call is tenant ``default``, keyless."""
        return not self.tenants

    @classmethod
    def default(cls) -> ServeConfig:
        """The memory store and the shipped seed scenario's pipeline, open mode."""
        from apportion.demo import demo_workload
        from apportion.sim.runner import pipeline_of

        workload = demo_workload()
        pipeline = PipelineConfig(
            DEFAULT_PIPELINE,
            pipeline_of(workload),
            f"apportion:sim/workloads/{DEFAULT_PIPELINE}.yaml",
            ceiling=workload.ceiling or 20_000,
        )
        return cls({DEFAULT_PIPELINE: pipeline})

    @classmethod
    def from_yaml(cls, path: str | Path) -> ServeConfig:
        """Read and validate a ``serve.yaml``.

        Raises:
            SpecError: the file is unreadable, not YAML, or a key is wrong (with its file,
                line and dotted key); a pipeline or workload file it names is invalid.
            MissingKey: an ``*_env`` variable it names is not set.
        """
        data = load_yaml(path)
        return cls.from_dict(data, file=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, file: str | None = None) -> ServeConfig:
        """Build a config from a mapping shaped like the YAML (see :meth:`from_yaml`)."""
        if not isinstance(data, YamlMap):
            if not isinstance(data, Mapping):
                raise SpecError("a serve config is a mapping of keys", file=file)
            data = _as_yaml_map(data, file)
        data.check_keys(_TOP_KEYS)
        base = Path(file).parent if file is not None else Path.cwd()
        options: dict[str, Any] = {"file": file}
        if "store" in data:
            store = data["store"]
            if not isinstance(store, str) or "://" not in store:
                data.fail("store", "a store URL such as memory:// or redis://host:6379/0")
            options["store"] = store
        for key in ("request_ttl", "lease_seconds", "budget_token_ttl", "auth_failure_window"):
            if key in data:
                options[key] = _positive(data, key)
        if "max_body_bytes" in data:
            size = data["max_body_bytes"]
            if type(size) is not int or not 1024 <= size <= 2**31:
                data.fail("max_body_bytes", "a whole number of bytes, 1024 to 2147483648")
            options["max_body_bytes"] = size
        if "auth_failure_limit" in data:
            limit = data["auth_failure_limit"]
            if type(limit) is not int or not 1 <= limit <= 1_000_000:
                data.fail("auth_failure_limit", "a whole number of failures, 1 or more")
            options["auth_failure_limit"] = limit
        if "unbudgeted" in data:
            if data["unbudgeted"] not in ("reject", "pass"):
                data.fail("unbudgeted", "reject or pass")
            options["unbudgeted"] = data["unbudgeted"]
        signing = _secret(data, "signing_key")
        if signing is not None:
            if len(signing) < 16:
                data.fail("signing_key", "a signing key has at least 16 characters")
            options["signing_key"] = signing.encode("utf-8", "surrogatepass")
            options["signing_key_random"] = False
        if "telemetry" in data:
            options["telemetry"] = _telemetry(data)
        if "metrics" in data:
            if data["metrics"] not in ("public", "admin"):
                data.fail("metrics", "public (anyone may read /metrics) or admin")
            options["metrics"] = data["metrics"]
        metrics_key = _secret(data, "metrics_key")
        if metrics_key is not None:
            if len(metrics_key) < 16:
                data.fail("metrics_key", "a metrics key has at least 16 characters")
            options["metrics_key_hash"] = hash_key(metrics_key)
        if "config_poll_seconds" in data:
            poll = data["config_poll_seconds"]
            if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0 <= poll < 1e6:
                data.fail("config_poll_seconds", "seconds between checks (0: never)")
            options["config_poll_seconds"] = float(poll)
        pipelines = data.get("pipelines")
        if pipelines is None:
            options["pipelines"] = ServeConfig.default().pipelines
        else:
            options["pipelines"] = _pipelines(data, pipelines, base)
        if "tenants" in data:
            options["tenants"] = _tenants(data, data["tenants"])
        if "upstreams" in data:
            options["upstreams"] = _upstreams(data, data["upstreams"])
        if "models" in data:
            options["models"] = _models(data, base, options.get("upstreams", ()))
        return cls(**options)


class MissingKey(SpecError):
    """A config names an environment variable for a secret that is not set.

    Attributes:
        variable: the variable's name.
    """

    variable: str

    def __init__(self, variable: str, *, file: str | None, line: int | None, key: str) -> None:
        super().__init__(
            f"the environment variable {variable} is not set", file=file, line=line, key=key
        )
        self.fields["variable"] = variable
        self.variable = variable


def _as_yaml_map(data: Mapping[str, Any], file: str | None, path: str = "") -> YamlMap:
    """A plain mapping as a :class:`YamlMap` (no lines: built in code)."""
    result = YamlMap()
    result.file, result.line, result.path, result.key_lines = file, None, path, {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise SpecError(f"key {excerpt(key)} is not a string", file=file, key=path or None)
        inner = f"{path}.{key}" if path else key
        if isinstance(value, Mapping) and not isinstance(value, YamlMap):
            value = _as_yaml_map(value, file, inner)
        elif isinstance(value, list | tuple) and not isinstance(value, YamlList):
            items = YamlList(value)
            items.file, items.line, items.path = file, None, inner
            items.item_lines = [None] * len(items)  # type: ignore[list-item]
            value = items
        result[key] = value
    return result


def _positive(data: YamlMap, key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e9:
        data.fail(key, "a positive number of seconds")
    return float(value)


def _line(data: YamlMap, key: str) -> int | None:
    return data.key_lines.get(key, data.line)


def _secret(data: YamlMap, key: str) -> str | None:
    """``KEY`` or the variable ``KEY_env`` names; never quoted in an error."""
    if key in data and f"{key}_env" in data:
        data.fail(key, f"give {key} or {key}_env, not both")
    if key in data:
        value = data[key]
        if not isinstance(value, str) or not value:
            data.fail(key, "a non-empty string")
        return value
    env = f"{key}_env"
    if env in data:
        name = data[env]
        if not isinstance(name, str) or not name:
            data.fail(env, "the name of an environment variable")
        value = os.environ.get(name)
        if not value:
            raise MissingKey(name, file=data.file, line=_line(data, env), key=data.key_path(env))
        return value
    return None


def _telemetry(data: YamlMap) -> tuple[str, ...]:
    value = data["telemetry"]
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
        data.fail("telemetry", "a sink URL or a list of them")
    from apportion.telemetry import open_sinks

    try:
        open_sinks(list(urls))  # checks each URL's scheme; connects nothing
    except ApportionError as exc:
        data.fail("telemetry", exc.message)
    return tuple(urls)


def _models(data: YamlMap, base: Path, upstreams: tuple[UpstreamConfig, ...]) -> Catalog:
    """The catalog ``models:`` names; each model a policy may route to has an upstream."""
    name = data["models"]
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        data.fail("models", "the path of a model catalog file (a 'models:' list)")
    path = base / name
    try:
        catalog = Catalog.from_yaml(path)
    except ApportionError as exc:
        data.fail("models", f"{path}: {exc.message}")
    if upstreams:
        for model in catalog.routable(undeclared=True):
            if not any(model.name.startswith(u.prefix) for u in upstreams):
                data.fail(
                    "models",
                    f"no upstream serves model {model.name!r} (a routing policy may send "
                    "calls to it): give an upstream whose prefix starts its name",
                )
    return catalog


def _check_name(where: YamlMap, name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        where.fail(
            str(name), f"a {what} name is 1 to 64 letters, digits, '_', '.' or '-' (not first)"
        )
    return name


def _pipelines(data: YamlMap, node: object, base: Path) -> dict[str, PipelineConfig]:
    if not isinstance(node, YamlMap) or not node:
        data.fail("pipelines", "a mapping of pipeline names to {path: FILE, ...}")
    result: dict[str, PipelineConfig] = {}
    by_agents: dict[frozenset[str], str] = {}
    for name, entry in node.items():
        _check_name(node, name, "pipeline")
        if not isinstance(entry, YamlMap):
            node.fail(name, "a mapping with path (or workload), policy, ceiling")
        entry.check_keys(_PIPELINE_KEYS)
        if ("path" in entry) == ("workload" in entry):
            entry.fail(None, "give path (a pipeline file) or workload (a workload file)")
        key = "path" if "path" in entry else "workload"
        if not isinstance(entry[key], str) or not entry[key]:
            entry.fail(key, "a file's path")
        source = base / entry[key]
        if key == "path":
            pipeline = Pipeline.from_yaml(source)
        else:
            from apportion.sim.runner import pipeline_of
            from apportion.sim.workload import load_workload

            pipeline = pipeline_of(load_workload(source))
        same = by_agents.setdefault(ranked(pipeline), name)
        if same != name:
            node.fail(
                name,
                f"its agents are those of pipeline {same!r}: the gateway tells a request's "
                "pipeline by its agents, so two pipelines need different agent names",
            )
        options: dict[str, Any] = {}
        if "policy" in entry:
            options["policy"], options["policy_options"] = _policy(entry)
        if "ceiling" in entry:
            ceiling = entry["ceiling"]
            if type(ceiling) is not int or not 1 <= ceiling <= MAX_TOKENS:
                entry.fail("ceiling", "a positive whole number of tokens")
            options["ceiling"] = ceiling
        if "ceiling_usd" in entry:
            usd = entry["ceiling_usd"]
            if isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 < usd < 1e6:
                entry.fail("ceiling_usd", "a positive number of USD")
            options["ceiling_usd"] = float(usd)
        result[name] = PipelineConfig(name, pipeline, str(source), **options)
    return result


def _policy(entry: YamlMap) -> tuple[str, dict[str, Any]]:
    """A pipeline's ``policy``: a name, or ``{name: NAME, OPTION: VALUE, ...}``, checked."""
    from apportion.policies import resolve_policy

    value = entry["policy"]
    options: dict[str, Any] = {}
    if isinstance(value, YamlMap):
        options = {key: _plain(item) for key, item in value.items() if key != "name"}
        value = value.get("name")
    if not isinstance(value, str) or not value:
        entry.fail("policy", "a policy's name, or {name: NAME, and its options}")
    try:
        resolve_policy(value, options=options)
    except ApportionError as exc:
        entry.fail("policy", exc.message)
    return value, options


def _plain(value: Any) -> Any:
    """A YAML value as plain dicts and lists (what a policy's options are given as)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _tenants(data: YamlMap, node: object) -> dict[str, TenantConfig]:
    if not isinstance(node, YamlMap):
        data.fail("tenants", "a mapping of tenant names to {keys: [...], admin: ...}")
    result: dict[str, TenantConfig] = {}
    owner: dict[str, str] = {}
    for name, entry in node.items():
        _check_name(node, name, "tenant")
        if not isinstance(entry, YamlMap):
            node.fail(name, "a mapping with keys (or keys_env, key_sha256) and admin")
        entry.check_keys(_TENANT_KEYS)
        hashes: set[str] = set()
        if "keys" in entry:
            keys = entry["keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                entry.fail("keys", "a list of API keys (strings)")
            hashes.update(hash_key(k) for k in keys)
        if "keys_env" in entry:
            variable = entry["keys_env"]
            if not isinstance(variable, str) or not variable:
                entry.fail("keys_env", "the name of an environment variable")
            value = os.environ.get(variable, "")
            found = [k.strip() for k in value.split(",") if k.strip()]
            if not found:
                raise MissingKey(
                    variable,
                    file=entry.file,
                    line=_line(entry, "keys_env"),
                    key=entry.key_path("keys_env"),
                )
            hashes.update(hash_key(k) for k in found)
        if "key_sha256" in entry:
            digests = entry["key_sha256"]
            if not isinstance(digests, list) or not all(
                isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d) for d in digests
            ):
                entry.fail("key_sha256", "a list of SHA-256 hex digests (64 lowercase hex)")
            hashes.update(digests)
        if not hashes:
            entry.fail(None, "a tenant needs at least one key (keys, keys_env or key_sha256)")
        for digest in hashes:
            if digest in owner:
                entry.fail(None, f"a key of this tenant is also a key of {owner[digest]!r}")
            owner[digest] = name
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            entry.fail("admin", "true or false")
        result[name] = TenantConfig(name, frozenset(hashes), admin)
    return result


def _upstreams(data: YamlMap, node: object) -> tuple[UpstreamConfig, ...]:
    if not isinstance(node, YamlMap):
        data.fail("upstreams", "a mapping of upstream names to {prefix, model, api_base ...}")
    result: list[UpstreamConfig] = []
    for name, entry in node.items():
        _check_name(node, name, "upstream")
        if not isinstance(entry, YamlMap):
            node.fail(name, "a mapping with prefix, model, api_base, api_key ...")
        entry.check_keys(_UPSTREAM_KEYS)
        texts: dict[str, str | None] = {}
        for key in ("prefix", "model", "api_base"):
            value = entry.get(key)
            if value is not None and not isinstance(value, str):
                entry.fail(key, "a string")
            texts[key] = value
        if texts["api_base"] is not None and not re.match(r"^https?://", texts["api_base"]):
            entry.fail("api_base", "an http:// or https:// URL")
        passing, direct = entry.get("pass_through_key", False), entry.get("direct", False)
        for key, flag in (("pass_through_key", passing), ("direct", direct)):
            if not isinstance(flag, bool):
                entry.fail(key, "true or false")
        api_key = _secret(entry, "api_key")
        if passing and api_key is not None:
            entry.fail("pass_through_key", "give api_key (or api_key_env) or pass_through_key")
        result.append(
            UpstreamConfig(
                name,
                prefix=texts["prefix"] or "",
                model=texts["model"],
                api_base=texts["api_base"],
                api_key=api_key,
                pass_through_key=passing,
                direct=direct,
            )
        )
    return tuple(result)
