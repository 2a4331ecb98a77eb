"""The OpenAI wire fields relay reads, as small msgspec Structs.

relay decodes only what it needs (model, stream flags, limits, usage) and passes the
rest of a body through untouched; decoders are built once and reused.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = [
    "MAX_REPORTED_TOKENS",
    "MAX_REQUEST_TOKENS",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "Usage",
    "UpstreamAnswer",
    "decode_chat_request",
    "decode_completion_request",
    "decode_embedding_request",
    "decode_upstream_answer",
    "encode",
    "is_usage_out_of_range",
]

# No model reads or writes anywhere near this many tokens in one request: an upstream
# reporting more (or fewer than 0) is broken, and its count must not reach the wallet.
MAX_REPORTED_TOKENS = 100_000_000
ReportedTokens = Annotated[int, Meta(ge=0, le=MAX_REPORTED_TOKENS)]
# max_tokens and friends above this are nonsense (relay clamps to the model's max anyway).
MAX_REQUEST_TOKENS = 2**31 - 1
RequestTokens = Annotated[int, Meta(ge=1, le=MAX_REQUEST_TOKENS)]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class Turn(msgspec.Struct):
    """One message: an object with a role (the rest passes through untouched).

    Checked here so that a message that is not an object (``null``, a number) is the
    client's 400, not a crash in a translation that expects one.
    """

    role: str = ""


class ChatRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[Turn], Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: RequestTokens | None = None
    max_completion_tokens: RequestTokens | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None

    @property
    def requested_max_output(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(msgspec.Struct):
    """Legacy ``/v1/completions``: a prompt (string, strings or token arrays) to continue."""

    model: str
    prompt: msgspec.Raw
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: RequestTokens | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None

    @property
    def max_completion_tokens(self) -> int | None:
        """Chat's name for the limit, which legacy completions lack (providers shape both)."""
        return None

    @property
    def requested_max_output(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: msgspec.Raw


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: ReportedTokens | None = 0
    # Not OpenAI's: Anthropic's cache writes, as relay's Anthropic adapter reports them.
    cache_write_tokens: ReportedTokens | None = 0


class Usage(msgspec.Struct):
    prompt_tokens: ReportedTokens | None = 0
    completion_tokens: ReportedTokens | None = 0
    # Not billed; bounded only so that an absurd total does not fail the whole decode.
    total_tokens: int | float | None = 0
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


def is_usage_out_of_range(exc: msgspec.ValidationError) -> bool:
    """Did decoding fail on a usage count (out of range, negative, not an integer)?

    An upstream answer that fails there is an upstream error worth recording as an
    anomaly (its usage cannot be billed); failing anywhere else it is merely malformed.
    """
    return "`$.usage" in str(exc) or "`$.message.usage" in str(exc)


decode_chat_request = msgspec.json.Decoder(ChatRequest).decode
decode_completion_request = msgspec.json.Decoder(CompletionRequest).decode
decode_embedding_request = msgspec.json.Decoder(EmbeddingRequest).decode
decode_upstream_answer = msgspec.json.Decoder(UpstreamAnswer).decode
encode = msgspec.json.Encoder().encode
