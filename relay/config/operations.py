"""``[telemetry]``, ``[retention]`` and ``[metrics]``: what relay keeps and what it shows."""

from __future__ import annotations

import hmac
import os
from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["MetricsConfig", "RetentionConfig", "TelemetryConfig"]


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

    def is_token(self, token: str) -> bool:
        """Is ``token`` the scraper's (the variable is read now: it may be set later)?"""
        expected = os.environ.get(self.token_env) or ""
        return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())
