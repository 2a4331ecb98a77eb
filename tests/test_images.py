"""System tests of ``POST /v1/images/generations``: per-image prices, exact holds, settlement.

The ``mock`` provider answers offline with deterministic 1×1 PNGs; a second, OpenAI-kind
provider is a ``FakeUpstream`` (httpx.MockTransport) scripted per test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from conftest import FakeUpstream, SeenRequest, error_reply, json_reply, make_config
from support_accounts import Relay, auth, run_relay

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGES = """
[[models]]
name = "mock-image"
kind = "image"
routes = ["mock:mock-image"]
image_prices = { "1024x1024" = "0.04", "1024x1024/hd" = "0.08", "1792x1024" = "0.08" }

[[providers]]
name = "pix"
kind = "openai"
base_url = "http://pix.test/v1"
api_keys = ["pix-key"]
max_attempts = 1

[[models]]
name = "pix-image"
kind = "image"
routes = ["pix:gpt-image-1"]
usd_per_image = "0.02"
"""


def images_answer(count: int) -> httpx.Response:
    data = [{"b64_json": base64.b64encode(PNG_SIGNATURE).decode()} for _ in range(count)]
    return json_reply(200, json.dumps({"created": 1, "data": data}).encode())


@dataclass
class Setup:
    relay: Relay
    upstream: FakeUpstream
    account_id: str
    secret: str

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.relay.base_url + "/v1",
            api_key=self.secret,
            max_retries=0,
            http_client=httpx.AsyncClient(),
        )

    async def post(self, body: dict[str, object], query: str = "") -> httpx.Response:
        return await self.relay.client.post(
            "/v1/images/generations" + query, json=body, headers=auth(self.secret)
        )

    async def charged(self) -> list[int]:
        return [-int(row["amount_micros"]) for row in await self.relay.charges(self.account_id)]

    def held(self) -> int:
        return self.relay.state.wallet.snapshot(self.account_id).held_micros


@pytest.fixture
async def setup(tmp_path: Path, admin_token: str) -> AsyncIterator[Setup]:
    upstream = FakeUpstream(lambda seen: images_answer(int(seen.body.get("n", 1))))
    config = make_config(tmp_path, extra=IMAGES)
    async with run_relay(config, client_factory=upstream.factory()) as relay:
        account, key = await relay.funded_key("painter")
        yield Setup(relay, upstream, account["id"], key["secret"])


async def test_openai_sdk_generates_images_priced_per_image(setup: Setup) -> None:
    async with setup.openai() as client:
        result = await client.images.generate(
            model="mock-image", prompt="a lighthouse", n=2, size="1024x1024"
        )
    assert result.data is not None and len(result.data) == 2
    for image in result.data:
        assert image.b64_json is not None
        assert base64.b64decode(image.b64_json).startswith(PNG_SIGNATURE)
    assert result.data[0].b64_json != result.data[1].b64_json
    metadata = (result.model_extra or {})["metadata"]
    assert metadata["cost_micros"] == "80000" and metadata["provider"] == "mock"
    assert await setup.charged() == [80_000]
    usage = await setup.relay.usage(metadata["request_id"])
    assert (usage["endpoint"], usage["units"], usage["cost_micros"]) == ("images", 2, 80_000)
    assert setup.held() == 0


async def test_quality_and_url_format_are_honoured(setup: Setup) -> None:
    response = await setup.post(
        {
            "model": "mock-image",
            "prompt": "a fox",
            "size": "1024x1024",
            "quality": "hd",
            "response_format": "url",
        }
    )
    assert response.status_code == 200
    assert response.headers["x-relay-cost-micros"] == "80000"
    (image,) = response.json()["data"]
    assert image["url"].startswith("data:image/png;base64,")
    again = await setup.post({"model": "mock-image", "prompt": "a fox", "size": "1792x1024"})
    assert again.json()["metadata"]["cost_micros"] == "80000"


async def test_an_unpriced_size_is_refused_before_any_hold(setup: Setup) -> None:
    response = await setup.post({"model": "mock-image", "prompt": "x", "size": "256x256"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "size" and "256x256" in error["message"]
    assert await setup.charged() == [] and setup.held() == 0


async def test_a_chat_model_is_not_an_image_model(setup: Setup) -> None:
    response = await setup.post({"model": "mock-gpt", "prompt": "x"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


async def test_dry_run_holds_exactly_n_images(setup: Setup) -> None:
    response = await setup.post({"model": "pix-image", "prompt": "x", "n": 3}, "?dryRun=true")
    assert response.status_code == 200
    estimate = response.json()["estimate"]
    assert estimate["hold_micros"] == estimate["estimated_cost_micros"] == 60_000
    assert setup.upstream.seen == []


async def test_upstream_failure_releases_the_hold(setup: Setup) -> None:
    setup.upstream.handler = lambda seen: error_reply(500)
    response = await setup.post({"model": "pix-image", "prompt": "x", "n": 2})
    assert response.status_code == 502
    assert await setup.charged() == [] and setup.held() == 0
    (row,) = await setup.relay.rows("SELECT * FROM usage WHERE endpoint = 'images'")
    assert row["status"] == 502 and row["cost_micros"] == 0


async def test_only_the_images_returned_are_charged(setup: Setup) -> None:
    def one_image(seen: SeenRequest) -> httpx.Response:
        return images_answer(1)

    setup.upstream.handler = one_image
    response = await setup.post({"model": "pix-image", "prompt": "x", "n": 3})
    assert response.status_code == 200
    assert response.json()["metadata"]["cost_micros"] == "20000"
    assert await setup.charged() == [20_000]
    sent = setup.upstream.seen[-1]
    assert sent.url == "http://pix.test/v1/images/generations"
    assert sent.key == "pix-key" and sent.body["model"] == "gpt-image-1" and sent.body["n"] == 3
