"""Tests of ``/v1/responses``: translated for the mock (chat completions underneath),
native pass-through for an upstream that speaks the Responses API, billing, retrieve."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import ADMIN_TOKEN, make_config, serve_relay


@pytest.fixture
async def served(tmp_path: Path, admin_token: str) -> AsyncIterator[Any]:
    async with serve_relay(make_config(tmp_path)) as relay:
        yield relay


def _sdk(relay: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=relay.base_url + "/v1",
        api_key=ADMIN_TOKEN,
        max_retries=0,
        http_client=httpx.AsyncClient(),
    )


async def test_responses_create_on_the_mock_is_translated_and_billed(served: Any) -> None:
    async with _sdk(served) as client:
        response = await client.responses.create(
            model="mock-gpt", input="Hello", instructions="Be brief.", max_output_tokens=50
        )
    assert response.object == "response" and response.status == "completed"
    assert response.output_text.startswith("Hello from relay's mock model.")
    assert response.usage is not None and response.usage.output_tokens > 0
    metadata = dict(response.metadata or {})
    assert metadata["provider"] == "mock" and metadata["cost_micros"].isdigit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert json.loads(response.model_dump_json())["metadata"] == metadata
    [row] = await served.usage_rows()
    assert row["endpoint"] == "responses" and row["status"] == 200
    assert row["completion_tokens"] == response.usage.output_tokens
    assert row["prompt_tokens"] == response.usage.input_tokens
    assert str(row["cost_micros"]) == metadata["cost_micros"]


async def test_responses_stream_on_the_mock_sends_typed_events(served: Any) -> None:
    async with _sdk(served) as client:
        stream = await client.responses.create(model="mock-gpt", input="Hello", stream=True)
        events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith("Hello from relay's mock model.")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text
    assert final.usage is not None and final.usage.output_tokens > 0
    metadata = dict(final.metadata or {})
    [row] = await served.usage_rows()
    assert row["stream"] == 1 and str(row["cost_micros"]) == metadata["cost_micros"]
    assert row["completion_tokens"] == final.usage.output_tokens


async def test_the_sdk_stream_helper_collects_the_final_response(served: Any) -> None:
    async with _sdk(served) as client:
        async with client.responses.stream(model="mock-gpt", input="Hello") as stream:
            final = await stream.get_final_response()
    assert final.output_text.startswith("Hello from relay's mock model.")
    assert final.usage is not None and int((final.metadata or {})["cost_micros"]) >= 0


async def test_a_hosted_tool_cannot_be_translated_and_is_refused(served: Any) -> None:
    async with _sdk(served) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(
                model="mock-gpt", input="Hi", tools=[{"type": "web_search"}]
            )
    assert "web_search" in str(refused.value)
    assert served.state.wallet.open_hold_count() == 0


async def test_previous_response_id_needs_a_provider_that_stores_responses(served: Any) -> None:
    async with _sdk(served) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(
                model="mock-gpt", input="Hi", previous_response_id="resp_1"
            )
    assert "previous_response_id" in str(refused.value)
