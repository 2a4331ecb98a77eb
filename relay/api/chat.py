"""Token-billed routes: chat completions and legacy completions, embeddings and
moderations. The request flow, composed in one place:

request → auth → body → model → quote → admission (limits, wallet hold)
        → route → upstream → answer or stream → settle → usage record
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import msgspec
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
from relay.api.generation import Generation, read_generation
from relay.api.stream_pass import pass_stream
from relay.errors import RelayError
from relay.http.responses import decode_or_400, read_body
from relay.http.sse import EventStreamResponse
from relay.identity.auth import ANONYMOUS
from relay.money.estimate import CostQuote, quote_embedding
from relay.state import RelayState, relay_state
from relay.upstream.providers.base import CHAT_PATH, COMPLETIONS_PATH, MODERATIONS_PATH
from relay.upstream.routing import OpenedRoute, Route
from relay.upstream.stream_openai import CHARS_PER_TOKEN, StreamTap
from relay.upstream.wire_openai import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
    Usage,
    decode_chat_request,
    decode_completion_request,
    decode_embedding_request,
    decode_upstream_answer,
    is_usage_out_of_range,
)

__all__ = ["chat_completions", "completions", "embeddings", "moderations"]


class _Generation(Generation, Protocol):
    """What the flow reads of a chat or legacy completions request."""

    stream_options: StreamOptions | None


G = TypeVar("G", bound=_Generation)


def _chat_shape(route: Route, body: bytes, chat: ChatRequest, max_output: int | None) -> bytes:
    return route.provider.chat_body(body, chat, route.upstream_model, max_output)


def _completion_shape(
    route: Route, body: bytes, legacy: CompletionRequest, max_output: int | None
) -> bytes:
    return route.provider.completion_body(body, legacy, route.upstream_model, max_output)


# The endpoints are plain functions handing back ``_generate``'s coroutine: no frame of
# their own in the request's await chain, which every resume of the task steps through.
# (They run only under ``CancelOnDisconnect``, which awaits what they return.)
def chat_completions(request: Request) -> Awaitable[Response | EventStreamResponse]:
    return _generate(request, "chat", CHAT_PATH, decode_chat_request, _chat_shape)


def completions(request: Request) -> Awaitable[Response | EventStreamResponse]:
    """Legacy ``/v1/completions``: passed through to OpenAI dialects, billed like chat."""
    return _generate(
        request, "completions", COMPLETIONS_PATH, decode_completion_request, _completion_shape
    )


async def _generate(
    request: Request,
    endpoint: str,
    path: str,
    decode: Callable[[bytes], G],
    shape: Callable[[Route, bytes, G, int | None], bytes],
) -> Response | EventStreamResponse:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), endpoint, ANONYMOUS)
    ticket: Ticket | None = None
    try:
        body, chat, model, quote = await read_generation(request, state, exchange, decode)
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)
        exchange.stream = bool(chat.stream)

        def body_for(route: Route) -> bytes:
            return shape(route, body, chat, model.config.max_output_tokens)

        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # settled below, or released on any way out
            opened = await state.router.open_route(model, path, body_for, stream=exchange.stream)
            exchange.route = opened.route
            if exchange.stream:
                wants_usage = bool(chat.stream_options and chat.stream_options.include_usage)
                stream = _relay_stream(
                    state, exchange, ticket.hand_over(), opened, quote, wants_usage
                )
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
        return refuse(state, exchange, ticket, exc)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise


def embeddings(request: Request) -> Awaitable[Response]:
    return _classify(request, "embeddings", "embedding", "/embeddings")


def moderations(request: Request) -> Awaitable[Response]:
    """Passed through to OpenAI dialects; priced at the model's token prices (often 0),
    from relay's prompt estimate since OpenAI reports no usage, and always logged."""
    return _classify(request, "moderations", "moderation", MODERATIONS_PATH)


async def _classify(request: Request, endpoint: str, kind: str, path: str) -> Response:
    """Input-only token routes: embeddings, moderations."""
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), endpoint, ANONYMOUS)
    ticket: Ticket | None = None
    try:
        exchange.principal = await state.auth.authenticate(request.headers)
        body = await read_body(request, state.config.server.max_body_bytes)
        embedding: EmbeddingRequest = decode_or_400(decode_embedding_request, body)
        model = model_for(state, exchange, embedding.model, kind)
        multiplier = state.gate.multiplier(exchange.principal)
        quote = quote_embedding(model.price, body, multiplier=multiplier)
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)

        def body_for(route: Route) -> bytes:
            return route.provider.embedding_body(body, embedding.model, route.upstream_model)

        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # settled below, or released on any way out
            opened = await state.router.open_route(model, path, body_for, stream=False)
            exchange.route = opened.route
            answer = await _relay_answer(state, exchange, ticket, opened, quote)
            if state.admitter is not None:  # cluster: the 200 waits for its commit
                await state.admitter.committed()
            return answer
    except RelayError as exc:
        return refuse(state, exchange, ticket, exc)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise


def _settle(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    quote: CostQuote,
    usage: Usage | None,
    delivered_tokens: int,
) -> None:
    counts = None
    if usage is not None:
        counts = TokenCounts(
            prompt=usage.prompt_tokens or 0,
            completion=usage.completion_tokens or 0,
            cached=usage.cached_tokens,
            cache_write=usage.cache_write_tokens,
        )
    settle_tokens(state, exchange, ticket, quote, counts, delivered_tokens)


async def _relay_answer(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    opened: OpenedRoute,
    quote: CostQuote,
) -> Response:
    raw = await read_answer(state, exchange, ticket, opened, "answer")
    if isinstance(raw, Response):
        return raw
    try:
        answer = decode_upstream_answer(raw)
    except msgspec.ValidationError as exc:
        if is_usage_out_of_range(exc):
            return bill_invalid_usage(state, exchange, ticket, quote, _tokens_in(raw, quote))
        return malformed_answer(state, exchange, ticket)
    except msgspec.DecodeError:  # not JSON at all: never passed on as a billed 200
        return malformed_answer(state, exchange, ticket)
    exchange.upstream_id = answer.id
    _settle(state, exchange, ticket, quote, answer.usage, _tokens_in(raw, quote))
    return answer_with_metadata(raw, exchange)


def _tokens_in(raw: bytes, quote: CostQuote) -> int:
    """Estimated output tokens of an answer that reported no usage (clamped to the quote)."""
    estimate = math.ceil(len(raw) / CHARS_PER_TOKEN)
    return min(estimate, quote.max_output_tokens) if quote.max_output_tokens else 0


def _relay_stream(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    opened: OpenedRoute,
    quote: CostQuote,
    client_wants_usage: bool,
) -> AsyncIterator[bytes]:
    tap = StreamTap(client_wants_usage)

    def settle() -> None:
        _settle_stream(state, exchange, ticket, quote, tap)

    def ending(failure: RelayError | None) -> bytes:
        return tap.closing_events(
            exchange.metadata(),
            exchange.usage_view(),
            exchange.cost_micros,
            failure.body() if failure is not None else b"",
        )

    return pass_stream(state, exchange, opened, tap, settle, ending)


def _settle_stream(
    state: RelayState, exchange: Exchange, ticket: Ticket, quote: CostQuote, tap: StreamTap
) -> None:
    if ticket.finished:
        return
    exchange.upstream_id = tap.upstream_id
    if tap.usage_invalid:  # its usage never reaches the wallet: relay's estimate instead
        exchange.status, exchange.error_code = 502, USAGE_INVALID
    _settle(state, exchange, ticket, quote, tap.usage, tap.delivered_tokens_estimate())
