"""The real ``openai`` SDK on the routes beyond chat (issue 15, Deliver 5), against relay
serving the shipped example config's ``mock`` models (offline, on 127.0.0.1).

``audio.transcriptions.create`` and ``audio.translations.create`` (multipart, every
``response_format``), ``audio.speech.create`` (and ``with_streaming_response``),
``images.edit``, ``completions.create`` plain and streamed, ``moderations.create``:
each answers in the SDK's types, and each is billed exactly and logged.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from support_accounts import Relay, run_relay

from relay.config import parse_config

ROOT = Path(__file__).resolve().parents[1]


def wav(seconds: int, rate: int = 8_000) -> bytes:
    """A silent 8-bit mono WAV of ``seconds``."""
    frames = rate * seconds
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    head = b"RIFF" + struct.pack("<I", 36 + frames) + b"WAVE"
    head += b"fmt " + struct.pack("<I", 16) + fmt
    return head + b"data" + struct.pack("<I", frames) + b"\x80" * frames


@dataclass
class Client:
    relay: Relay
    openai: openai.AsyncOpenAI
    account_id: str

    async def charged(self) -> list[int]:
        return [-int(row["amount_micros"]) for row in await self.relay.charges(self.account_id)]

    async def row(self, request_id: str) -> dict[str, Any]:
        return await self.relay.usage(request_id)

    async def rows(self, endpoint: str) -> list[dict[str, Any]]:
        return await self.relay.rows("SELECT * FROM usage WHERE endpoint = ?", (endpoint,))

    def held(self) -> int:
        return self.relay.state.wallet.snapshot(self.account_id).held_micros


@pytest.fixture
async def client(tmp_path: Path, admin_token: str) -> AsyncIterator[Client]:
    text = (ROOT / "config.example.toml").read_text()  # run_relay serves its own port
    text = text.replace('database = "relay.db"', f'database = "{tmp_path / "relay.db"}"', 1)
    config = parse_config(text, base_dir=str(tmp_path))
    async with run_relay(config) as relay:
        account, key = await relay.funded_key("sdk", amount_usd="5")
        sdk = openai.AsyncOpenAI(
            base_url=relay.base_url + "/v1",
            api_key=key["secret"],
            max_retries=0,
            http_client=httpx.AsyncClient(),
        )
        async with sdk:
            yield Client(relay, sdk, account["id"])


async def test_transcriptions_create_in_every_format(client: Client) -> None:
    audio = wav(3)
    result = await client.openai.audio.transcriptions.create(
        model="mock-whisper", file=("hello.wav", audio, "audio/wav"), language="en"
    )
    assert result.text.startswith("Mock transcribe of 24044 bytes")
    metadata = (result.model_extra or {})["metadata"]
    assert metadata["cost_micros"] == "300"  # 3 s × $0.0001
    row = await client.row(metadata["request_id"])
    assert (row["endpoint"], row["units"], row["cost_micros"]) == ("transcriptions", 3, 300)
    verbose = await client.openai.audio.transcriptions.create(
        model="mock-whisper",
        file=("hello.wav", audio, "audio/wav"),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert verbose.duration == 3.0 and verbose.segments and verbose.language == "english"
    text = await client.openai.audio.transcriptions.create(
        model="mock-whisper", file=("hello.wav", audio, "audio/wav"), response_format="text"
    )
    assert isinstance(text, str) and "Mock transcribe" in text
    subtitles = await client.openai.audio.transcriptions.create(
        model="mock-whisper", file=("hello.wav", audio, "audio/wav"), response_format="vtt"
    )
    assert isinstance(subtitles, str) and subtitles.startswith("WEBVTT")
    assert await client.charged() == [300, 300, 300, 300]
    assert client.held() == 0


async def test_translations_create(client: Client) -> None:
    with pytest.warns(DeprecationWarning):  # the SDK marks the method so; the route lives
        result = await client.openai.audio.translations.create(
            model="mock-whisper", file=("hallo.wav", wav(2), "audio/wav")
        )
    assert result.text.startswith("Mock translate")
    (row,) = await client.rows("translations")
    assert (row["status"], row["cost_micros"], row["model"]) == (200, 200, "mock-whisper")


async def test_speech_create_and_streaming_response(client: Client) -> None:
    spoken = await client.openai.audio.speech.create(
        model="mock-tts", voice="alloy", input="Hello from relay.", response_format="wav"
    )
    audio = spoken.content
    assert audio.startswith(b"RIFF") and audio[8:12] == b"WAVE"
    assert spoken.response.headers["content-type"] == "audio/wav"
    assert spoken.response.headers["x-relay-cost-micros"] == "255"  # 17 chars × 15 µ$
    async with client.openai.audio.speech.with_streaming_response.create(
        model="mock-tts", voice="alloy", input="x" * 100
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        pieces = [piece async for piece in response.iter_bytes()]
    assert sum(map(len, pieces)) > 4096
    assert await client.charged() == [255, 1500]
    rows = await client.rows("speech")
    assert sorted(row["units"] for row in rows) == [17, 100]
    assert client.held() == 0


async def test_images_edit(client: Client) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    result = await client.openai.images.edit(
        model="mock-image", image=("in.png", png, "image/png"), prompt="add a hat", n=2
    )
    assert result.data is not None and len(result.data) == 2
    assert result.data[0].b64_json and result.data[0].b64_json != result.data[1].b64_json
    metadata = (result.model_extra or {})["metadata"]
    assert metadata["cost_micros"] == "80000"
    row = await client.row(metadata["request_id"])
    assert (row["endpoint"], row["units"]) == ("image_edits", 2)


async def test_completions_create_plain_and_streamed(client: Client) -> None:
    plain = await client.openai.completions.create(
        model="mock-gpt", prompt="Once upon a time", max_tokens=5
    )
    assert plain.choices[0].text == "Hello from relay's mock model."
    assert plain.usage is not None and plain.usage.completion_tokens == 5
    metadata = (plain.model_extra or {})["metadata"]
    assert int(metadata["cost_micros"]) > 0
    stream = await client.openai.completions.create(
        model="mock-gpt", prompt="Once upon a time", max_tokens=5, stream=True
    )
    texts = [chunk.choices[0].text async for chunk in stream]  # never an empty choices list
    assert "".join(texts) == plain.choices[0].text
    with_usage = await client.openai.completions.create(
        model="mock-gpt",
        prompt="Once upon a time",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in with_usage]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    rows = await client.rows("completions")
    assert [row["stream"] for row in rows] == [0, 1, 1]
    assert all(row["completion_tokens"] == 5 and row["usage_estimated"] == 0 for row in rows)
    assert [row["cost_micros"] for row in rows] == await client.charged()
    assert rows[0]["cost_micros"] == int(metadata["cost_micros"])
    assert client.held() == 0


async def test_moderations_create(client: Client) -> None:
    result = await client.openai.moderations.create(
        model="mock-moderation", input=["one text", "another"]
    )
    assert [item.flagged for item in result.results] == [False, False]
    (row,) = await client.rows("moderations")
    assert (row["status"], row["cost_micros"], row["model"]) == (200, 0, "mock-moderation")


async def test_models_show_the_audio_prices(client: Client) -> None:
    tts = await client.openai.models.retrieve("mock-tts")
    whisper = await client.openai.models.retrieve("mock-whisper")
    assert (tts.model_extra or {})["kind"] == "speech"
    assert (tts.model_extra or {})["pricing"]["usd_per_mchar"] == "15"
    assert (whisper.model_extra or {})["pricing"]["usd_per_audio_second"] == "0.0001"
