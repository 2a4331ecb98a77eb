"""``POST /v1/images/generations`` and ``/v1/images/edits``: OpenAI-shaped images, priced
per image. An edit is OpenAI's multipart form (``relay.api.uploads``), priced and settled
exactly as a generation of the same ``n``, ``size`` and ``quality``.

The price depends only on ``n``, ``size`` and ``quality`` (``relay.money.estimate.quote_images``),
so the hold is the exact cost of ``n`` images and settlement charges the images the
upstream returned (normally all ``n``, so exactly the quote). An unpriced size is a 400
before anything is held; a failed call releases the hold.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal, NamedTuple

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
from relay.api.uploads import read_upload
from relay.errors import InvalidRequest, RelayError
from relay.http.responses import decode_or_400, read_body
from relay.identity.auth import ANONYMOUS
from relay.money.estimate import quote_images
from relay.money.pricing import image_cost_micros
from relay.state import RelayState, relay_state
from relay.upstream.providers.base import IMAGE_EDITS_PATH, IMAGES_PATH
from relay.upstream.routing import OpenedRoute, Route

__all__ = ["ImageRequest", "edit_images", "generate_images"]


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
# The edit form's fields relay prices by (the rest is forwarded untouched).
_EDIT_FIELDS = ("model", "prompt", "n", "size", "quality", "response_format")
_decode_answer = msgspec.json.Decoder(_ImagesAnswer).decode


class _Prepared(NamedTuple):
    """What a route needs to price and send an images request."""

    images: ImageRequest
    body_for: Callable[[Route], bytes]
    content_type: str | None = None  # None: JSON


async def _read_generation(request: Request, state: RelayState) -> _Prepared:
    body = await read_body(request, state.config.server.max_body_bytes)
    images: ImageRequest = decode_or_400(_decode_request, body)

    def body_for(route: Route) -> bytes:
        return route.provider.image_body(body, images.model, route.upstream_model)

    return _Prepared(images, body_for)


async def _read_edit(request: Request, state: RelayState) -> _Prepared:
    """OpenAI's multipart edit form: ``image`` (or several ``image[]``), optional ``mask``."""
    form = await read_upload(request, state)
    if not form.files("image", "image[]"):
        raise InvalidRequest("the form must carry the image to edit as 'image'", param="image")
    fields = {name: form.text[name] for name in _EDIT_FIELDS if name in form.text}
    try:
        images = msgspec.convert(fields, ImageRequest, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid form: {exc}") from None
    return _Prepared(images, form.body_for, form.content_type)


async def generate_images(request: Request) -> Response:
    return await _images(request, "images", IMAGES_PATH, _read_generation)


async def edit_images(request: Request) -> Response:
    """``POST /v1/images/edits``: priced per image like generation, passed through as is."""
    return await _images(request, "image_edits", IMAGE_EDITS_PATH, _read_edit)


async def _images(
    request: Request,
    endpoint: str,
    path: str,
    read: Callable[[Request, RelayState], Awaitable[_Prepared]],
) -> Response:
    state = relay_state(request)
    exchange = Exchange(state.new_request_id(), endpoint, ANONYMOUS)
    ticket: Ticket | None = None
    try:
        exchange.principal = await state.auth.authenticate(request.headers)
        prepared = await read(request, state)
        images = prepared.images
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
        ticket = (  # the embedded gate directly: no await on its hot path
            state.gate.admit(exchange, quote)
            if state.admitter is None
            else await state.admitter.admit(exchange, quote)
        )
        with ticket:  # settled below, or released on any way out
            opened = await state.router.open_route(
                model,
                path,
                prepared.body_for,
                stream=False,
                content_type=prepared.content_type,
            )
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
