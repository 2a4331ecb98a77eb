"""The Anthropic dialect: Anthropic's Messages API (``base_url = "https://api.anthropic.com/v1"``).

``/v1/messages`` passes through natively (the body keeps every field the client sent;
only ``model`` is renamed for the route). An OpenAI chat request routed here is
translated to a Messages request, and its answer, errors and stream back to the OpenAI
shape (``relay.upstream.providers.anthropic_translate`` / ``anthropic_stream``). The upstream is
authenticated with ``x-api-key``; the client's ``anthropic-version`` and
``anthropic-beta`` headers are forwarded, with a default version when it sent none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from relay.upstream.client import UpstreamResponse
from relay.upstream.keypool import UpstreamKey
from relay.upstream.providers.anthropic_translate import chat_request_to_messages
from relay.upstream.providers.base import (
    CHAT_PATH,
    MESSAGES_PATH,
    RESPONSES_PATH,
    Provider,
    with_model,
)
from relay.upstream.providers.translated import (
    CHAT_TO_RESPONSES,
    MESSAGES_TO_CHAT,
    TranslatedResponse,
)
from relay.upstream.wire_anthropic import MessagesRequest
from relay.upstream.wire_openai import ChatRequest, encode

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
_FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")


class AnthropicProvider(Provider):
    def url(self, path: str) -> str:
        upstream_path = MESSAGES_PATH if path in (CHAT_PATH, RESPONSES_PATH) else path
        return self.config.base_url.rstrip("/") + upstream_path

    def headers(self, key: UpstreamKey) -> dict[str, str]:
        return {
            "x-api-key": key.secret,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }

    def forwarded_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        return {
            name: client_headers[name] for name in _FORWARDED_HEADERS if client_headers.get(name)
        }

    def chat_body(
        self,
        body: bytes,
        request: ChatRequest,
        upstream_model: str,
        max_output_tokens: int | None = None,
    ) -> bytes:
        translated = chat_request_to_messages(msgspec.json.decode(body), upstream_model)
        if max_output_tokens is not None:
            translated["max_tokens"] = min(translated["max_tokens"], max_output_tokens)
        return encode(translated)

    def messages_body(self, body: bytes, request: MessagesRequest, upstream_model: str) -> bytes:
        return with_model(body, request.model, upstream_model)

    def embedding_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        raise self.unsupported("embeddings")

    def image_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        raise self.unsupported("image generation")

    def video_body(self, payload: dict[str, Any], upstream_model: str) -> bytes:
        raise self.unsupported("video generation")

    def adapt_response(
        self, path: str, response: UpstreamResponse, sent: bytes = b""
    ) -> UpstreamResponse:
        if path == CHAT_PATH:
            return TranslatedResponse(response, MESSAGES_TO_CHAT, sent)
        if path == RESPONSES_PATH:  # Messages → chat → Responses
            chat = TranslatedResponse(response, MESSAGES_TO_CHAT, sent)
            return TranslatedResponse(chat, CHAT_TO_RESPONSES, sent)
        return response
