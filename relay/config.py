"""relay's configuration: one TOML file decoded into frozen msgspec Structs.

Unknown keys, bad values and dangling references are errors that name the key
(``ConfigError``). Prices stay decimal strings here; ``relay.money.pricing`` turns them
into exact amounts. Secrets are ``env:NAME`` references resolved by
``resolve_secret`` so that a config file never has to hold a key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from relay.errors import ConfigError

__all__ = [
    "ALERT_EVENTS",
    "AlertConfig",
    "AlertEvent",
    "BudgetsConfig",
    "EmailConfig",
    "ClusterConfig",
    "Config",
    "MetricsConfig",
    "ModelConfig",
    "PaymentsConfig",
    "ProviderConfig",
    "RetentionConfig",
    "RouteConfig",
    "RouteSpec",
    "ServerConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
    "parse_route",
    "redact_url",
    "resolve_secret",
]

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
ProviderKind = Literal["openai", "anthropic", "mock"]
# transcription: speech to text (/v1/audio/transcriptions, /translations); speech: text to
# speech (/v1/audio/speech); moderation: /v1/moderations.
ModelKind = Literal["chat", "embedding", "image", "video", "transcription", "speech", "moderation"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$")


def _check_usd(value: str, key: str) -> None:
    """A price or amount: a non-negative, finite decimal string (never a float)."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f'{key} must be a decimal string such as "0.15"') from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{key} must be a non-negative decimal string")


def _check_public_url(url: str) -> None:
    """An origin (scheme, host, optional port) with no path: relay serves from the root."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError('public_url must be an http(s) URL such as "https://relay.example.com"')
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("public_url must name only the scheme, host and port, with no path")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("public_url has an invalid port") from None


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8787"
    database: str = "relay.db"
    admin_token_env: str = "RELAY_ADMIN_TOKEN"
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    # A client that sends its body slower than this (in total) gets 408, not a held worker.
    body_read_timeout_s: PositiveFloat = 30.0
    # Larger non-stream upstream answers are refused with 502 as they arrive (issue 13).
    max_upstream_body_mb: PositiveInt = 10
    # Largest upload a multipart route (audio transcription, image edits) accepts, in MB;
    # such routes read up to this much instead of max_body_bytes.
    max_upload_mb: Annotated[int, Meta(ge=1, le=1024)] = 25
    # Longest audio a transcription may be held (and billed) for: the cap on the estimate
    # from an upload's size, and the longest a WAV header may declare (longer is a 400).
    max_audio_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 7_200
    # Wrong secrets for one known key id allowed per minute before 429 (argon2 is costly).
    max_key_failures_per_minute: PositiveInt = 10
    flush_interval_ms: Annotated[int, Meta(ge=1, le=100)] = 50
    # How much the SQLite writer thread's scheduling priority is lowered (its nice value,
    # Linux): on a core it shares with the event loop, a group commit then yields the core
    # to a request instead of splitting it (docs/performance.md, "The writer's flush").
    # Past about 5 the writer can fall behind a saturated core (see there).
    writer_nice: Annotated[int, Meta(ge=0, le=19)] = 5
    shutdown_grace_s: NonNegativeFloat = 10.0
    # Fail closed: while the database cannot commit for longer than this, billable requests
    # and admin writes answer 503 storage_unavailable and /healthz says why.
    storage_stall_s: PositiveFloat = 2.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tls_cert: str | None = None
    tls_key: str | None = None
    # uvicorn (the relay[uvicorn] extra) parses HTTP/1.1 faster; hypercorn adds HTTP/2.
    http_server: Literal["hypercorn", "uvicorn"] = "hypercorn"
    # Where users reach relay (e.g. "https://relay.example.com" behind a TLS proxy): console
    # links are built from it, and an https URL makes the session cookie Secure.
    public_url: str | None = None
    # Reverse proxies (IPs or CIDRs) whose X-Forwarded-For names the client for per-IP limits.
    trusted_proxies: list[str] = []

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('listen must be HOST:PORT, e.g. "127.0.0.1:8787"')
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.public_url is not None:
            _check_public_url(self.public_url)
        for spec in self.trusted_proxies:
            try:
                ipaddress.ip_network(spec, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {spec!r} is not an IP address or CIDR network"
                ) from None

    @property
    def max_upstream_body_bytes(self) -> int:
        return self.max_upstream_body_mb * 1024 * 1024

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def public_origin(self) -> str | None:
        """``public_url`` without a trailing slash, or None when unset."""
        return self.public_url.rstrip("/") if self.public_url else None


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
    # Longest a whole stream may last, however steadily it trickles.
    stream_timeout_s: PositiveFloat = 900.0
    max_connections: PositiveInt = 1024
    max_attempts: Annotated[int, Meta(ge=1, le=10)] = 3
    # Each pool key's own upstream quota (0 = none): routing skips a key that would exceed it.
    key_rpm: Annotated[int, Meta(ge=0)] = 0
    key_tpm: Annotated[int, Meta(ge=0)] = 0
    # Active health checks (None = off): each key GETs health_check_path this often.
    health_check_interval_s: Annotated[float, Meta(ge=5)] | None = None
    health_check_path: str = "/models"
    # mock kind only: simulated latency before the answer, and stream chunk count.
    mock_latency_ms: Annotated[int, Meta(ge=0)] = 0
    mock_stream_chunks: PositiveInt = 8
    # Whether the upstream serves OpenAI's Responses API (/responses) itself: relay then
    # passes /v1/responses through; otherwise it translates to chat completions or
    # Messages. Unset: on for kind "openai" at api.openai.com, off for everything else.
    responses_api: bool | None = None

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


class RouteConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A route in table form: ``{ provider = "openai", model = "gpt-4o", weight = 3 }``."""

    provider: str
    model: str
    weight: Annotated[int, Meta(ge=0, le=1000)] | None = None


