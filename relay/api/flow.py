"""Steps of the request flow shared by every data-plane handler (chat, Messages, images,
videos): model check, dry run, refusal, reading an answer, passing a stream, settlement.

Public so that each endpoint module composes its own flow from them; ``relay.api.chat`` is
the reference composition. How the paths end a request exactly once:
docs/architecture.md §2.2.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import Response

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.errors import (
    InvalidRequest,
    RelayError,
    StorageUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from relay.http.responses import JSONAnswer, error_response, json_response
from relay.metrics.traces import PhaseTimes
from relay.money.estimate import CostQuote
from relay.money.pricing import token_cost_micros
from relay.state import RelayState
from relay.upstream.client import UpstreamFailure, UpstreamTimedOut, UpstreamTooLarge
from relay.upstream.relay_fields import with_relay_fields
from relay.upstream.routing import Model, OpenedRoute
from relay.usage.log import UsageRecord

__all__ = [
    "CLIENT_CLOSED",
    "USAGE_INVALID",
    "ErrorRenderer",
    "TokenCounts",
    "abandon",
    "bill_invalid_usage",
    "close_unstarted_stream",
    "dry_run_answer",
    "is_dry_run",
    "answer_with_metadata",
    "mark_abandoned",
    "malformed_answer",
    "read_answer",
    "finished_record",
    "model_for",
    "refuse",
    "release",
    "settle_cost",
    "settle_tokens",
    "upstream_broke_off",
]

log = logging.getLogger("relay.api")
# How long relay reads an upstream stream past its final event before closing it.
CLIENT_CLOSED = 499  # nginx's code for "client closed the request", kept in usage rows
# The usage row's error_code when an upstream reported usage outside sane bounds.
USAGE_INVALID = "upstream_usage_invalid"

ErrorRenderer = Callable[[RelayError, Mapping[str, str]], Response]


class TokenCounts(NamedTuple):
    """Measured tokens in relay's convention: ``prompt`` includes cached and cache writes."""

    prompt: int
    completion: int
    cached: int = 0
    cache_write: int = 0


def model_for(state: RelayState, exchange: Exchange, name: str, kind: str) -> Model:
    model = state.router.model(name)
    exchange.model = model
    if model.config.kind != kind:
        raise InvalidRequest(
            f"The model {name!r} is a {model.config.kind} model, not a {kind} model",
            param="model",
        )
    state.gate.check_model(exchange.principal, model, exchange.endpoint)
    return model


# Parsed strictly: a typo such as ``dryRun=yes`` must not fall through to a billed call.
_DRY_RUN_VALUES = {"true": True, "1": True, "false": False, "0": False}


def is_dry_run(request: Request) -> bool:
    """``?dryRun=true|1|false|0`` (any case); any other value is a 400, never a real call."""
    if not request.scope.get("query_string"):  # the usual request: no query to parse
        return False
    values = request.query_params.getlist("dryRun")
    if not values:
        return False
    parsed = {_DRY_RUN_VALUES.get(value.lower()) for value in values}
    if None in parsed or len(parsed) != 1:
        raise InvalidRequest(
            "dryRun must be one of true, false, 1 or 0 (given once)", param="dryRun"
        )
    return parsed.pop() is True


async def dry_run_answer(state: RelayState, exchange: Exchange, quote: CostQuote) -> Response:
    """``?dryRun=true``: the hold this request would place, from the gate or the admitter."""
    if state.admitter is None:
        body = state.gate.dry_run(exchange, quote)
    else:
        body = await state.admitter.dry_run(exchange, quote)
    return json_response(body, headers=exchange.headers())


def mark_abandoned(state: RelayState, exchange: Exchange) -> None:
    """A stream cut short by relay's side: the client left, or shutdown's grace ran out."""
    if state.stopping():
        exchange.status, exchange.error_code = 503, "server_shutdown"
    else:
        exchange.status, exchange.error_code = CLIENT_CLOSED, "client_disconnected"


def release(ticket: Ticket | None) -> None:
    if ticket is not None:
        ticket.release()


def abandon(
    state: RelayState, exchange: Exchange, ticket: Ticket | None, exc: BaseException | None
) -> None:
    """The request ended by an exception after admission, before it settled: nothing billed.

    Runs on the ``BaseException`` way out of a handler. A cancelled task is the client
    leaving while relay waited (or shutdown's grace running out): the row says 499
    ``client_disconnected`` (or 503 ``server_shutdown``). Anything else is relay's own
    failure (500 ``internal_error``). The hold and the slot are released (the ticket's
    block has usually done so already) and the row records a cost of 0: nothing reached
    the client. A settled request already has its row.
    """
    if ticket is None or ticket.settled:
        return
    ticket.release()
    if exc is None or isinstance(exc, asyncio.CancelledError):
        mark_abandoned(state, exchange)
    else:
        exchange.status, exchange.error_code = 500, "internal_error"
    state.usage.record(finished_record(state, exchange))


def close_unstarted_stream(
    state: RelayState, exchange: Exchange, ticket: Ticket, opened: OpenedRoute
) -> Callable[[], Awaitable[None]]:
    """The stream response's last resort, for a body that never ran (so never settled)."""

    async def close() -> None:
        await opened.close()
        if not ticket.finished:  # the body never ran: nothing else ended the ticket
            abandon(state, exchange, ticket, None)

    return close


def finished_record(state: RelayState, exchange: Exchange) -> UsageRecord:
    """The request's usage record, handed to the tracer too when traces are configured."""
    record = exchange.usage_record()
    tracer = state.tracer
    if tracer is not None:
        times = PhaseTimes(
            exchange.started, exchange.admitted_at, exchange.settling_at, time.perf_counter()
        )
        tracer.trace(record, times)
    return record


