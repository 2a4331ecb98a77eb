"""The OpenAI dialect: any OpenAI-compatible host (OpenAI, DeepSeek, vLLM, ...)."""

from __future__ import annotations

from typing import Any

import msgspec

from relay.upstream.client import UpstreamResponse
from relay.upstream.keypool import UpstreamKey
from relay.upstream.providers.anthropic_translate import messages_request_to_chat
from relay.upstream.providers.base import CHAT_PATH, MESSAGES_PATH, Provider, with_model
from relay.upstream.providers.translated import CHAT_TO_MESSAGES, TranslatedResponse
from relay.upstream.wire_anthropic import MessagesRequest
from relay.upstream.wire_openai import ChatRequest, encode

__all__ = ["OpenAIProvider"]

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


class OpenAIProvider(Provider):
    def url(self, path: str) -> str:
        # An Anthropic-dialect request is answered by this upstream's chat completions.
        upstream_path = CHAT_PATH if path == MESSAGES_PATH else path
        return self.config.base_url.rstrip("/") + upstream_path

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
        # Splice only when the body has no stream_options key at all: an explicit
        # ``"stream_options": null`` would otherwise follow ours and win (last key wins).
        if upstream_model == request.model and b'"stream_options"' not in body:
            start = body.index(b"{") + 1
            return body[:start] + _INCLUDE_USAGE + body[start:]
        payload: dict[str, Any] = msgspec.json.decode(body)
        payload["model"] = upstream_model
        if wants_usage_injected:
            options = payload.get("stream_options") or {}
            payload["stream_options"] = {**options, "include_usage": True}
        return encode(payload)

    def embedding_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        return with_model(body, public_model, upstream_model)

    def messages_body(self, body: bytes, request: MessagesRequest, upstream_model: str) -> bytes:
        """An Anthropic Messages request, translated to chat completions (usage asked for)."""
        return encode(messages_request_to_chat(msgspec.json.decode(body), upstream_model))

    def adapt_response(self, path: str, response: UpstreamResponse) -> UpstreamResponse:
        if path == MESSAGES_PATH:
            return TranslatedResponse(response, CHAT_TO_MESSAGES)
        return response
