"""``[storage]`` and ``[cluster]``: PostgreSQL and Redis for N instances (docs/scaling.md)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["ClusterConfig", "StorageConfig", "redact_url"]

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


def redact_url(url: str) -> str:
    """A connection URL fit to print: any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"
