"""What every provider adapter offers the router.

A request arrives in one client dialect, named by its path: ``CHAT_PATH`` (OpenAI chat
completions) or ``MESSAGES_PATH`` (Anthropic Messages). A provider shapes the body for
its upstream (``chat_body``, ``messages_body``, ...), maps the path to its own endpoint
(``url``) and, when the dialects differ, wraps the upstream's answer so that it reads in
the client's dialect (``adapt_response``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from relay.config import ProviderConfig
from relay.errors import InvalidRequest
from relay.upstream.client import Timeouts, UpstreamClient, UpstreamResponse
from relay.upstream.keypool import KeyPool, UpstreamKey
from relay.upstream.providers.responses_translate import responses_request_to_chat
from relay.upstream.wire_anthropic import MessagesRequest
from relay.upstream.wire_openai import (
    ChatRequest,
    CompletionRequest,
    decode_chat_request,
    encode,
)
from relay.upstream.wire_responses import ResponsesRequest

__all__ = [
    "CHAT_PATH",
    "COMPLETIONS_PATH",
    "IMAGE_EDITS_PATH",
    "IMAGES_PATH",
    "MESSAGES_PATH",
    "MODERATIONS_PATH",
    "OPENAI_ONLY_PATHS",
    "RESPONSES_PATH",
    "SPEECH_PATH",
    "TRANSCRIPTIONS_PATH",
    "TRANSLATIONS_PATH",
    "VIDEOS_PATH",
    "Provider",
    "with_model",
]

OPENAI_HOST = "api.openai.com"
CHAT_PATH = "/chat/completions"
MESSAGES_PATH = "/messages"
IMAGES_PATH = "/images/generations"
VIDEOS_PATH = "/videos"
RESPONSES_PATH = "/responses"
TRANSCRIPTIONS_PATH = "/audio/transcriptions"
TRANSLATIONS_PATH = "/audio/translations"
SPEECH_PATH = "/audio/speech"
IMAGE_EDITS_PATH = "/images/edits"
COMPLETIONS_PATH = "/completions"
MODERATIONS_PATH = "/moderations"
# OpenAI routes relay passes through as they are, with no translation to another dialect:
# only an OpenAI-dialect upstream serves them.
OPENAI_ONLY_PATHS = frozenset(
    {
        TRANSCRIPTIONS_PATH,
        TRANSLATIONS_PATH,
        SPEECH_PATH,
        IMAGE_EDITS_PATH,
        COMPLETIONS_PATH,
        MODERATIONS_PATH,
    }
)


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
            stream_s=config.stream_timeout_s,
        )

    @property
    def enabled(self) -> bool:
        # Not only "has keys": once the upstream rejected every key, routes skip it.
        return self.pool.has_usable_key

    def why_disabled(self) -> str:
        if self.pool.configured:
            return f"provider {self.name!r} has no usable API key: the upstream rejected all"
        if self.missing_env:
            names = ", ".join(self.missing_env)
            return f"provider {self.name!r} has no API key: set {names}"
        return f"provider {self.name!r} has no usable API key"

    def url(self, path: str) -> str:
        raise NotImplementedError

    def serves(self, path: str) -> bool:
        """Whether this upstream can answer the client's ``path`` (as is or translated)."""
        return path not in OPENAI_ONLY_PATHS

    def headers(self, key: UpstreamKey) -> dict[str, str]:
        raise NotImplementedError

    def chat_body(
        self,
        body: bytes,
        request: ChatRequest,
        upstream_model: str,
        max_output_tokens: int | None = None,
    ) -> bytes:
        """An OpenAI chat request shaped for this upstream (``max_tokens`` clamped)."""
        raise NotImplementedError

    def embedding_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        raise NotImplementedError

    def completion_body(
        self,
        body: bytes,
        request: CompletionRequest,
        upstream_model: str,
        max_output_tokens: int | None = None,
    ) -> bytes:
        """A legacy completions request, shaped like chat (only OpenAI dialects serve it)."""
        raise self.unsupported("POST /v1/completions")

    @property
    def speaks_responses(self) -> bool:
        """The upstream serves the Responses API itself: ``responses_api`` when set, else
        only OpenAI's own API (most OpenAI-compatible hosts serve chat completions only)."""
        option = self.config.responses_api
        if option is not None:
            return option
        return self.kind == "openai" and urlsplit(self.config.base_url).hostname == OPENAI_HOST

    def responses_body(
        self,
        body: bytes,
        request: ResponsesRequest,
        upstream_model: str,
        max_output_tokens: int | None = None,
    ) -> bytes:
        """A Responses API request: as is (model renamed, output clamped) for an upstream
        that speaks it, else translated to chat completions and shaped like any chat."""
        if self.speaks_responses:
            changes: dict[str, Any] = {}
            if upstream_model != request.model:
                changes["model"] = upstream_model
            asked = request.max_output_tokens
            if max_output_tokens is not None and asked is not None and asked > max_output_tokens:
                changes["max_output_tokens"] = max_output_tokens
            if not changes:
                return body
            payload: dict[str, Any] = msgspec.json.decode(body)
            payload.update(changes)
            return encode(payload)
        chat = encode(responses_request_to_chat(msgspec.json.decode(body), upstream_model))
        return self.chat_body(chat, decode_chat_request(chat), upstream_model, max_output_tokens)

    def messages_body(self, body: bytes, request: MessagesRequest, upstream_model: str) -> bytes:
        """An Anthropic Messages request, shaped for this upstream."""
        raise self.unsupported("the Messages API")

    def image_body(self, body: bytes, public_model: str, upstream_model: str) -> bytes:
        """An OpenAI image generation request, shaped for this upstream."""
        return with_model(body, public_model, upstream_model)

    def video_body(self, payload: dict[str, Any], upstream_model: str) -> bytes:
        """An OpenAI-style video job creation request, shaped for this upstream."""
        return encode({**payload, "model": upstream_model})

    def forwarded_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        """The client's headers this upstream should see (none unless a dialect needs some)."""
        return {}

    def adapt_response(
        self, path: str, response: UpstreamResponse, sent: bytes = b""
    ) -> UpstreamResponse:
        """The upstream's response as the client of ``path`` expects to read it.

        ``sent`` is the body that went upstream (a translated stream estimates its prompt
        from it before the upstream reports usage)."""
        return response

    def unsupported(self, what: str) -> InvalidRequest:
        return InvalidRequest(f"provider {self.name!r} ({self.kind}) does not offer {what}")

    async def aclose(self) -> None:
        await self.client.aclose()


def with_model(body: bytes, public_model: str, upstream_model: str) -> bytes:
    """``body`` with its ``model`` set to the upstream's name (unchanged when they agree)."""
    if upstream_model == public_model:
        return body
    payload: dict[str, Any] = msgspec.json.decode(body)
    payload["model"] = upstream_model
    return encode(payload)
