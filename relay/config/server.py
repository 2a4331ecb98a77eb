"""``[server]``: where relay listens, its database file, and the bounds of every request."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from relay.config.fields import NonNegativeFloat, PositiveFloat, PositiveInt, check_public_url

__all__ = ["ServerConfig"]


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
    # The nice value of the thread that runs routine flushes (Linux): at 19 a flush waits
    # for the event loop to be idle, so it no longer lands inside a request (the p99). When
    # that thread falls behind, or someone awaits a commit, the writer's own thread (at
    # ``writer_nice``) commits instead. At or below ``writer_nice``: no such thread.
    writer_background_nice: Annotated[int, Meta(ge=0, le=19)] = 19
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
            check_public_url(self.public_url)
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
