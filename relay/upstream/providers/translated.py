"""An upstream response seen in the client's dialect.

When a client speaks one dialect (OpenAI chat, Anthropic Messages) and the route's
upstream another, the provider wraps the upstream's response in ``TranslatedResponse``:
the router and the API handlers then read answers, errors and streams exactly as if
the upstream spoke the client's dialect, so the request flow stays dialect-agnostic.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from relay.upstream.client import UpstreamResponse, UpstreamStreamBroken
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
            return raw  # not JSON: relay's own decode refuses it (502)
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


@contextlib.contextmanager
def _untranslatable(what: str) -> Iterator[None]:
    """A translator meeting JSON of the wrong shape (``"usage": true``) is the upstream's
    fault: an upstream failure (502), never relay's own 500."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        raise UpstreamStreamBroken(f"upstream {what} has an unexpected shape") from None


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

    async def read(self, max_bytes: int | None = None) -> bytes:
        raw = await self._inner.read(max_bytes)
        with _untranslatable("answer"):
            if self.status >= 400:
                return self._translation.error(raw)
            return self._translation.answer(raw)

    async def chunks(self) -> AsyncIterator[bytes]:
        translator = self._translation.stream(self._sent)
        async for chunk in self._inner.chunks():
            with _untranslatable("stream"):
                out = translator.feed(chunk)
            if out:
                yield out
        with _untranslatable("stream"):
            tail = translator.finish()
        if tail:
            yield tail

    async def aclose(self) -> None:
        await self._inner.aclose()