def refuse(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket | None,
    exc: RelayError,
    render: ErrorRenderer = error_response,
) -> Response:
    """An error before any upstream answer: nothing billed.

    It leaves a usage row once the caller is a known key (a 402, 403 or 429 belongs in that
    account's logs); a request that never authenticated has no account to log it under.
    """
    release(ticket)
    exchange.status = exc.status
    exchange.error_code = exc.code
    if isinstance(exc, StorageUnavailable):
        # Back-pressure: counted, written later as one row per key (relay.usage.refusals).
        _count_refusal(state, exchange, exc)
    elif ticket is not None or exchange.principal.key is not None:
        state.usage.record(finished_record(state, exchange))
    else:  # no account to log it under, but the metrics count every refusal (401s too)
        state.metrics.observe(finished_record(state, exchange))
    return render(exc, exchange.headers())


def _count_refusal(state: RelayState, exchange: Exchange, exc: RelayError) -> None:
    principal = exchange.principal
    state.refusals.count(
        account_id=principal.account_id,
        key_id=principal.key_id,
        endpoint=exchange.endpoint,
        model=exchange.model.name if exchange.model is not None else None,
        status=exc.status,
        code=exc.code,
    )


async def read_answer(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    opened: OpenedRoute,
    what: str = "answer",
    render: ErrorRenderer = error_response,
) -> bytes | Response:
    """The upstream's whole answer, or (when it broke off) the refusal to send instead.

    An answer over ``[server] max_upstream_body_mb`` is refused (502) as it arrives,
    never buffered whole.
    """
    try:
        raw = await opened.response.read(state.config.server.max_upstream_body_bytes)
        exchange.mark_first_byte()
    except UpstreamFailure as exc:
        return refuse(state, exchange, ticket, upstream_broke_off(exc, what), render)
    finally:
        await opened.close()
    return raw


def malformed_answer(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    what: str = "answer",
    render: ErrorRenderer = error_response,
) -> Response:
    """A 2xx whose body is not the JSON it must be: 502, nothing billed, never passed on."""
    log.warning("request %s: upstream sent a malformed %s", exchange.request_id, what)
    return refuse(
        state, exchange, ticket, UpstreamError(f"upstream sent a malformed {what}"), render
    )


def bill_invalid_usage(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    quote: CostQuote,
    delivered_tokens: int,
    render: ErrorRenderer = error_response,
) -> Response:
    """The upstream answered but reported usage out of bounds (negative, absurd): 502.

    Its numbers never reach the wallet. The request is settled at relay's own estimate
    (prompt estimate + the answer's size), which the wallet caps at the worst case, and
    recorded as an anomaly (``upstream_usage_invalid``) for the operator.
    """
    log.warning(
        "request %s: upstream %s reported usage out of bounds; billed relay's estimate",
        exchange.request_id,
        exchange.route.label if exchange.route else "?",
    )
    exchange.status, exchange.error_code = 502, USAGE_INVALID
    settle_tokens(state, exchange, ticket, quote, None, delivered_tokens)
    error = UpstreamError("upstream reported token usage out of range")
    return render(error, exchange.headers())


def answer_with_metadata(raw: bytes, exchange: Exchange) -> Response:
    """The upstream's JSON answer with relay's ``metadata`` and ``usage.cost`` added.

    An answer that is not a JSON object is passed on as is.
    """
    try:
        content = with_relay_fields(raw, exchange.metadata(), exchange.cost_micros)
    except ValueError:
        content = raw
    return JSONAnswer(content, exchange.raw_headers())


def upstream_broke_off(exc: UpstreamFailure, what: str) -> RelayError:
    if isinstance(exc, UpstreamTimedOut):
        return UpstreamTimeout(f"upstream timed out sending its {what}")
    if isinstance(exc, UpstreamTooLarge):
        return UpstreamError(f"upstream {what} is larger than relay accepts")
    return UpstreamError(f"upstream broke off its {what}")


def settle_tokens(
    state: RelayState,
    exchange: Exchange,
    ticket: Ticket,
    quote: CostQuote,
    counts: TokenCounts | None,
    delivered_tokens: int,
) -> None:
    """Price the tokens used and charge them; relay's own estimate when the upstream was silent."""
    if counts is None:
        counts = TokenCounts(quote.prompt_tokens, delivered_tokens)
        exchange.usage_estimated = True
    exchange.prompt_tokens = counts.prompt
    exchange.completion_tokens = counts.completion
    exchange.cached_tokens = counts.cached
    exchange.cache_write_tokens = counts.cache_write
    assert exchange.model is not None
    cost = token_cost_micros(
        exchange.model.price,
        prompt_tokens=counts.prompt,
        completion_tokens=counts.completion,
        cached_tokens=counts.cached,
        cache_write_tokens=counts.cache_write,
        multiplier=state.gate.multiplier(exchange.principal),
    )
    settle_cost(state, exchange, ticket, cost, counts.prompt + counts.completion)


def settle_cost(
    state: RelayState, exchange: Exchange, ticket: Ticket, cost_micros: int, measured_tokens: int
) -> None:
    """Charge ``cost_micros`` and queue the usage row together with its charge."""
    exchange.settling_at = time.perf_counter()
    exchange.cost_micros = ticket.settle(
        cost_micros,
        measured_tokens,
        request_id=exchange.request_id,
        estimated=exchange.usage_estimated,
    )
    state.usage.record(finished_record(state, exchange), ticket.charge)
    account_id = exchange.principal.account_id
    if state.auto_topup is not None and account_id is not None and ticket.charged_micros:
        state.auto_topup.check(account_id)  # schedules a refill when low; never waits
