"""The OpenAI dialect: any OpenAI-compatible host (OpenAI, DeepSeek, vLLM, ...)."""

from __future__ import annotations

from typing import Any

import msgspec

from relay.upstream.client import UpstreamResponse
from relay.upstream.keypool import UpstreamKey
from relay.upstream.providers.anthropic_translate import messages_request_to_chat
from relay.upstream.providers.base import (
    CHAT_PATH,
    MESSAGES_PATH,
    RESPONSES_PATH,
    Provider,
    with_model,
)
from relay.upstream.providers.translated import (
    CHAT_TO_MESSAGES,
    CHAT_TO_RESPONSES,
    TranslatedResponse,
)
from relay.upstream.wire_anthropic import MessagesRequest
from relay.upstream.wire_openai import ChatRequest, CompletionRequest, encode

__all__ = ["OpenAIProvider"]


class OpenAIProvider(Provider):
    def url(self, path: str) -> str:
        # An Anthropic-dialect request is answered by this upstream's chat completions.
        upstream_path = path
        if path == MESSAGES_PATH or (path == RESPONSES_PATH and not self.speaks_responses):
            upstream_path = CHAT_PATH
        return self.config.base_url.rstrip("/") + upstream_path

    def serves(self, path: str) -> bool:
        return True  # every OpenAI route, the pass-through ones included

    def headers(self, key: UpstreamKey) -> dict[str, str]:
        return {"authorization": f"Bearer {key.secret}", "content-type": "application/json"}

    def completion_body(
        self,
        body: bytes,
        request: CompletionRequest,
        upstream_model: str,
        max_output_tokens: int | None = None,
    ) -> bytes:
        return self.chat_body(body, request, upstream_model, max_output_tokens)

    def chat_body(
        self,
        body: bytes,
        request: ChatRequest | CompletionRequest,
        upstream_model: str,
        max_output_tokens: int | None = None,
    ) -> bytes:
        """The client's body as relay decided it: the upstream's model name, usage asked for
        on streams, ``max_tokens`` clamped to the model's maximum output.

        Whenever relay sets a field the body is decoded and re-encoded, never spliced: a
        duplicate or escaped key (``"stream\\u005foptions"``) decodes to the same one key
        as in ``ChatRequest`` (the last occurrence wins), and the re-encoded body holds it
        once, with relay's value. A body relay changes nothing in goes through as it came.
        """
        changes: dict[str, Any] = {}
        if upstream_model != request.model:
            changes["model"] = upstream_model
        if max_output_tokens is not None:
            for name in ("max_tokens", "max_completion_tokens"):
                asked = getattr(request, name)
                if asked is not None and asked > max_output_tokens:
                    changes[name] = max_output_tokens
        if request.stream:
            changes["stream_options"] = True  # merged below with the client's options
        if not changes:
            return body
        payload: dict[str, Any] = msgspec.json.decode(body)
        if changes.pop("stream_options", None):
            options = payload.get("stream_options")
            options = options if isinstance(options, dict) else {}
            payload["stream_options"] = {**options, "include_usage": True}
        payload.update(changes)
        return encode(payload)

    def embedding_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        return with_model(body, public_model, upstream_model)

    def messages_body(self, body: bytes, request: MessagesRequest, upstream_model: str) -> bytes:
        """An Anthropic Messages request, translated to chat completions (usage asked for)."""
        return encode(messages_request_to_chat(msgspec.json.decode(body), upstream_model))

    def adapt_response(
        self, path: str, response: UpstreamResponse, sent: bytes = b""
    ) -> UpstreamResponse:
        if path == MESSAGES_PATH:
            return TranslatedResponse(response, CHAT_TO_MESSAGES, sent)
        if path == RESPONSES_PATH and not self.speaks_responses:
            return TranslatedResponse(response, CHAT_TO_RESPONSES, sent)
        return response
