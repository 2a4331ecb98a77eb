"""The OpenAI Responses API fields relay reads, as small msgspec Structs.

Like ``relay.upstream.wire_openai`` for chat completions: relay decodes only what the
request flow needs (model, stream flag, output limit, usage, id) and passes the rest on.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from relay.upstream.wire_openai import ReportedTokens

__all__ = [
    "ResponsesAnswer",
    "ResponsesRequest",
    "ResponsesUsage",
    "decode_responses_answer",
    "decode_responses_request",
]


class ResponsesRequest(msgspec.Struct):
    model: str
    input: msgspec.Raw = msgspec.Raw(b'""')
    stream: bool | None = False
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    previous_response_id: str | None = None

    @property
    def requested_max_output(self) -> int | None:
        return self.max_output_tokens


class _InputDetails(msgspec.Struct):
    cached_tokens: ReportedTokens | None = 0


class _OutputDetails(msgspec.Struct):
    reasoning_tokens: ReportedTokens | None = 0


class ResponsesUsage(msgspec.Struct):
    """Responses usage: ``input_tokens`` includes the cached ones (as OpenAI chat's prompt)."""

    input_tokens: ReportedTokens | None = 0
    output_tokens: ReportedTokens | None = 0
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None

    @property
    def cached_tokens(self) -> int:
        details = self.input_tokens_details
        return (details.cached_tokens or 0) if details is not None else 0


class ResponsesAnswer(msgspec.Struct):
    """What relay reads of a response object (an answer, or one inside a stream event)."""

    id: str | None = None
    usage: ResponsesUsage | None = None


decode_responses_request = msgspec.json.Decoder(ResponsesRequest).decode
decode_responses_answer = msgspec.json.Decoder(ResponsesAnswer).decode
