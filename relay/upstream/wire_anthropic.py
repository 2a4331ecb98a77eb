"""The Anthropic Messages wire fields relay reads, as small msgspec Structs.

Like ``relay.upstream.wire_openai`` for the OpenAI dialect: relay decodes only what the request flow
needs (model, limits, stream flag, usage) and passes the rest of a body through.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from relay.upstream.wire_openai import ReportedTokens, RequestTokens, Turn

__all__ = [
    "MessagesAnswer",
    "MessagesRequest",
    "MessagesUsage",
    "decode_messages_answer",
    "decode_messages_request",
]


class MessagesRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[Turn], Meta(min_length=1)]
    max_tokens: RequestTokens
    stream: bool | None = False

    @property
    def requested_max_output(self) -> int | None:
        return self.max_tokens


class MessagesUsage(msgspec.Struct):
    """Anthropic usage: ``input_tokens`` excludes cache reads and cache writes."""

    input_tokens: ReportedTokens | None = None
    output_tokens: ReportedTokens | None = None
    cache_read_input_tokens: ReportedTokens | None = None
    cache_creation_input_tokens: ReportedTokens | None = None

    def merge(self, later: MessagesUsage) -> MessagesUsage:
        """``later``'s counts where it has them (message_delta totals are cumulative)."""
        return MessagesUsage(
            input_tokens=_later(self.input_tokens, later.input_tokens),
            output_tokens=_later(self.output_tokens, later.output_tokens),
            cache_read_input_tokens=_later(
                self.cache_read_input_tokens, later.cache_read_input_tokens
            ),
            cache_creation_input_tokens=_later(
                self.cache_creation_input_tokens, later.cache_creation_input_tokens
            ),
        )

    @property
    def cache_read(self) -> int:
        return self.cache_read_input_tokens or 0

    @property
    def cache_write(self) -> int:
        return self.cache_creation_input_tokens or 0

    @property
    def prompt_tokens(self) -> int:
        """relay's convention: every input token, cached and cache-write ones included."""
        return (self.input_tokens or 0) + self.cache_read + self.cache_write


def _later(earlier: int | None, later: int | None) -> int | None:
    return earlier if later is None else later


class MessagesAnswer(msgspec.Struct):
    """What relay reads of a message, or of a streamed event."""

    id: str | None = None
    usage: MessagesUsage | None = None


decode_messages_request = msgspec.json.Decoder(MessagesRequest).decode
decode_messages_answer = msgspec.json.Decoder(MessagesAnswer).decode
