"""``POST /v1/messages``: Anthropic's Messages API, for Claude clients and the anthropic SDK.

request → auth (bearer or x-api-key) → body → model → quote → admission (limits, hold)
        → route (natively to Anthropic, translated to OpenAI-compatible upstreams)
        → answer or stream → settle (cache reads and writes priced) → usage record

Answers are in Anthropic's shape whatever the upstream (providers translate); relay adds
``metadata`` to the message, and to the stream's final ``message_stop`` event. Errors keep
relay's OpenAI shape with Anthropic's ``"type": "error"`` added, so both kinds of client
read them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.api.flow import (
    USAGE_INVALID,
    TokenCounts,
    abandon,
    answer_with_metadata,
    bill_invalid_usage,
    close_unstarted_stream,
    dry_run_answer,
    is_dry_run,
    malformed_answer,
    model_for,
    read_answer,
    refuse,
    settle_tokens,
)
from relay.api.generation import read_generation
from relay.api.stream_pass import pass_stream
from relay.errors import RelayError, UpstreamOverloaded, UpstreamRejected
from relay.http.responses import decode_or_400, error_response, json_response, read_body
from relay.http.sse import EventStreamResponse
from relay.identity.auth import ANONYMOUS
from relay.money.estimate import CostQuote, estimate_prompt_tokens
from relay.state import RelayState, relay_state
from relay.upstream.providers.anthropic_stream import sse_event
from relay.upstream.providers.base import MESSAGES_PATH
from relay.upstream.routing import OpenedRoute, Route
from relay.upstream.stream_anthropic import MessagesStreamTap
from relay.upstream.stream_openai import CHARS_PER_TOKEN
from relay.upstream.wire_anthropic import (
    MessagesUsage,
    decode_messages_answer,
    decode_messages_request,
)
from relay.upstream.wire_openai import encode, is_usage_out_of_range

__all__ = ["anthropic_error_response", "count_tokens", "messages"]

log = logging.getLogger("relay.api")


class CountTokensRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[msgspec.Raw], Meta(min_length=1)]


decode_count_tokens_request = msgspec.json.Decoder(CountTokensRequest).decode


def anthropic_error_response(exc: RelayError, headers: Mapping[str, str]) -> Response:
    """relay's error body with Anthropic's top-level ``"type": "error"`` added."""
    if isinstance(exc, UpstreamRejected) and exc.upstream_body:
        return error_response(exc, headers)  # the upstream's own error, in Anthropic's shape
    if isinstance(exc, UpstreamOverloaded):  # Anthropic clients know 529 and retry it
        error = {"type": "overloaded_error", "message": exc.message}
        return Response(
            encode({"type": "error", "error": error}),
            status_code=529,
            headers={**exc.headers(), **headers},
            media_type="application/json",
        )
    return Response(
        b'{"type":"error",' + exc.body()[1:],
        status_code=exc.status,
        headers={**exc.headers(), **headers},
        media_type="application/json",
    )


async def messages(request: Request) -> Response | EventStreamResponse:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), "messages", ANONYMOUS)
    ticket: Ticket | None = None
    try:
        body, parsed, model, quote = await read_generation(
            request, state, exchange, decode_messages_request, allow_x_api_key=True
        )
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)
        exchange.stream = bool(parsed.stream)

        def body_for(route: Route) -> bytes:
            return route.provider.messages_body(body, parsed, route.upstream_model)

        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # settled below, or released on any way out
            opened = await state.router.open_route(
                model,
                MESSAGES_PATH,
                body_for,
                stream=exchange.stream,
                client_headers=request.headers,
            )
            exchange.route = opened.route
            if exchange.stream:
                stream = _relay_stream(state, exchange, ticket.hand_over(), opened, quote)
                return EventStreamResponse(
                    stream,
                    exchange.id_headers(),
                    on_close=close_unstarted_stream(state, exchange, ticket, opened),
                )
            answer = await _relay_answer(state, exchange, ticket, opened, quote)
            if state.admitter is not None:  # cluster: the 200 waits for its commit
                await state.admitter.committed()
            return answer
    except RelayError as exc:
        return refuse(state, exchange, ticket, exc, anthropic_error_response)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise


def _counts(usage: MessagesUsage | None) -> TokenCounts | None:
    if usage is None:
        return None
    return TokenCounts(
        prompt=usage.prompt_tokens,
        completion=usage.output_tokens or 0,
        cached=usage.cache_read,
        cache_write=usage.cache_write,
    )


async def _relay_answer(
    state: RelayState, exchange: Exchange, ticket: Ticket, opened: OpenedRoute, quote: CostQuote
) -> Response:
    raw = await read_answer(state, exchange, ticket, opened, "answer", anthropic_error_response)
    if isinstance(raw, Response):
        return raw
    delivered = min(math.ceil(len(raw) / CHARS_PER_TOKEN), quote.max_output_tokens)
    try:
        answer = decode_messages_answer(raw)
    except msgspec.ValidationError as exc:
        if is_usage_out_of_range(exc):
            return bill_invalid_usage(
                state, exchange, ticket, quote, delivered, anthropic_error_response
            )
        return malformed_answer(state, exchange, ticket, "answer", anthropic_error_response)
    except msgspec.DecodeError:  # not JSON at all: never passed on as a billed 200
        return malformed_answer(state, exchange, ticket, "answer", anthropic_error_response)
    exchange.upstream_id = answer.id
    settle_tokens(state, exchange, ticket, quote, _counts(answer.usage), delivered)
    return answer_with_metadata(raw, exchange)


def _relay_stream(
    state: RelayState, exchange: Exchange, ticket: Ticket, opened: OpenedRoute, quote: CostQuote
) -> AsyncIterator[bytes]:
    tap = MessagesStreamTap()

    def settle() -> None:
        _settle_stream(state, exchange, ticket, quote, tap)

    def ending(failure: RelayError | None) -> bytes:
        if failure is None:
            return tap.closing_event(exchange.metadata(), exchange.cost_micros)
        error = {"type": failure.type, "message": failure.message}
        return tap.release_held() + sse_event(
            "error", {"type": "error", "error": error, "metadata": exchange.metadata()}
        )

    return pass_stream(state, exchange, opened, tap, settle, ending)


def _settle_stream(
    state: RelayState, exchange: Exchange, ticket: Ticket, quote: CostQuote, tap: MessagesStreamTap
) -> None:
    if ticket.finished:
        if tap.late_usage:  # the bill was final at message_stop: an upstream anomaly
            log.warning(
                "request %s: upstream reported usage after message_stop; not billed",
                exchange.request_id,
            )
            tap.late_usage = False
        return
    exchange.upstream_id = tap.upstream_id
    if tap.usage_invalid:  # its usage never reaches the wallet: relay's estimate instead
        exchange.status, exchange.error_code = 502, USAGE_INVALID
    counts = _counts(tap.usage)
    if counts is not None and not tap.done:
        # Cut short: message_start told the input, but the output total never came.
        delivered = max(counts.completion, tap.delivered_tokens_estimate())
        counts = counts._replace(completion=delivered)
        exchange.usage_estimated = True
    settle_tokens(state, exchange, ticket, quote, counts, tap.delivered_tokens_estimate())


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: relay's offline estimate (no upstream call).

    Claude clients ask this before sending long prompts. relay answers with the same
    prompt estimate its holds use, which errs on the high side; nothing is billed.
    """
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), "messages", ANONYMOUS)
    try:
        exchange.principal = await state.auth.authenticate(request.headers, allow_x_api_key=True)
        body = await read_body(request, state.config.server.max_body_bytes)
        parsed: CountTokensRequest = decode_or_400(decode_count_tokens_request, body)
        model_for(state, exchange, parsed.model, "chat")
    except RelayError as exc:
        return anthropic_error_response(exc, exchange.headers())
    return json_response({"input_tokens": estimate_prompt_tokens(body)})
