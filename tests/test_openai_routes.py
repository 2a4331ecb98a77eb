"""The OpenAI routes SDKs call beyond chat (issue 15, Deliver 5): audio transcriptions and
translations, speech, image edits, legacy completions and moderations.

A recording fake OpenAI upstream (``httpx.MockTransport``) shows what each route sent
upstream; every test checks the exact bill, the usage row and that the hold and the
concurrency slot came back, on success, upstream failure, hostile usage and faults.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_config, sse_event, sse_events
from support_accounts import Relay, auth, run_relay

import relay.api.audio
from relay.config import ProviderConfig
from relay.upstream.client import HttpxUpstream, UpstreamClient
from relay.upstream.providers import ClientFactory, default_client_factory

EXTRA = """
[[providers]]
name = "oai"
kind = "openai"
base_url = "http://oai.test/v1"
api_keys = ["oai-pool-key"]
max_attempts = 1

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://anthropic.test/v1"
api_keys = ["sk-ant-pool"]
max_attempts = 1

[[models]]
name = "whisper"
kind = "transcription"
routes = ["oai:whisper-1"]
usd_per_audio_second = "0.0001"

[[models]]
name = "transcribe-4o"
kind = "transcription"
routes = ["oai:gpt-4o-transcribe"]
input_usd_per_mtok = "2.5"
output_usd_per_mtok = "10"

[[models]]
name = "tts"
kind = "speech"
routes = ["oai:tts-1"]
usd_per_mchar = "15"

[[models]]
name = "tts-unpriced"
kind = "speech"
routes = ["oai:tts-1"]

[[models]]
name = "pix"
kind = "image"
routes = ["oai:gpt-image-1"]
usd_per_image = "0.02"

[[models]]
name = "instruct"
routes = ["oai:gpt-3.5-turbo-instruct"]
input_usd_per_mtok = "1.5"
output_usd_per_mtok = "2"
max_output_tokens = 1000

[[models]]
name = "moderation"
kind = "moderation"
routes = ["oai:omni-moderation-latest"]

