"""The account's models: what each costs this account (its price multiplier applied), its
context window, kind, and whether an upstream can serve it right now."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from starlette.responses import Response

from relay.console.snippets import base_url
from relay.console.web import Ctx, page
from relay.identity.roles import Permission
from relay.money.display import format_usd_price
from relay.money.pricing import parse_multiplier
from relay.upstream.routing import Model

__all__ = ["ModelRow", "model_rows", "models_page"]


class ModelRow(msgspec.Struct, frozen=True):
    name: str
    kind: str
    prices: list[tuple[str, str]]  # (what, price) in the order a reader compares them
    context_window: int
    max_output_tokens: int
    available: bool


def _prices(model: Model, multiplier: Decimal) -> list[tuple[str, str]]:
    price = model.price

    def scaled(value: Decimal) -> str:
        return format_usd_price(value * multiplier)

    if model.config.kind == "image" or price.image_prices or price.usd_per_image is not None:
        found = [
            (f"per image, {size}", scaled(value)) for size, value in price.image_prices.items()
        ]
        if price.usd_per_image is not None:
            found.insert(0, ("per image", scaled(price.usd_per_image)))
        return found
    if price.usd_per_video_second is not None:
        return [("per second of video", scaled(price.usd_per_video_second))]
    found = [("input, per 1M tokens", scaled(price.input_usd_per_mtok))]
    if model.config.kind != "embedding":
        found.append(("output, per 1M tokens", scaled(price.output_usd_per_mtok)))
    if price.cached_input_usd_per_mtok != price.input_usd_per_mtok:
        found.append(("cached input, per 1M tokens", scaled(price.cached_input_usd_per_mtok)))
    return found


def model_rows(models: dict[str, Model], multiplier: Decimal) -> list[ModelRow]:
    return [
        ModelRow(
            name=model.name,
            kind=model.config.kind,
            prices=_prices(model, multiplier),
            context_window=model.config.context_window,
            max_output_tokens=model.config.max_output_tokens,
            available=model.available,
        )
        for _, model in sorted(models.items())
    ]


@page("account", Permission.VIEW)
async def models_page(ctx: Ctx) -> Response:
    assert ctx.account is not None
    multiplier = parse_multiplier(ctx.account.price_multiplier)
    return ctx.render(
        "models.html",
        rows=model_rows(ctx.state.router.models, multiplier),
        multiplier=multiplier,
        base_url=base_url(ctx.state.config, ctx.request),
    )