class RouteSpec(msgspec.Struct, frozen=True):
    """A parsed route: ``weight`` None = plain fallback order (no weight was given)."""

    provider: str
    upstream_model: str
    weight: int | None


def parse_route(route: str | RouteConfig) -> RouteSpec:
    """``provider:upstream-model`` with an optional ``@weight``, or the table form."""
    if isinstance(route, RouteConfig):
        if not route.provider or not route.model:
            raise ValueError("a route table needs provider and model")
        return RouteSpec(route.provider, route.model, route.weight)
    provider, sep, upstream = route.partition(":")
    weight: int | None = None
    base, at, suffix = upstream.rpartition("@")
    if at and suffix.isdigit():
        upstream, weight = base, int(suffix)
        if weight > 1000:
            raise ValueError(f"route {route!r}: weight must be 0..1000")
    if not sep or not provider or not upstream:
        raise ValueError(f"route {route!r} must be provider:upstream-model[@weight]")
    return RouteSpec(provider, upstream, weight)


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    # Fallback order; with weights ("openai:gpt-4o@3", "azure:gpt-4o@1", or tables with
    # weight) the first try is drawn by weight, the others follow as fallbacks.
    routes: list[str | RouteConfig]
    kind: ModelKind = "chat"
    input_usd_per_mtok: str = "0"
    output_usd_per_mtok: str = "0"
    cached_input_usd_per_mtok: str | None = None
    cache_write_usd_per_mtok: str | None = None
    usd_per_image: str | None = None
    # Per-size/quality image prices, keyed "SIZE" or "SIZE/QUALITY" (e.g. "1024x1024/hd").
    image_prices: dict[str, str] = {}
    usd_per_video_second: str | None = None
    # Transcription models: USD per second of audio (Whisper: "0.0001", $0.006 a minute).
    usd_per_audio_second: str | None = None
    # Speech models: USD per million input characters (tts-1: "15").
    usd_per_mchar: str | None = None
    # Video models: the clip lengths (whole seconds) a request may ask for.
    video_seconds: Annotated[list[Annotated[int, Meta(ge=1, le=3600)]], Meta(min_length=1)] = (
        msgspec.field(default_factory=lambda: [4, 8, 12])
    )
    max_output_tokens: PositiveInt = 4096
    context_window: PositiveInt = 128_000
    owned_by: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r} is not a valid model name")
        if not self.routes:
            raise ValueError("routes must list at least one provider:upstream-model")
        for route in self.routes:
            parse_route(route)
        for key in (
            "input_usd_per_mtok",
            "output_usd_per_mtok",
            "cached_input_usd_per_mtok",
            "cache_write_usd_per_mtok",
            "usd_per_image",
            "usd_per_video_second",
            "usd_per_audio_second",
            "usd_per_mchar",
        ):
            value = getattr(self, key)
            if value is not None:
                _check_usd(value, key)
        for size, price in self.image_prices.items():
            _check_usd(price, f"image_prices.{size}")


Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)


class BudgetsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[budgets]``: where budget periods begin (UTC) for keys and accounts with a period."""

    day_start_hour: Annotated[int, Meta(ge=0, le=23)] = 0
    week_start: Weekday = "monday"
    # 1..28 so that every month has the day.
    month_start_day: Annotated[int, Meta(ge=1, le=28)] = 1

    @property
    def week_start_index(self) -> int:
        return WEEKDAYS.index(self.week_start)


class EmailConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[email]``: the SMTP server relay sends alerts and people's mail through."""

    host: str
    from_: str = msgspec.field(name="from")
    port: Annotated[int, Meta(ge=1, le=65535)] = 587
    # STARTTLS after connecting (port 587); false only for a local relay such as 127.0.0.1:25.
    starttls: bool = True
    user: str | None = None
    # The name of the environment variable holding the SMTP password, never the password.
    password_env: str | None = None
    timeout_s: PositiveFloat = 30.0
    # Billing mail to each account's owners: a receipt when credit lands (payment, manual
    # credit, auto top-up), and a statement once a calendar month (UTC) has closed. Off by
    # default: configuring SMTP for alerts must not start mailing customers.
    receipts: bool = False
    statements: bool = False

    def __post_init__(self) -> None:
        if "@" not in self.from_:
            raise ValueError("from must be an email address")
        if (self.user is None) != (self.password_env is None):
            raise ValueError("user and password_env must be set together")


AlertEvent = Literal[
    "balance_low",
    "budget_80",
    "budget_100",
    "upstream_key_disabled",
    "provider_cooling",
    "auto_topup_failed",
    "storage_unavailable",
    "storage_recovered",
]
ALERT_EVENTS: tuple[AlertEvent, ...] = (
    "balance_low",
    "budget_80",
    "budget_100",
    "upstream_key_disabled",
    "provider_cooling",
    "auto_topup_failed",
    "storage_unavailable",
    "storage_recovered",
)


class AlertConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``[[alerts]]`` sink: where alerts go, which ones, and how often at most."""

    sink: Literal["webhook", "slack", "email"]
    name: str = ""
    # webhook and slack: where to POST. email: the recipients (needs [email]).
    url: str | None = None
    to: list[str] = []
    # webhook: env var holding the HMAC-SHA256 key; the body's signature is sent in
    # x-relay-signature: sha256=<hex>.
    secret_env: str | None = None
    events: list[AlertEvent] = msgspec.field(default_factory=lambda: list(ALERT_EVENTS))
    # An account's available balance below this (USD) raises balance_low.
    balance_below_usd: str = "5"
    # The same alert (event and subject) is sent again at most once per re-arm interval
    # (at most 30 days: a longer silence is a sink that should be removed).
    rearm_s: Annotated[float, Meta(ge=0, le=2_592_000)] = 3600.0

    def __post_init__(self) -> None:
        if self.sink in ("webhook", "slack"):
            if self.url is None or not self.url.startswith(("http://", "https://")):
                raise ValueError(f'a {self.sink} sink needs url = "https://..."')
        elif not self.to or any("@" not in address for address in self.to):
            raise ValueError('an email sink needs to = ["someone@example.com"]')
        _check_usd(self.balance_below_usd, "balance_below_usd")


class AlertsSettingsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[alerts_settings]``: what applies to every ``[[alerts]]`` sink."""

    # How often the watcher looks for alert conditions (balances, budgets, upstream keys,
    # auto top-ups, storage). Bounded: under a second is busy work on the event loop, over
    # an hour is an alert nobody gets in time. A reload applies it from the next round.
    # In cluster mode the elected instance's auto top-up sweep runs at the same pace.
    check_interval_s: Annotated[float, Meta(ge=1, le=3600)] = 10.0


class TelemetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[telemetry]``: optional OpenTelemetry traces over OTLP/HTTP (the ``otel`` extra)."""

    # The collector's OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces.
    # Absent: no tracing, and OpenTelemetry is never imported.
    otlp_endpoint: str | None = None
    service_name: str = "relay"
    # The name of an env var holding extra export headers ("k1=v1,k2=v2", say a token).
    headers_env: str | None = None

    def __post_init__(self) -> None:
        endpoint = self.otlp_endpoint
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ValueError('otlp_endpoint must be an http(s) URL ("http://host:4318/v1/traces")')
        if not self.service_name:
            raise ValueError("service_name must not be empty")


class RetentionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[retention]``: how long rows stay in the database before monthly archive files."""

    usage_days: Annotated[int, Meta(ge=1)] = 90
    # The privacy policy's 90 days by default.
    audit_days: Annotated[int, Meta(ge=1)] = 90
    archive_keep_days: Annotated[int, Meta(ge=1)] = 730


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[metrics]``: ``GET /metrics`` (Prometheus text) on the main listener.

    It answers the admin token, or the token in ``token_env`` when that variable is set
    (so a scraper never holds the operator's token). ``listen`` opens a second port that
    serves only ``/metrics`` without a token: bind it to loopback or a private interface.
    """

    enabled: bool = True
    token_env: str = "RELAY_METRICS_TOKEN"
    listen: str | None = None

    def __post_init__(self) -> None:
        if self.listen is not None:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError('listen must be HOST:PORT, e.g. "127.0.0.1:9464"')


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
    metrics: MetricsConfig = MetricsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    retention: RetentionConfig = RetentionConfig()
    email: EmailConfig | None = None
    alerts: list[AlertConfig] = []
    alerts_settings: AlertsSettingsConfig = AlertsSettingsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    # Both absent: the embedded store. Both present: cluster mode. One alone is an error.
    storage: StorageConfig | None = None
    cluster: ClusterConfig | None = None
    # Where the file was read from; relative paths in it resolve against this folder.
    base_dir: str = "."
    # The file itself (empty when parsed from text): what a reload re-reads.
    source: str = ""

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
    for i, alert in enumerate(config.alerts):
        if alert.sink == "email" and config.email is None:
            raise ConfigError(f"alerts[{i}].sink: an email sink needs an [email] section")
    models: set[str] = set()
    for i, model in enumerate(config.models):
        if model.name in models:
            raise ConfigError(f"models[{i}].name: duplicate model {model.name!r}")
        models.add(model.name)
        for j, route in enumerate(model.routes):
            provider_name = parse_route(route).provider
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
    for internal in ("base_dir", "source"):
        if internal in raw:
            raise ConfigError(f"{internal}: unknown key")
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
    config = parse_config(text, base_dir=str(file.resolve().parent))
    return msgspec.structs.replace(config, source=str(file.resolve()))


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
