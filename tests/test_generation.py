"""The start chat, Responses and Messages share (relay.api.generation): the key is checked
before the body is read, and each route's own max-output field sets the quoted worst case."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config
from support_accounts import Relay, auth, run_relay


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    async with run_relay(make_config(tmp_path)) as served:
        yield served


def chat(max_output: int) -> dict[str, Any]:
    hello = [{"role": "user", "content": "Hi"}]
    return {"model": "mock-gpt", "messages": hello, "max_completion_tokens": max_output}


def responses(max_output: int) -> dict[str, Any]:
    return {"model": "mock-gpt", "input": "Hi", "max_output_tokens": max_output}


def messages(max_output: int) -> dict[str, Any]:
    hello = [{"role": "user", "content": "Hi"}]
    return {"model": "mock-gpt", "messages": hello, "max_tokens": max_output}


ROUTES = [
    ("/v1/chat/completions", chat),
    ("/v1/responses", responses),
    ("/v1/messages", messages),
]


@pytest.mark.parametrize("path", [path for path, _ in ROUTES])
async def test_an_unknown_key_is_refused_before_the_body_is_read(relay: Relay, path: str) -> None:
    response = await relay.client.post(
        path, content=b"{not json", headers=auth("rk_nope") | {"content-type": "application/json"}
    )
    assert response.status_code == 401, response.text


@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_the_routes_max_output_field_sets_the_worst_case(
    relay: Relay, path: str, body: Any
) -> None:
    _, key = await relay.funded_key("acme", amount_usd="5")
    worst = []
    for max_output in (100, 900):  # same length: the prompt estimate stays the same
        response = await relay.client.post(
            path + "?dryRun=true", json=body(max_output), headers=auth(key["secret"])
        )
        assert response.status_code == 200, response.text
        worst.append(response.json()["estimate"]["worst_case_cost_micros"])
    assert 0 < worst[0] < worst[1]
