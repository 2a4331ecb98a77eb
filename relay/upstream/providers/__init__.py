"""Provider adapters: how relay speaks to each kind of upstream.

``build_provider`` wires a provider's config to its key pool and upstream client.
The ``mock`` kind speaks the OpenAI dialect to an in-process fake upstream, so it
exercises the same code paths as a real provider without any network.
"""

from __future__ import annotations

from collections.abc import Callable

from relay.config import ProviderConfig, resolve_secret
from relay.upstream.client import AiohttpUpstream, UpstreamClient
from relay.upstream.keypool import KeyPool
from relay.upstream.providers.anthropic import AnthropicProvider
from relay.upstream.providers.base import Provider
from relay.upstream.providers.mock import MockUpstream
from relay.upstream.providers.openai import OpenAIProvider

__all__ = ["ClientFactory", "Provider", "build_provider", "default_client_factory"]

ClientFactory = Callable[[ProviderConfig], UpstreamClient]


def default_client_factory(config: ProviderConfig) -> UpstreamClient:
    if config.kind == "mock":
        return MockUpstream(config)
    return AiohttpUpstream(
        max_connections=config.max_connections, connect_timeout_s=config.connect_timeout_s
    )


def build_provider(config: ProviderConfig, client_factory: ClientFactory) -> Provider:
    if config.kind == "mock":
        secrets = ["mock-key"]
        missing: list[str] = []
    else:
        resolved = [(spec, resolve_secret(spec)) for spec in config.api_keys]
        secrets = [secret for _, secret in resolved if secret]
        missing = [spec[4:] for spec, secret in resolved if not secret]
    pool = KeyPool(config.name, secrets, key_rpm=config.key_rpm, key_tpm=config.key_tpm)
    if config.kind in ("openai", "mock"):
        return OpenAIProvider(config, pool, client_factory(config), missing_env=missing)
    if config.kind == "anthropic":
        return AnthropicProvider(config, pool, client_factory(config), missing_env=missing)
    raise NotImplementedError(f"provider kind {config.kind!r} is not available yet")
