"""The OpenAI wire fields relay reads, as small msgspec Structs.

relay decodes only what it needs (model, stream flags, limits, usage) and passes the
rest of a body through untouched; decoders are built once and reused.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = [
    "ChatRequest",
    "EmbeddingRequest",
    "Usage",
    "UpstreamAnswer",
    "decode_chat_request",
    "decode_embedding_request",
    "decode_upstream_answer",
    "encode",
]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[msgspec.Raw], Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None

    @property
    def requested_max_output(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: msgspec.Raw


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int | None = 0
    # Not OpenAI's: Anthropic's cache writes, as relay's Anthropic adapter reports them.
    cache_write_tokens: int | None = 0


class Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details is not None else 0

    @property
    def cache_write_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cache_write_tokens or 0) if details is not None else 0


class UpstreamAnswer(msgspec.Struct):
    """What relay reads of an upstream's JSON answer or stream chunk."""

    id: str | None = None
    usage: Usage | None = None


decode_chat_request = msgspec.json.Decoder(ChatRequest).decode
decode_embedding_request = msgspec.json.Decoder(EmbeddingRequest).decode
decode_upstream_answer = msgspec.json.Decoder(UpstreamAnswer).decode
encode = msgspec.json.Encoder().encode
