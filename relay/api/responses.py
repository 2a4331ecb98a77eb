"""``/v1/responses``: OpenAI's Responses API (create, stream, retrieve, delete).

request → auth → body → model → quote → admission (limits, hold) → route
        → natively to an upstream that speaks the Responses API (``responses_api``, on for
          kind openai), else translated to chat completions (and on to Messages for Claude)
        → answer or typed event stream → settle → usage record

Billed and logged exactly like chat: the same quote, admission and settlement steps
(``relay.api.flow``). Retrieve and delete go to the provider that created the response,
found through the caller's own usage rows, so one account never reads another's.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.api.flow import (
    TokenCounts,
    abandon,
    answer_with_metadata,
    bill_invalid_usage,
    close_unstarted_stream,
    dry_run_answer,
    is_dry_run,
    malformed_answer,
    read_answer,
    refuse,
    settle_tokens,
)
from relay.api.generation import read_generation
from relay.api.stream_pass import pass_stream
from relay.cluster.pg_usage import response_provider
from relay.errors import NotFound, RelayError, UpstreamError
from relay.http.responses import error_response
from relay.http.sse import EventStreamResponse
from relay.identity.auth import ANONYMOUS, Principal
from relay.money.estimate import CostQuote
from relay.state import RelayState, relay_state
from relay.upstream.client import UpstreamFailure
from relay.upstream.providers import Provider
from relay.upstream.providers.base import RESPONSES_PATH
from relay.upstream.routing import OpenedRoute, Route
from relay.upstream.stream_openai import CHARS_PER_TOKEN
from relay.upstream.stream_responses import ResponsesStreamTap
from relay.upstream.wire_openai import encode, is_usage_out_of_range
from relay.upstream.wire_responses import (
    ResponsesUsage,
    decode_responses_answer,
    decode_responses_request,
)

__all__ = ["RESPONSE_OWNER_SQL", "create_response", "delete_response", "retrieve_response"]


async def create_response(request: Request) -> Response | EventStreamResponse:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), "responses", ANONYMOUS)
    ticket: Ticket | None = None
    try:
        body, parsed, model, quote = await read_generation(
            request, state, exchange, decode_responses_request
        )
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)
        exchange.stream = bool(parsed.stream)

        def body_for(route: Route) -> bytes:
            return route.provider.responses_body(
                body, parsed, route.upstream_model, model.config.max_output_tokens
            )

        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # settled below, or released on any way out
            opened = await state.router.open_route(
                model, RESPONSES_PATH, body_for, stream=exchange.stream
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
        return refuse(state, exchange, ticket, exc)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise


def _counts(usage: ResponsesUsage | None) -> TokenCounts | None:
    if usage is None:
        return None
    return TokenCounts(
        prompt=usage.input_tokens or 0,
        completion=usage.output_tokens or 0,
        cached=usage.cached_tokens,
    )


async def _relay_answer(
    state: RelayState, exchange: Exchange, ticket: Ticket, opened: OpenedRoute, quote: CostQuote
) -> Response:
    raw = await read_answer(state, exchange, ticket, opened, "answer")
    if isinstance(raw, Response):
        return raw
    delivered = min(math.ceil(len(raw) / CHARS_PER_TOKEN), quote.max_output_tokens)
    try:
        answer = decode_responses_answer(raw)
    except msgspec.ValidationError as exc:
        if is_usage_out_of_range(exc):
            return bill_invalid_usage(state, exchange, ticket, quote, delivered)
        return malformed_answer(state, exchange, ticket)
    except msgspec.DecodeError:  # not JSON at all: never passed on as a billed 200
        return malformed_answer(state, exchange, ticket)
    exchange.upstream_id = answer.id
    settle_tokens(state, exchange, ticket, quote, _counts(answer.usage), delivered)
    return answer_with_metadata(raw, exchange)


def _relay_stream(
    state: RelayState, exchange: Exchange, ticket: Ticket, opened: OpenedRoute, quote: CostQuote
) -> AsyncIterator[bytes]:
    tap = ResponsesStreamTap()

    def settle() -> None:
        if ticket.finished:
            return
        exchange.upstream_id = tap.upstream_id
        counts = _counts(tap.usage)
        if counts is not None and not tap.done:
            counts = counts._replace(completion=tap.delivered_tokens_estimate())
            exchange.usage_estimated = True
        settle_tokens(state, exchange, ticket, quote, counts, tap.delivered_tokens_estimate())

    def ending(failure: RelayError | None) -> bytes:
        closing = tap.closing_event(exchange.metadata(), exchange.cost_micros)
        if failure is None:
            return closing
        error = {
            "type": "error",
            "code": failure.code,
            "message": failure.message,
            "param": None,
            "sequence_number": 0,
        }
        return closing + b"event: error\ndata: " + encode(error) + b"\n\n"

    return pass_stream(state, exchange, opened, tap, settle, ending)


# ----------------------------------------------------------------- retrieve and delete


# Searches the partial index usage_responses (schema entry 14): any client may ask for any id.
RESPONSE_OWNER_SQL = (
    "SELECT provider FROM usage WHERE account_id IS ? AND upstream_request_id = ?"
    " AND endpoint = 'responses' ORDER BY id DESC LIMIT 1"
)


async def _owning_provider(state: RelayState, principal: Principal, response_id: str) -> Provider:
    """The provider that created ``response_id`` for this caller's account (404 otherwise)."""
    name: str | None
    if state.cluster is not None:  # the usage rows live in PostgreSQL
        name = await response_provider(state.cluster.pool, principal.account_id, response_id)
    else:
        row = await state.db.fetchone(RESPONSE_OWNER_SQL, (principal.account_id, response_id))
        name = row["provider"] if row is not None else None
    provider = state.providers.get(name) if name is not None else None
    # Someone else's response answers exactly like a missing one: ids reveal nothing.
    if provider is None or not provider.speaks_responses:
        raise NotFound(f"No response {response_id!r}", code="response_not_found")
    return provider


async def _forward(request: Request, method: str) -> Response:
    state = relay_state(request)
    request_id = state.new_request_id()
    headers = {"x-relay-request-id": request_id, "x-request-id": request_id}
    try:
        principal = await state.auth.authenticate(request.headers)
        response_id = request.path_params["response_id"]
        provider = await _owning_provider(state, principal, response_id)
        status, body = await _send(provider, method, f"{RESPONSES_PATH}/{response_id}")
    except RelayError as exc:
        return error_response(exc, headers)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _send(provider: Provider, method: str, path: str) -> tuple[int, bytes]:
    key = provider.pool.acquire()
    if key is None:
        raise UpstreamError(f"provider {provider.name!r} has no usable key")
    try:
        response = await provider.client.send(
            method,
            provider.url(path),
            headers=provider.headers(key),
            body=None,
            timeouts=provider.timeouts,
        )
        try:
            return response.status, await response.read()
        finally:
            await response.aclose()
    except UpstreamFailure:
        raise UpstreamError(f"provider {provider.name!r} could not be reached") from None
    finally:
        provider.pool.release(key)


async def retrieve_response(request: Request) -> Response:
    return await _forward(request, "GET")


async def delete_response(request: Request) -> Response:
    return await _forward(request, "DELETE")
