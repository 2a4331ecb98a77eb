"""``[[providers]]`` and ``[[models]]``: the upstreams, and the models relay offers with
their routes and prices (decimal strings here; ``relay.money.pricing`` makes them exact)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from relay.config.fields import NAME, PositiveFloat, PositiveInt, check_usd

__all__ = [
    "ModelConfig",
    "ModelKind",
    "ProviderConfig",
    "ProviderKind",
    "RouteConfig",
    "RouteSpec",
    "parse_route",
]

ProviderKind = Literal["openai", "anthropic", "mock"]
# transcription: speech to text (/v1/audio/transcriptions, /translations); speech: text to
# speech (/v1/audio/speech); moderation: /v1/moderations.
ModelKind = Literal["chat", "embedding", "image", "video", "transcription", "speech", "moderation"]


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
        if not NAME.match(self.name) or ":" in self.name:
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
        if not NAME.match(self.name):
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
                check_usd(value, key)
        for size, price in self.image_prices.items():
            check_usd(price, f"image_prices.{size}")
