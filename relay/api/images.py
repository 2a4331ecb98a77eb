"""``POST /v1/images/generations``: OpenAI-shaped image generation, priced per image.

The price depends only on ``n``, ``size`` and ``quality`` (``relay.money.estimate.quote_images``),
so the hold is the exact cost of ``n`` images and settlement charges the images the
upstream returned (normally all ``n``, so exactly the quote). An unpriced size is a 400
before anything is held; a failed call releases the hold.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.api.flow import (
    abandon,
    answer_with_metadata,
    dry_run_answer,
    is_dry_run,
    malformed_answer,
    model_for,
    read_answer,
    refuse,
    settle_cost,
)
from relay.errors import InvalidRequest, RelayError
from relay.http.responses import decode_or_400, read_body
from relay.identity.auth import ANONYMOUS
from relay.money.estimate import quote_images
from relay.money.pricing import image_cost_micros
from relay.state import RelayState, relay_state
from relay.upstream.providers.base import IMAGES_PATH
from relay.upstream.routing import OpenedRoute, Route

__all__ = ["ImageRequest", "generate_images"]


class ImageRequest(msgspec.Struct):
    model: str
    prompt: str
    n: Annotated[int, Meta(ge=1, le=10)] = 1
    size: str = "1024x1024"
    quality: str | None = None
    response_format: Literal["url", "b64_json"] | None = None


class _ImagesAnswer(msgspec.Struct):
    data: list[msgspec.Raw] | None = None


_decode_request = msgspec.json.Decoder(ImageRequest).decode
_decode_answer = msgspec.json.Decoder(_ImagesAnswer).decode


async def generate_images(request: Request) -> Response:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), "images", ANONYMOUS)
    ticket: Ticket | None = None
    try:
        exchange.principal = await state.auth.authenticate(request.headers)
        body = await read_body(request, state.config.server.max_body_bytes)
        images: ImageRequest = decode_or_400(_decode_request, body)
        model = model_for(state, exchange, images.model, "image")
        multiplier = state.gate.multiplier(exchange.principal)
        try:
            quote = quote_images(
                model.price,
                n=images.n,
                size=images.size,
                quality=images.quality,
                multiplier=multiplier,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="size") from None
        if is_dry_run(request):
            return await dry_run_answer(state, exchange, quote)

        def body_for(route: Route) -> bytes:
            return route.provider.image_body(body, images.model, route.upstream_model)

        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        async with ticket:  # settled below, or released on any way out
            opened = await state.router.open_route(model, IMAGES_PATH, body_for, stream=False)
            exchange.route = opened.route
            answer = await _relay_images(state, exchange, ticket, opened, images)
            if state.admitter is not None:  # cluster: the 200 waits for its commit
                await state.admitter.committed()
            return answer
    except RelayError as exc:
        return refuse(state, exchange, ticket, exc)
    except BaseException as exc:
        abandon(state, exchange, ticket, exc)
        raise


async def _relay_images(
    state: RelayState, exchange: Exchange, ticket: Ticket, opened: OpenedRoute, images: ImageRequest
) -> Response:
    raw = await read_answer(state, exchange, ticket, opened, "images")
    if isinstance(raw, Response):
        return raw
    delivered = _images_in(raw, images.n)
    if delivered is None:
        return malformed_answer(state, exchange, ticket, "images")
    assert exchange.model is not None
    cost = image_cost_micros(
        exchange.model.price,
        n=delivered,
        size=images.size,
        quality=images.quality,
        multiplier=state.gate.multiplier(exchange.principal),
    )
    exchange.units = delivered
    settle_cost(state, exchange, ticket, cost, 0)
    return answer_with_metadata(raw, exchange)


def _images_in(raw: bytes, requested: int) -> int | None:
    """Images the upstream returned (never more than asked); None if not a JSON object."""
    try:
        answer = _decode_answer(raw)
    except msgspec.DecodeError:
        return None
    if answer.data is None:
        return requested
    return min(len(answer.data), requested)
