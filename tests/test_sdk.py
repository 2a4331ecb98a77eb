"""The official ``openai`` Python SDK against a real relay on 127.0.0.1 (mock provider)."""

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

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Hello"}
]


@pytest.fixture
async def sdk(tmp_path: Path, admin_token: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with serve_relay(make_config(tmp_path)) as relay:
        client = openai.AsyncOpenAI(
            base_url=relay.base_url + "/v1",
            api_key=ADMIN_TOKEN,
            max_retries=0,
            http_client=httpx.AsyncClient(),
        )
        try:
            yield client
        finally:
            await client.close()


async def test_the_sdk_completes_a_chat(sdk: openai.AsyncOpenAI) -> None:
    reply = await sdk.chat.completions.create(model="mock-gpt", messages=MESSAGES)
    content = reply.choices[0].message.content
    assert content is not None and content.startswith("Hello from relay's mock model.")
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    # The SDK declares ChatCompletion.metadata (OpenAI's own Dict[str, str]); relay's
    # metadata lands there, every value a string, so dumping the model is warning-free.
    metadata: dict[str, Any] = dict(reply.metadata or {})
    assert metadata["provider"] == "mock" and int(metadata["cost_micros"]) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert json.loads(reply.model_dump_json())["metadata"] == metadata


async def test_the_sdk_completes_a_streamed_chat(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(model="mock-gpt", messages=MESSAGES, stream=True)
    text = ""
    last = None
    async for chunk in stream:
        last = chunk
        text += chunk.choices[0].delta.content or ""  # every chunk has a choice
    assert text.startswith("Hello from relay's mock model.")
    assert last is not None and last.usage is None  # usage was not asked for
    assert (last.model_extra or {})["metadata"]["request_id"].startswith("req_")
    assert (
        stream.response.headers["x-request-id"]
        == (last.model_extra or {})["metadata"]["request_id"]
    )


async def test_the_sdk_creates_an_embedding(sdk: openai.AsyncOpenAI) -> None:
    result = await sdk.embeddings.create(model="mock-embedding", input="Hello")
    assert len(result.data) == 1 and len(result.data[0].embedding) == 16


async def test_the_sdk_raises_not_found_for_an_unknown_model(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"