[[models]]
name = "claude-only"
routes = ["claude:claude-sonnet-4-5"]
input_usd_per_mtok = "3"
output_usd_per_mtok = "15"
"""


def wav(seconds_tenths: int, rate: int = 16_000) -> bytes:
    """A silent 16-bit mono WAV lasting ``seconds_tenths`` / 10 seconds."""
    frames = rate * seconds_tenths // 10
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    data = b"\x00\x00" * frames
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


@dataclass
class Seen:
    url: str
    headers: httpx.Headers
    raw: bytes

    def form(self) -> dict[str, tuple[str | None, bytes]]:
        """The multipart form relay sent: name → (filename, bytes)."""
        head = b"Content-Type: " + self.headers["content-type"].encode() + b"\r\n\r\n"
        message = BytesParser(policy=HTTP).parsebytes(head + self.raw)
        parts: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            payload = part.get_payload(decode=True)
            name = part.get_param("name", header="content-disposition")
            assert isinstance(name, str) and isinstance(payload, bytes)
            parts[name] = (part.get_filename(), payload)
        return parts

    def json(self) -> Any:
        return json.loads(self.raw)


Answer = Callable[[Seen], httpx.Response]


@dataclass
class Upstream:
    """The fake OpenAI: answers with ``answer`` and records every request."""

    answer: Answer
    seen: list[Seen] = field(default_factory=list)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        seen = Seen(str(request.url), request.headers, await request.aread())
        self.seen.append(seen)
        return self.answer(seen)

    def factory(self) -> ClientFactory:
        def build(config: ProviderConfig) -> UpstreamClient:
            if config.kind == "mock":
                return default_client_factory(config)
            return HttpxUpstream(httpx.AsyncClient(transport=httpx.MockTransport(self._handle)))

        return build


def reply(body: Any, status: int = 200, content_type: str = "application/json") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers={"content-type": content_type})


def audio_stream() -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"ID3-fake-mp3-bytes" * 25

    return httpx.Response(200, headers={"content-type": "audio/mpeg"}, content=body())


def default_answer(seen: Seen) -> httpx.Response:
    if seen.url.endswith("/audio/transcriptions") or seen.url.endswith("/audio/translations"):
        return reply({"text": "hello", "usage": {"type": "duration", "seconds": 4}})
    if seen.url.endswith("/audio/speech"):
        return audio_stream()
    if seen.url.endswith("/images/edits"):
        return reply({"created": 1, "data": [{"b64_json": "AAAA"}, {"b64_json": "BBBB"}]})
    if seen.url.endswith("/moderations"):
        return reply({"id": "modr-1", "model": "omni", "results": [{"flagged": False}]})
    if seen.url.endswith("/completions"):
        usage = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
        choice = {"index": 0, "text": " world", "logprobs": None, "finish_reason": "stop"}
        return reply(
            {"id": "cmpl-1", "object": "text_completion", "choices": [choice], "usage": usage}
        )
    return reply({"error": {"message": "not here"}}, 404)


@dataclass
class Setup:
    relay: Relay
    upstream: Upstream
    account_id: str
    key_id: str
    secret: str

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.relay.client.post(path, headers=auth(self.secret), **kwargs)

    async def transcribe(
        self, audio: bytes, path: str = "/v1/audio/transcriptions", **fields: str
    ) -> httpx.Response:
        data = {"model": "whisper", **fields}
        return await self.post(path, data=data, files={"file": ("speech.wav", audio, "audio/wav")})

    async def charged(self) -> list[int]:
        return [-int(row["amount_micros"]) for row in await self.relay.charges(self.account_id)]

    async def row(self, endpoint: str) -> dict[str, Any]:
        (row,) = await self.relay.rows("SELECT * FROM usage WHERE endpoint = ?", (endpoint,))
        return row

    async def assert_all_returned(self) -> None:
        state = self.relay.state
        view = state.wallet.snapshot(self.account_id)
        assert view.held_micros == 0 and state.wallet.open_hold_count() == 0
        assert state.gate.limiter.in_flight(self.key_id) == 0
        assert view.balance_micros == await self.relay.ledger_sum(self.account_id)


@pytest.fixture
async def setup(tmp_path: Path, admin_token: str) -> AsyncIterator[Setup]:
    upstream = Upstream(default_answer)
    config = make_config(tmp_path, extra=EXTRA, server_extra="max_upload_mb = 1")
    async with run_relay(config, client_factory=upstream.factory()) as relay:
        account, key = await relay.funded_key("listener", amount_usd="10", concurrency=1)
        yield Setup(relay, upstream, account["id"], key["id"], key["secret"])


# ----------------------------------------------------------------- transcription


async def test_a_transcription_is_passed_through_and_billed_the_reported_seconds(
    setup: Setup,
) -> None:
    audio = wav(35)  # 3.5 s
    response = await setup.transcribe(audio, language="en", prompt="Names: Ada", temperature="0")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "hello"
    assert body["metadata"]["cost_micros"] == "400"  # 4 s reported × 100 µ$/s
    assert body["usage"]["cost"] == 0.0004
    assert response.headers["x-relay-cost-micros"] == "400"
    (sent,) = setup.upstream.seen
    assert sent.url == "http://oai.test/v1/audio/transcriptions"
    assert sent.headers["authorization"] == "Bearer oai-pool-key"
    form = sent.form()
    assert form["model"] == (None, b"whisper-1")  # renamed to the upstream's model
    assert form["file"] == ("speech.wav", audio)  # the audio byte for byte
    assert form["language"] == (None, b"en") and form["prompt"] == (None, b"Names: Ada")
    assert form["temperature"] == (None, b"0")
    assert await setup.charged() == [400]
    row = await setup.row("transcriptions")
    assert (row["status"], row["units"], row["cost_micros"], row["model"]) == (
        200,
        4,
        400,
        "whisper",
    )
    assert (row["provider"], row["upstream_model"], row["usage_estimated"]) == (
        "oai",
        "whisper-1",
        0,
    )
    await setup.assert_all_returned()


async def test_the_hold_comes_from_the_wav_header(setup: Setup) -> None:
    response = await setup.transcribe(wav(35))
    dry = await setup.post(
        "/v1/audio/transcriptions?dryRun=true",
        data={"model": "whisper"},
        files={"file": ("a.wav", wav(35), "audio/wav")},
    )
    assert response.status_code == 200
    estimate = dry.json()["estimate"]
    # 3.5 s exactly, and at worst the 4 whole seconds an upstream bills.
    assert estimate["estimated_cost_micros"] == 350
    assert estimate["hold_micros"] in (350, 400)
    assert len(setup.upstream.seen) == 1  # the dry run called nothing


async def test_verbose_json_duration_is_billed_exactly(setup: Setup) -> None:
    def verbose(seen: Seen) -> httpx.Response:
        return reply({"task": "transcribe", "duration": 3.25, "text": "hi", "segments": []})

    setup.upstream.answer = verbose
    response = await setup.transcribe(wav(35), response_format="verbose_json")
    assert response.status_code == 200
    assert response.json()["metadata"]["cost_micros"] == "325"
    assert setup.upstream.seen[0].form()["response_format"] == (None, b"verbose_json")
    assert await setup.charged() == [325]
    assert (await setup.row("transcriptions"))["units"] == 4


async def test_a_text_transcript_is_billed_the_wav_duration(setup: Setup) -> None:
    setup.upstream.answer = lambda seen: reply(b"hello there", content_type="text/plain")
    response = await setup.transcribe(wav(20), response_format="text")
    assert response.status_code == 200
    assert response.text == "hello there"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-relay-cost-micros"] == "200"
    row = await setup.row("transcriptions")
    assert (row["cost_micros"], row["usage_estimated"], row["units"]) == (200, 0, 2)


async def test_a_text_transcript_of_compressed_audio_is_billed_the_estimate(
    setup: Setup,
) -> None:
    setup.upstream.answer = lambda seen: reply(
        b"1\n00:00:00,000 --> x\nhi\n", content_type="text/plain"
    )
    mp3 = b"ID3" + b"\x11" * 159_997  # 160,000 bytes: 10 s at the typical 128 kbit/s
    response = await setup.post(
        "/v1/audio/translations",
        data={"model": "whisper", "response_format": "srt"},
        files={"file": ("a.mp3", mp3, "audio/mpeg")},
    )
    assert response.status_code == 200
    assert setup.upstream.seen[0].url == "http://oai.test/v1/audio/translations"
    row = await setup.row("translations")
    assert (row["cost_micros"], row["usage_estimated"], row["units"]) == (1000, 1, 10)
    await setup.assert_all_returned()


async def test_token_billed_transcription_uses_the_token_prices(setup: Setup) -> None:
    def tokens(seen: Seen) -> httpx.Response:
        usage = {"type": "tokens", "input_tokens": 100, "output_tokens": 20, "total_tokens": 120}
        return reply({"text": "hi", "usage": usage})

    setup.upstream.answer = tokens
    response = await setup.transcribe(wav(30), model="transcribe-4o")
    assert response.status_code == 200, response.text
    assert setup.upstream.seen[0].form()["model"] == (None, b"gpt-4o-transcribe")
    # 100 × 2.5 + 20 × 10 micro-USD
    assert await setup.charged() == [450]
    row = await setup.row("transcriptions")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost_micros"]) == (100, 20, 450)


async def test_tokens_reported_for_a_per_second_model_bill_its_seconds(setup: Setup) -> None:
    def tokens(seen: Seen) -> httpx.Response:
        return reply({"text": "hi", "usage": {"type": "tokens", "input_tokens": 9}})

    setup.upstream.answer = tokens
    response = await setup.transcribe(wav(25))  # whisper has no token prices
    assert response.status_code == 200
    assert await setup.charged() == [250]  # never free: the WAV's 2.5 s


@pytest.mark.parametrize(
    "usage",
    [
        {"type": "duration", "seconds": -1},
        {"type": "duration", "seconds": 1e308},
        {"type": "duration", "seconds": "4"},
        {"type": "tokens", "input_tokens": -5, "output_tokens": 1},
        {"type": "tokens", "input_tokens": 10**12, "output_tokens": 1},
    ],
)
async def test_hostile_audio_usage_is_502_billed_relays_estimate(
    setup: Setup, usage: dict[str, Any]
) -> None:
    setup.upstream.answer = lambda seen: reply({"text": "hi", "usage": usage})
    response = await setup.transcribe(wav(20))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    row = await setup.row("transcriptions")
    assert (row["status"], row["error_code"]) == (502, "upstream_usage_invalid")
    assert row["cost_micros"] == 200 and await setup.charged() == [200]  # the WAV's 2 s
    await setup.assert_all_returned()


async def test_a_malformed_or_nan_duration_is_502_and_charges_nothing(setup: Setup) -> None:
    setup.upstream.answer = lambda seen: reply(b'{"text": "hi", "duration": NaN}')
    response = await setup.transcribe(wav(20))
    assert response.status_code == 502
    assert await setup.charged() == []
    await setup.assert_all_returned()


async def test_upstream_failure_releases_the_transcription_hold(setup: Setup) -> None:
    setup.upstream.answer = lambda seen: reply({"error": {"message": "down"}}, 500)
    response = await setup.transcribe(wav(20))
    assert response.status_code == 502
    assert response.json()["error"]["type"]
    assert await setup.charged() == []
    row = await setup.row("transcriptions")
    assert (row["status"], row["cost_micros"]) == (502, 0)
    await setup.assert_all_returned()


async def test_transcription_request_edges_are_400_or_413(setup: Setup) -> None:
    not_form = await setup.post("/v1/audio/transcriptions", json={"model": "whisper"})
    assert not_form.status_code == 400
    no_file = await setup.post(
        "/v1/audio/transcriptions", data={"model": "whisper"}, files={"x": ("a", b"1")}
    )
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    streamed = await setup.transcribe(wav(10), stream="true")
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
    bad_format = await setup.transcribe(wav(10), response_format="mp4")
    assert bad_format.json()["error"]["param"] == "response_format"
    low_rate = await setup.transcribe(wav(10, rate=8))  # any byte rate: still 1 s
    assert low_rate.status_code == 200 and low_rate.headers["x-relay-cost-micros"] == "100"
    chat_model = await setup.transcribe(wav(10), model="instruct")
    assert chat_model.status_code == 400 and chat_model.json()["error"]["param"] == "model"
    too_big = await setup.transcribe(b"\x00" * (1024 * 1024 + 10))
    assert too_big.status_code == 413
    assert len(setup.upstream.seen) == 1
    await setup.assert_all_returned()


async def test_a_wav_longer_than_the_maximum_is_400(tmp_path: Path, admin_token: str) -> None:
    upstream = Upstream(default_answer)
    config = make_config(tmp_path, extra=EXTRA, server_extra="max_audio_seconds = 2")
    async with run_relay(config, client_factory=upstream.factory()) as relay:
        _, key = await relay.funded_key("long")
        response = await relay.client.post(
            "/v1/audio/transcriptions",
            headers=auth(key["secret"]),
            data={"model": "whisper"},
            files={"file": ("a.wav", wav(25), "audio/wav")},
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "file"
        assert upstream.seen == []


# ----------------------------------------------------------------- speech


async def test_speech_streams_the_audio_and_bills_per_character(setup: Setup) -> None:
    text = "Twenty characters!!!"
    body = {"model": "tts", "input": text, "voice": "alloy", "speed": 1.5}
    response = await setup.post("/v1/audio/speech", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.content == b"ID3-fake-mp3-bytes" * 100
    assert response.headers["x-relay-cost-micros"] == "300"  # 20 × 15 µ$
    (sent,) = setup.upstream.seen
    assert sent.url == "http://oai.test/v1/audio/speech"
    assert sent.json() == {**body, "model": "tts-1"}
    assert await setup.charged() == [300]
    row = await setup.row("speech")
    assert (row["status"], row["units"], row["cost_micros"], row["stream"]) == (200, 20, 300, 1)
    await setup.assert_all_returned()


async def test_speech_hold_is_exact_and_edges_are_400(setup: Setup) -> None:
    dry = await setup.post(
        "/v1/audio/speech?dryRun=1", json={"model": "tts", "input": "x" * 1000, "voice": "a"}
    )
    assert dry.json()["estimate"]["hold_micros"] == 15_000
    too_long = await setup.post(
        "/v1/audio/speech", json={"model": "tts", "input": "x" * 4097, "voice": "a"}
    )
    assert too_long.status_code == 400
    unpriced = await setup.post(
        "/v1/audio/speech", json={"model": "tts-unpriced", "input": "x", "voice": "a"}
    )
    assert unpriced.status_code == 400 and "usd_per_mchar" in unpriced.json()["error"]["message"]
    assert setup.upstream.seen == []


async def test_speech_upstream_failure_releases_the_hold(setup: Setup) -> None:
    setup.upstream.answer = lambda seen: reply({"error": {"message": "no"}}, 503)
    response = await setup.post(
        "/v1/audio/speech", json={"model": "tts", "input": "hi", "voice": "a"}
    )
    assert response.status_code == 502
    assert await setup.charged() == []
    assert (await setup.row("speech"))["status"] == 502
    await setup.assert_all_returned()


# ----------------------------------------------------------------- image edits


async def test_an_image_edit_is_forwarded_whole_and_priced_per_image(setup: Setup) -> None:
    image, mask = b"\x89PNG\r\n\x1a\nimage-bytes", b"\x89PNG\r\n\x1a\nmask-bytes"
    response = await setup.post(
        "/v1/images/edits",
        data={"model": "pix", "prompt": "add a hat", "n": "2", "size": "1024x1024"},
        files=[("image[]", ("a.png", image, "image/png")), ("mask", ("m.png", mask, "image/png"))],
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    assert response.json()["metadata"]["cost_micros"] == "40000"
    form = setup.upstream.seen[0].form()
    assert setup.upstream.seen[0].url == "http://oai.test/v1/images/edits"
    assert form["model"] == (None, b"gpt-image-1") and form["prompt"] == (None, b"add a hat")
    assert form["image[]"] == ("a.png", image) and form["mask"] == ("m.png", mask)
    assert await setup.charged() == [40_000]
    row = await setup.row("image_edits")
    assert (row["units"], row["cost_micros"]) == (2, 40_000)


async def test_an_image_edit_without_an_image_or_with_bad_n_is_400(setup: Setup) -> None:
    no_image = await setup.post(
        "/v1/images/edits", data={"model": "pix", "prompt": "x"}, files={"mask": ("m", b"1")}
    )
    assert no_image.status_code == 400 and no_image.json()["error"]["param"] == "image"
    bad_n = await setup.post(
        "/v1/images/edits",
        data={"model": "pix", "prompt": "x", "n": "11"},
        files={"image": ("a", b"1")},
    )
    assert bad_n.status_code == 400
    assert setup.upstream.seen == []


# ----------------------------------------------------------------- legacy completions


async def test_a_completion_is_billed_by_tokens(setup: Setup) -> None:
    body = {"model": "instruct", "prompt": ["Say", "hi"], "max_tokens": 5000}
    response = await setup.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["text"] == " world"
    # 100 × 1.5 + 50 × 2 micro-USD
    assert answer["metadata"]["cost_micros"] == "250" and answer["usage"]["cost"] == 0.00025
    sent = setup.upstream.seen[0]
    assert sent.url == "http://oai.test/v1/completions"
    assert sent.json() == {**body, "model": "gpt-3.5-turbo-instruct", "max_tokens": 1000}
    row = await setup.row("completions")
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost_micros"]) == (100, 50, 250)


def completion_stream(seen: Seen) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        base = {"id": "cmpl-s", "object": "text_completion", "model": "gpt-3.5-turbo-instruct"}
        for text in ("Hel", "lo"):
            yield sse_event(
                {**base, "choices": [{"index": 0, "text": text, "finish_reason": None}]}
            )
        yield sse_event({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        yield sse_event({**base, "choices": [], "usage": usage})
        yield sse_event("[DONE]")

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_streamed_completion_keeps_openais_shape(setup: Setup, include_usage: bool) -> None:
    setup.upstream.answer = completion_stream
    body: dict[str, Any] = {"model": "instruct", "prompt": "Say hi", "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = await setup.post("/v1/completions", json=body)
    assert response.status_code == 200
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"]) == "Hello"
    with_choices = [chunk for chunk in chunks if chunk["choices"]]
    assert with_choices[-1]["metadata"]["cost_micros"] == "19"  # 10 × 1.5 + 2 × 2
    assert any(not chunk["choices"] for chunk in chunks) is include_usage
    assert setup.upstream.seen[0].json()["stream_options"] == {"include_usage": True}
    assert await setup.charged() == [19]
    row = await setup.row("completions")
    assert (row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (1, 10, 2)


async def test_a_model_only_claude_serves_gets_400_naming_the_route(setup: Setup) -> None:
    response = await setup.post("/v1/completions", json={"model": "claude-only", "prompt": "x"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "/v1/completions" in error["message"]
    assert setup.upstream.seen == []
    await setup.assert_all_returned()


# ----------------------------------------------------------------- moderations


async def test_a_free_moderation_is_still_logged(setup: Setup) -> None:
    response = await setup.post("/v1/moderations", json={"model": "moderation", "input": "hi"})
    assert response.status_code == 200
    assert response.json()["results"] == [{"flagged": False}]
    assert response.json()["metadata"]["cost_micros"] == "0"
    assert setup.upstream.seen[0].json() == {"model": "omni-moderation-latest", "input": "hi"}
    row = await setup.row("moderations")
    assert (row["status"], row["cost_micros"], row["model"]) == (200, 0, "moderation")


# ----------------------------------------------------------------- faults after admission


FAULT_REQUESTS: dict[str, Callable[[Setup], Any]] = {
    "transcriptions": lambda s: s.transcribe(wav(10)),
    "translations": lambda s: s.transcribe(wav(10), "/v1/audio/translations"),
    "speech": lambda s: s.post(
        "/v1/audio/speech", json={"model": "tts", "input": "hi", "voice": "a"}
    ),
    "image_edits": lambda s: s.post(
        "/v1/images/edits", data={"model": "pix", "prompt": "x"}, files={"image": ("a", b"1")}
    ),
    "completions": lambda s: s.post("/v1/completions", json={"model": "instruct", "prompt": "x"}),
    "moderations": lambda s: s.post("/v1/moderations", json={"model": "moderation", "input": "x"}),
}


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected fault")


@pytest.mark.parametrize("endpoint", list(FAULT_REQUESTS))
async def test_a_fault_after_admission_returns_hold_and_slot(
    setup: Setup, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = FAULT_REQUESTS[endpoint]
    with monkeypatch.context() as patch:
        patch.setattr(setup.relay.state.router, "open_route", boom)
        response = await send(setup)
    assert response.status_code == 500
    row = await setup.row(endpoint)
    assert (row["status"], row["error_code"], row["cost_micros"]) == (500, "internal_error", 0)
    await setup.assert_all_returned()
    again = await send(setup)  # concurrency 1: the slot is back
    assert again.status_code == 200, again.text
    await setup.assert_all_returned()


@pytest.mark.parametrize("endpoint", list(FAULT_REQUESTS))
async def test_a_client_leaving_while_relay_waits_is_499_and_unbilled(
    setup: Setup, endpoint: str
) -> None:
    arrived = asyncio.Event()

    async def never(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    transport = httpx.MockTransport(never)
    for model in setup.relay.state.router.models.values():
        for route in model.routes:
            if route.provider.name == "oai":
                route.provider.client = HttpxUpstream(httpx.AsyncClient(transport=transport))
    request = asyncio.create_task(FAULT_REQUESTS[endpoint](setup))
    await asyncio.wait_for(arrived.wait(), 5)
    request.cancel()  # the client gives up: its connection closes
    with pytest.raises(asyncio.CancelledError):
        await request
    for _ in range(200):
        rows = await setup.relay.rows("SELECT * FROM usage WHERE endpoint = ?", (endpoint,))
        if rows:
            break
        await asyncio.sleep(0.01)
    (row,) = rows
    assert (row["status"], row["error_code"], row["cost_micros"]) == (
        499,
        "client_disconnected",
        0,
    )
    await setup.assert_all_returned()


@pytest.mark.parametrize("endpoint", ["transcriptions", "speech"])
async def test_pricing_that_raises_inside_the_settlement_returns_hold_and_slot(
    setup: Setup, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        if endpoint == "speech":  # raises in the stream's settlement, after the head
            patch.setattr(relay.api.audio, "settle_cost", boom)
        else:
            patch.setattr(relay.api.audio, "audio_cost_micros", boom)
        try:
            response = await FAULT_REQUESTS[endpoint](setup)
        except httpx.HTTPError:
            pass  # the stream was cut after its head: the client sees the connection end
        else:
            assert response.status_code == 500
    assert await setup.charged() == []
    await setup.assert_all_returned()
    again = await FAULT_REQUESTS[endpoint](setup)
    assert again.status_code == 200
    await setup.assert_all_returned()
