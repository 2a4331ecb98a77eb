"""What every provider adapter offers the router."""

from __future__ import annotations

from relay.config import ProviderConfig
from relay.keypool import KeyPool, UpstreamKey
from relay.upstream import Timeouts, UpstreamClient
from relay.wire import ChatRequest

__all__ = ["Provider"]


class Provider:
    """A named upstream: its key pool, its client, and how to shape requests for it."""

    def __init__(
        self,
        config: ProviderConfig,
        pool: KeyPool,
        client: UpstreamClient,
        *,
        missing_env: list[str] | None = None,
    ):
        self.config = config
        self.name = config.name
        self.kind = config.kind
        self.pool = pool
        self.client = client
        self.missing_env = missing_env or []
        self.timeouts = Timeouts(
            connect_s=config.connect_timeout_s,
            first_byte_s=config.first_byte_timeout,
            idle_s=config.idle_timeout_s,
            total_s=config.timeout_s,
        )

    @property
    def enabled(self) -> bool:
        return self.pool.configured

    def why_disabled(self) -> str:
        if self.missing_env:
            names = ", ".join(self.missing_env)
            return f"provider {self.name!r} has no API key: set {names}"
        return f"provider {self.name!r} has no usable API key"

    def url(self, path: str) -> str:
        raise NotImplementedError

    def headers(self, key: UpstreamKey) -> dict[str, str]:
        raise NotImplementedError

    def chat_body(self, body: bytes, request: ChatRequest, upstream_model: str) -> bytes:
        raise NotImplementedError

    def embedding_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.client.aclose()
