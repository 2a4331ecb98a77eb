"""The start every text-generation route shares (chat and legacy completions, Responses,
Messages): who is calling, the body, the model and the quote, before the dry run and
admission. Each route then composes the rest of its flow itself (relay.api.chat).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, Protocol, TypeVar

from starlette.requests import Request

from relay.admission.exchange import Exchange
from relay.api.flow import model_for
from relay.http.responses import decode_or_400, read_body
from relay.money.estimate import CostQuote, quote_chat
from relay.state import RelayState
from relay.upstream.routing import Model

__all__ = ["Generation", "QuotedGeneration", "read_generation"]


class Generation(Protocol):
    """What the shared start reads of a decoded generation request."""

    model: str
    stream: bool | None

    @property
    def requested_max_output(self) -> int | None: ...


P = TypeVar("P", bound=Generation)


class QuotedGeneration(NamedTuple, Generic[P]):
    body: bytes
    parsed: P
    model: Model
    quote: CostQuote


async def read_generation(
    request: Request,
    state: RelayState,
    exchange: Exchange,
    decode: Callable[[bytes], P],
    *,
    allow_x_api_key: bool = False,
) -> QuotedGeneration[P]:
    """Authenticate, read and decode the body, check the model and quote the worst case, in
    that order: a request is refused for its key before its body is read."""
    exchange.principal = await state.auth.authenticate(
        request.headers, allow_x_api_key=allow_x_api_key
    )
    body = await read_body(request, state.config.server.max_body_bytes)
    parsed = decode_or_400(decode, body)
    model = model_for(state, exchange, parsed.model, "chat")
    quote = quote_chat(
        model.price,
        body,
        requested_max_tokens=parsed.requested_max_output,
        multiplier=state.gate.multiplier(exchange.principal),
    )
    return QuotedGeneration(body, parsed, model, quote)
