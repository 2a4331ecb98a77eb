"""relay's configuration: one TOML file decoded into frozen msgspec Structs.

Unknown keys, bad values and dangling references are errors that name the key
(``ConfigError``). Prices stay decimal strings here; ``relay.money.pricing`` turns them
into exact amounts. Secrets are ``env:NAME`` references resolved by
``resolve_secret`` so that a config file never has to hold a key.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from relay.errors import ConfigError

__all__ = [
    "ClusterConfig",
    "Config",
    "ModelConfig",
    "PaymentsConfig",
    "ProviderConfig",
    "ServerConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
    "redact_url",
    "resolve_secret",
]

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
ProviderKind = Literal["openai", "anthropic", "mock"]
ModelKind = Literal["chat", "embedding", "image", "video"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$")


def _check_usd(value: str, key: str) -> None:
    """A price or amount: a non-negative, finite decimal string (never a float)."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f'{key} must be a decimal string such as "0.15"') from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{key} must be a non-negative decimal string")


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8787"
    database: str = "relay.db"
    admin_token_env: str = "RELAY_ADMIN_TOKEN"
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    flush_interval_ms: Annotated[int, Meta(ge=1, le=100)] = 50
    shutdown_grace_s: NonNegativeFloat = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tls_cert: str | None = None
    tls_key: str | None = None
    # uvicorn (the relay[uvicorn] extra) parses HTTP/1.1 faster; hypercorn adds HTTP/2.
    http_server: Literal["hypercorn", "uvicorn"] = "hypercorn"

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('listen must be HOST:PORT, e.g. "127.0.0.1:8787"')
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class ProviderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    kind: ProviderKind
    base_url: str = ""
    # The shared pool of upstream keys; "env:NAME" reads the environment.
    api_keys: list[str] = []
    timeout_s: PositiveFloat = 60.0
    connect_timeout_s: PositiveFloat = 10.0
    # Until the upstream answers with headers; defaults to timeout_s.
    first_byte_timeout_s: PositiveFloat | None = None
    # Longest silence allowed between two chunks of a stream.
    idle_timeout_s: PositiveFloat = 60.0
    max_connections: PositiveInt = 1024
    max_attempts: Annotated[int, Meta(ge=1, le=10)] = 3
    # mock kind only: simulated latency before the answer, and stream chunk count.
    mock_latency_ms: Annotated[int, Meta(ge=0)] = 0
    mock_stream_chunks: PositiveInt = 8

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or ":" in self.name:
            raise ValueError(f"name {self.name!r} must be a plain identifier without ':'")
        if self.kind != "mock":
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError("base_url must start with http:// or https://")
            if not self.api_keys:
                raise ValueError("api_keys must list at least one key or env:NAME")
        for spec in self.api_keys:
            if not spec:
                raise ValueError("api_keys must not contain empty strings")

    @property
    def first_byte_timeout(self) -> float:
        return self.first_byte_timeout_s or self.timeout_s


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    routes: list[str]
    kind: ModelKind = "chat"
    input_usd_per_mtok: str = "0"
    output_usd_per_mtok: str = "0"
    cached_input_usd_per_mtok: str | None = None
    cache_write_usd_per_mtok: str | None = None
    usd_per_image: str | None = None
    # Per-size/quality image prices, keyed "SIZE" or "SIZE/QUALITY" (e.g. "1024x1024/hd").
    image_prices: dict[str, str] = {}
    usd_per_video_second: str | None = None
    max_output_tokens: PositiveInt = 4096
    context_window: PositiveInt = 128_000
    owned_by: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} is not a valid model name")
        if not self.routes:
            raise ValueError("routes must list at least one provider:upstream-model")
        for route in self.routes:
            provider, sep, upstream = route.partition(":")
            if not sep or not provider or not upstream:
                raise ValueError(f"route {route!r} must be provider:upstream-model")
        for key in (
            "input_usd_per_mtok",
            "output_usd_per_mtok",
            "cached_input_usd_per_mtok",
            "cache_write_usd_per_mtok",
            "usd_per_image",
            "usd_per_video_second",
        ):
            value = getattr(self, key)
            if value is not None:
                _check_usd(value, key)
        for size, price in self.image_prices.items():
            _check_usd(price, f"image_prices.{size}")


# Two-decimal currencies only: a minor unit is exactly 10,000 micro-units of the wallet.
PaymentCurrency = Literal["usd", "eur", "gbp"]


class PaymentsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[payments]``: card top-ups through Stripe, or ``manual`` (bank transfers only)."""

    provider: Literal["stripe", "manual"] = "stripe"
    # Names of environment variables: the secrets themselves never live in the file.
    secret_key_env: str = "STRIPE_SECRET_KEY"
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    api_base: str = "https://api.stripe.com"
    currency: PaymentCurrency = "usd"
    min_topup_usd: str = "5"
    max_topup_usd: str = "1000"
    # Where Stripe Checkout sends the buyer back; a checkout request may override them.
    success_url: str | None = None
    cancel_url: str | None = None
    timeout_s: PositiveFloat = 30.0
    seller_name: str = ""
    seller_address: str = ""
    seller_tax_id: str | None = None

    def __post_init__(self) -> None:
        if not self.api_base.startswith(("http://", "https://")):
            raise ValueError("api_base must start with http:// or https://")
        _check_usd(self.min_topup_usd, "min_topup_usd")
        _check_usd(self.max_topup_usd, "max_topup_usd")
        if Decimal(self.min_topup_usd) > Decimal(self.max_topup_usd):
            raise ValueError("min_topup_usd must not exceed max_topup_usd")
        for key in ("success_url", "cancel_url"):
            url = getattr(self, key)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{key} must start with http:// or https://")


_POSTGRES_URL = re.compile(r"^postgres(?:ql)?://[^\s]*$")
_REDIS_URL = re.compile(r"^rediss?://[^\s]+$")


class StorageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[storage]``: absent = SQLite at ``[server] database``; a ``postgresql://`` url = the
    cluster store (docs/scaling.md), which needs ``[cluster] redis_url`` too."""

    url: str

    def __post_init__(self) -> None:
        if not _POSTGRES_URL.match(self.url):
            raise ValueError(
                'url must be a PostgreSQL URL such as "postgresql://relay@db.internal/relay" '
                "(leave [storage] out for the embedded SQLite file at [server] database)"
            )


class ClusterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[cluster]``: the Redis every instance shares for rate limits, concurrency leases
    and key/config invalidation. Lease and heartbeat times are seconds."""

    redis_url: str
    # A dead instance's holds and concurrency slots are released this long after its
    # last heartbeat; heartbeats run at a third of it so one lost beat never expires a lease.
    lease_s: Annotated[float, Meta(ge=1, le=600)] = 30.0

    def __post_init__(self) -> None:
        if not _REDIS_URL.match(self.redis_url):
            raise ValueError(
                'redis_url must be a Redis URL such as "redis://cache.internal:6379/0"'
            )


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: ServerConfig = ServerConfig()
    providers: list[ProviderConfig] = []
    models: list[ModelConfig] = []
    # Absent: payments are off (manual credits through the admin API still work).
    payments: PaymentsConfig | None = None
    # Both absent: the embedded store. Both present: cluster mode. One alone is an error.
    storage: StorageConfig | None = None
    cluster: ClusterConfig | None = None
    # Where the file was read from; relative paths in it resolve against this folder.
    base_dir: str = "."

    def __post_init__(self) -> None:
        if self.storage is not None and self.cluster is None:
            raise ValueError(
                "a half-configured cluster: [storage] url is PostgreSQL but [cluster] redis_url "
                "is missing (cluster mode needs both; remove [storage] for the embedded store)"
            )
        if self.cluster is not None and self.storage is None:
            raise ValueError(
                "a half-configured cluster: [cluster] redis_url is set but [storage] url is "
                "missing (cluster mode needs both; remove [cluster] for the embedded store)"
            )

    @property
    def cluster_mode(self) -> bool:
        return self.storage is not None and self.cluster is not None

    @property
    def base_dir_path(self) -> Path:
        return Path(self.base_dir)

    @property
    def database_path(self) -> Path:
        return _resolve_path(self.base_dir, self.server.database)

    def provider(self, name: str) -> ProviderConfig:
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise KeyError(name)


def _resolve_path(base_dir: str, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def _key_path(message: str) -> str:
    """Rewrite msgspec's ``... - at `$.models[0].name``` into ``models[0].name: ...``."""
    match = re.search(r" - at `\$\.?(.*)`$", message)
    if not match:
        return message
    where = match.group(1) or "(top level)"
    return f"{where}: {message[: match.start()]}"


def _check_references(config: Config) -> None:
    names: set[str] = set()
    for i, provider in enumerate(config.providers):
        if provider.name in names:
            raise ConfigError(f"providers[{i}].name: duplicate provider {provider.name!r}")
        names.add(provider.name)
    models: set[str] = set()
    for i, model in enumerate(config.models):
        if model.name in models:
            raise ConfigError(f"models[{i}].name: duplicate model {model.name!r}")
        models.add(model.name)
        for j, route in enumerate(model.routes):
            provider_name = route.partition(":")[0]
            if provider_name not in names:
                raise ConfigError(
                    f"models[{i}].routes[{j}]: unknown provider {provider_name!r} "
                    f"(known: {', '.join(sorted(names)) or 'none'})"
                )


def parse_config(text: str, base_dir: str = ".") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    if "base_dir" in raw:
        raise ConfigError("base_dir: unknown key")
    raw["base_dir"] = base_dir
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_key_path(str(exc))) from None
    _check_references(config)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(file)!r}: {exc.strerror}") from None
    return parse_config(text, base_dir=str(file.resolve().parent))


def resolve_secret(spec: str) -> str | None:
    """``env:NAME`` → the variable's value (None when unset or empty); else the literal."""
    if spec.startswith("env:"):
        return os.environ.get(spec[4:]) or None
    return spec


def redact_url(url: str) -> str:
    """A connection URL fit to print: any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"
