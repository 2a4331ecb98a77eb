"""Weighted routes: ``provider:model@weight`` or the table form; the first try is drawn by
weight among the enabled routes, the others stay fallbacks in config order."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config
from support_accounts import auth, chat_body, run_relay

from relay.config import RouteSpec, parse_config, parse_route
from relay.errors import ConfigError
from relay.upstream.providers import build_provider, default_client_factory
from relay.upstream.routing import Model

TWO = """
[[providers]]
name = "east"
kind = "mock"

[[providers]]
name = "west"
kind = "mock"

[[models]]
name = "split-gpt"
routes = {routes}
"""


def model_of(routes: str) -> Model:
    config = parse_config(TWO.format(routes=routes))
    providers = {p.name: build_provider(p, default_client_factory) for p in config.providers}
    return Model(config.models[0], providers)


def test_route_strings_and_tables_parse() -> None:
    assert parse_route("openai:gpt-4o@3") == RouteSpec("openai", "gpt-4o", 3)
    assert parse_route("openai:gpt-4o") == RouteSpec("openai", "gpt-4o", None)
    # An @ that is not a weight stays part of the upstream model's name.
    assert parse_route("hf:org/model@main") == RouteSpec("hf", "org/model@main", None)
    model = model_of('[{ provider = "east", model = "gpt", weight = 2 }, "west:gpt"]')
    assert [r.label for r in model.routes] == ["east:gpt", "west:gpt"]
    assert model.weights == [2, 1]
    with pytest.raises(ConfigError, match=r"models\[0\].routes\[0\]: unknown provider 'north'"):
        parse_config(TWO.format(routes='[{ provider = "north", model = "gpt" }]'))


def test_the_first_route_is_drawn_by_weight_and_the_rest_fall_back() -> None:
    model = model_of('["east:gpt@3", "west:gpt@1"]')
    east, west = model.routes
    assert model.route_order(lambda: 0.0) == [east, west]
    assert model.route_order(lambda: 0.74) == [east, west]  # 0.74 × 4 = 2.96 < 3
    assert model.route_order(lambda: 0.76) == [west, east]
    draws = [i / 1000 for i in range(1000)]
    firsts = [model.route_order(lambda d=d: d)[0] for d in draws]  # type: ignore[misc]
    assert firsts.count(east) == 750 and firsts.count(west) == 250


def test_unweighted_routes_keep_their_order_and_weight_zero_is_fallback_only() -> None:
    plain = model_of('["east:gpt", "west:gpt"]')
    assert plain.weights is None
    assert plain.route_order(lambda: 0.99) == plain.routes
    backup = model_of('["east:gpt@0", "west:gpt@1"]')
    east, west = backup.routes
    assert all(backup.route_order(lambda d=d: d) == [west, east] for d in (0.0, 0.5, 0.99))  # type: ignore[misc]
    # A disabled route is never drawn first.
    west.provider.pool.keys[0].disabled_reason = "upstream answered 401"
    weighted = model_of('["east:gpt@1", "west:gpt@1000"]')
    weighted.routes[1].provider.pool.keys[0].disabled_reason = "upstream answered 401"
    assert weighted.route_order(lambda: 0.99)[0] is weighted.routes[0]


async def test_requests_are_split_across_weighted_providers(
    tmp_path: Path, admin_token: str
) -> None:
    extra = TWO.format(routes='["east:gpt@1", "west:gpt@1"]')
    async with run_relay(make_config(tmp_path, extra=extra)) as relay:
        _, key = await relay.funded_key("acme")
        providers = []
        for _ in range(30):
            response = await relay.client.post(
                "/v1/chat/completions", json=chat_body("split-gpt"), headers=auth(key["secret"])
            )
            assert response.status_code == 200
            providers.append(response.json()["metadata"]["provider"])
    # Even odds over 30 draws: each side is chosen (1 in 2^29 to fail by chance).
    assert set(providers) == {"east", "west"}
