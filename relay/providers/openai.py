"""The OpenAI dialect: any OpenAI-compatible host (OpenAI, DeepSeek, vLLM, ...)."""

from __future__ import annotations

from typing import Any

import msgspec

from relay.keypool import UpstreamKey
from relay.providers.base import Provider
from relay.wire import ChatRequest, encode

__all__ = ["OpenAIProvider"]

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


class OpenAIProvider(Provider):
    def url(self, path: str) -> str:
        return self.config.base_url.rstrip("/") + path

    def headers(self, key: UpstreamKey) -> dict[str, str]:
        return {"authorization": f"Bearer {key.secret}", "content-type": "application/json"}

    def chat_body(self, body: bytes, request: ChatRequest, upstream_model: str) -> bytes:
        """The client's body, with the upstream's model name and usage asked for on streams.

        The common case (same model name, no stream_options sent) splices bytes rather
        than re-encoding a body that may hold a long prompt.
        """
        wants_usage_injected = bool(request.stream) and not (
            request.stream_options and request.stream_options.include_usage
        )
        if upstream_model == request.model and not wants_usage_injected:
            return body
        if upstream_model == request.model and request.stream_options is None:
            start = body.index(b"{") + 1
            return body[:start] + _INCLUDE_USAGE + body[start:]
        payload: dict[str, Any] = msgspec.json.decode(body)
        payload["model"] = upstream_model
        if wants_usage_injected:
            options = payload.get("stream_options") or {}
            payload["stream_options"] = {**options, "include_usage": True}
        return encode(payload)

    def embedding_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        if upstream_model == public_model:
            return body
        payload: dict[str, Any] = msgspec.json.decode(body)
        payload["model"] = upstream_model
        return encode(payload)
