"""An upstream response seen in the client's dialect.

When a client speaks one dialect (OpenAI chat, Anthropic Messages) and the route's
upstream another, the provider wraps the upstream's response in ``TranslatedResponse``:
the router and the API handlers then read answers, errors and streams exactly as if
the upstream spoke the client's dialect, so the request flow stays dialect-agnostic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from relay.upstream.client import UpstreamResponse
from relay.upstream.providers.anthropic_answers import (
    anthropic_error,
    chat_answer_to_message,
    message_to_chat_answer,
    openai_error,
)
from relay.upstream.providers.anthropic_stream import ChatToMessagesStream, MessagesToChatStream
from relay.upstream.providers.responses_stream import ChatToResponsesStream
from relay.upstream.providers.responses_translate import chat_answer_to_response
from relay.upstream.wire_openai import encode

__all__ = [
    "CHAT_TO_MESSAGES",
    "CHAT_TO_RESPONSES",
    "MESSAGES_TO_CHAT",
    "StreamTranslator",
    "TranslatedResponse",
    "Translation",
]


class StreamTranslator(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """The translated bytes of every event completed by ``chunk``."""
        ...

    def finish(self) -> bytes:
        """What is left to send once the upstream's body ended."""
        ...


@dataclass(frozen=True, slots=True)
class Translation:
    answer: Callable[[bytes], bytes]
    error: Callable[[bytes], bytes]
    # Made with the body sent upstream (a translated stream estimates its prompt from it).
    stream: Callable[[bytes], StreamTranslator]


def _json_translator(
    translate: Callable[[dict[str, Any]], dict[str, Any]],
) -> Callable[[bytes], bytes]:
    def translate_body(raw: bytes) -> bytes:
        try:
            payload = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return raw  # not JSON: relay bills its estimate and passes it on as is
        return encode(translate(payload)) if isinstance(payload, dict) else raw

    return translate_body


# An Anthropic upstream answering an OpenAI-dialect client.
MESSAGES_TO_CHAT = Translation(
    _json_translator(message_to_chat_answer), openai_error, MessagesToChatStream
)
# An OpenAI-compatible upstream answering an Anthropic-dialect client.
CHAT_TO_MESSAGES = Translation(
    _json_translator(chat_answer_to_message), anthropic_error, ChatToMessagesStream
)


# An OpenAI chat answer (from the upstream, or translated from Anthropic's) read by a
# Responses API client; chat errors already have the OpenAI shape Responses clients read.
CHAT_TO_RESPONSES = Translation(
    _json_translator(chat_answer_to_response), lambda raw: raw, ChatToResponsesStream
)


class TranslatedResponse:
    """Implements ``UpstreamResponse`` over another one, translating what it reads."""

    __slots__ = ("_inner", "_translation", "_sent", "status", "headers")

    def __init__(self, inner: UpstreamResponse, translation: Translation, sent: bytes = b""):
        self._inner = inner
        self._translation = translation
        self._sent = sent
        self.status = inner.status
        self.headers: Mapping[str, str] = inner.headers

    async def read(self) -> bytes:
        raw = await self._inner.read()
        if self.status >= 400:
            return self._translation.error(raw)
        return self._translation.answer(raw)

    async def chunks(self) -> AsyncIterator[bytes]:
        translator = self._translation.stream(self._sent)
        async for chunk in self._inner.chunks():
            out = translator.feed(chunk)
            if out:
                yield out
        tail = translator.finish()
        if tail:
            yield tail

    async def aclose(self) -> None:
        await self._inner.aclose()
