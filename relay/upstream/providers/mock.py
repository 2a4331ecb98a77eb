"""An in-process fake of an OpenAI-compatible upstream, for the ``mock`` provider kind.

It answers deterministically (the same request gives the same answer), streams in
``mock_stream_chunks`` pieces, honours ``stream_options.include_usage`` and reports
usage, so the embedded default config exercises relay's real code paths offline.
Its reply never repeats the prompt. Legacy completions and moderations are answered here;
images and video jobs in ``relay.upstream.providers.mock_media``, audio in
``relay.upstream.providers.mock_audio``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec

from relay.config import ProviderConfig
from relay.upstream.client import Timeouts, UpstreamResponse, UpstreamTooLarge
from relay.upstream.providers.mock_audio import speech_audio, transcription_answer
from relay.upstream.providers.mock_media import (
    DEFAULT_VIDEO_RENDER_S,
    image_answer,
    image_edit_answer,
    video_content,
    video_created,
    video_status,
)
from relay.upstream.wire_openai import encode

__all__ = ["MockUpstream"]

_REPLY = (
    "Hello from relay's mock model. This answer is generated locally, costs nothing "
    "upstream, and lets you try keys, limits and billing without a provider account."
)
_EMBEDDING_DIMENSIONS = 16


class _MockRequest(msgspec.Struct):
    model: str = "mock"
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    input: Any = None
    prompt: Any = None


class _MockResponse:
    def __init__(
        self,
        status: int,
        body: bytes = b"",
        pieces: list[bytes] | None = None,
        content_type: str = "application/json",
    ):
        self.status = status
        self.headers: Mapping[str, str] = {"content-type": content_type}
        self._body = body
        self._pieces = pieces

    async def read(self, max_bytes: int | None = None) -> bytes:
        body = b"".join(self._pieces) if self._pieces is not None else self._body
        if max_bytes is not None and len(body) > max_bytes:
            raise UpstreamTooLarge(f"upstream answer is larger than {max_bytes} bytes")
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self._pieces if self._pieces is not None else [self._body]:
            yield piece
            await asyncio.sleep(0)  # let the client see each piece as its own chunk

    async def aclose(self) -> None:
        return None


def _prompt_tokens(body: bytes) -> int:
    return max(1, len(body) // 4)


def _reply_words(max_tokens: int | None) -> list[str]:
    words = _REPLY.split(" ")
    return words[:max_tokens] if max_tokens else words


def _completion_id(body: bytes) -> str:
    return "chatcmpl-mock-" + hashlib.sha256(body).hexdigest()[:20]


class MockUpstream:
    """Implements ``UpstreamClient`` without a network."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        video_render_s: float = DEFAULT_VIDEO_RENDER_S,
        clock: Callable[[], float] = time.time,
    ):
        self._latency_s = config.mock_latency_ms / 1000
        self._chunks = config.mock_stream_chunks
        self._video_render_s = video_render_s
        self._clock = clock

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        body = body or b"{}"
        if "/videos" in url:
            return self._videos(method, url.split("/videos", 1)[1], body)
        content_type = headers.get("content-type", "")
        for path in ("/audio/transcriptions", "/audio/translations"):
            if url.endswith(path):
                answer, answer_type = transcription_answer(
                    body, content_type, path.endswith("translations")
                )
                return _MockResponse(200, answer, content_type=answer_type)
        if url.endswith("/images/edits"):
            return _MockResponse(200, image_edit_answer(body, content_type))
        if url.endswith("/audio/speech"):
            pieces, audio_type = speech_audio(body)
            return _MockResponse(200, pieces=pieces, content_type=audio_type)
        request = msgspec.json.decode(body, type=_MockRequest)
        if url.endswith("/chat/completions"):
            return self._chat(body, request)
        if url.endswith("/completions"):
            return self._completions(body, request)
        if url.endswith("/embeddings"):
            return self._embeddings(body, request)
        if url.endswith("/moderations"):
            return _MockResponse(200, _moderation(body, request))
        if url.endswith("/images/generations"):
            return _MockResponse(200, image_answer(body))
        return _not_found()

    def _videos(self, method: str, path: str, body: bytes) -> _MockResponse:
        """``POST /videos``, ``GET /videos/{id}``, ``GET /videos/{id}/content``."""
        now_ms = int(self._clock() * 1000)
        if method == "POST" and path in ("", "/"):
            return _MockResponse(200, video_created(body, self._video_render_s, now_ms))
        video_id, _, rest = path.strip("/").partition("/")
        status = video_status(video_id, now_ms)
        if method != "GET" or status is None or rest not in ("", "content"):
            return _not_found()
        if not rest:
            return _MockResponse(200, status)
        if b'"completed"' not in status:
            return _MockResponse(409, encode({"error": {"message": "video is not ready"}}))
        return _MockResponse(200, pieces=video_content(video_id), content_type="video/mp4")

    def _chat(self, body: bytes, request: _MockRequest) -> _MockResponse:
        words = _reply_words(request.max_completion_tokens or request.max_tokens)
        usage = {
            "prompt_tokens": _prompt_tokens(body),
            "completion_tokens": len(words),
            "total_tokens": _prompt_tokens(body) + len(words),
        }
        base = {"id": _completion_id(body), "created": int(time.time()), "model": request.model}
        if not request.stream:
            message = {"role": "assistant", "content": " ".join(words)}
            answer = {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
            return _MockResponse(200, encode(answer))
        return _MockResponse(
            200, pieces=self._stream_pieces(base, words, usage, request), content_type=_SSE
        )

    def _stream_pieces(
        self,
        base: dict[str, Any],
        words: list[str],
        usage: dict[str, int],
        request: _MockRequest,
    ) -> list[bytes]:
        per_chunk = max(1, -(-len(words) // self._chunks))
        pieces = []
        for start in range(0, len(words), per_chunk):
            text = " ".join(words[start : start + per_chunk])
            delta = {"content": text if start == 0 else " " + text}
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            pieces.append(_event({**base, "object": "chat.completion.chunk", "choices": [choice]}))
        last = {"index": 0, "delta": {}, "finish_reason": "stop"}
        pieces.append(_event({**base, "object": "chat.completion.chunk", "choices": [last]}))
        if (request.stream_options or {}).get("include_usage"):
            final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            pieces.append(_event(final))
        pieces.append(b"data: [DONE]\n\n")
        return pieces

    def _completions(self, body: bytes, request: _MockRequest) -> _MockResponse:
        """Legacy ``/completions``: one text choice per prompt, streamed like chat."""
        words = _reply_words(request.max_tokens)
        prompts = request.prompt if isinstance(request.prompt, list) else [request.prompt]
        usage = {
            "prompt_tokens": _prompt_tokens(body),
            "completion_tokens": len(words) * len(prompts),
            "total_tokens": _prompt_tokens(body) + len(words) * len(prompts),
        }
        base = {
            "id": "cmpl-mock-" + _completion_id(body)[14:],
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
        }
        if not request.stream:
            choices = [
                {"index": i, "text": " ".join(words), "logprobs": None, "finish_reason": "stop"}
                for i in range(len(prompts))
            ]
            return _MockResponse(200, encode({**base, "choices": choices, "usage": usage}))
        pieces = []
        for i in range(len(prompts)):
            for position, word in enumerate(words):
                text = word if position == 0 else " " + word
                choice = {"index": i, "text": text, "logprobs": None, "finish_reason": None}
                pieces.append(_event({**base, "choices": [choice]}))
            last = {"index": i, "text": "", "logprobs": None, "finish_reason": "stop"}
            pieces.append(_event({**base, "choices": [last]}))
        if (request.stream_options or {}).get("include_usage"):
            pieces.append(_event({**base, "choices": [], "usage": usage}))
        pieces.append(b"data: [DONE]\n\n")
        return _MockResponse(200, pieces=pieces, content_type=_SSE)

    def _embeddings(self, body: bytes, request: _MockRequest) -> _MockResponse:
        inputs = request.input if isinstance(request.input, list) else [request.input]
        data = []
        for index, item in enumerate(inputs):
            digest = hashlib.sha256(encode(item)).digest()
            vector = [round((b - 127.5) / 127.5, 6) for b in digest[:_EMBEDDING_DIMENSIONS]]
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = _prompt_tokens(body)
        answer = {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return _MockResponse(200, encode(answer))

    async def aclose(self) -> None:
        return None


_SSE = "text/event-stream"


_MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


def _moderation(body: bytes, request: _MockRequest) -> bytes:
    """Nothing is ever flagged; the scores are small and derive from each input."""
    inputs = request.input if isinstance(request.input, list) else [request.input]
    results = []
    for item in inputs:
        digest = hashlib.sha256(encode(item)).digest()
        scores = {
            name: round(digest[i] / 255_000, 6) for i, name in enumerate(_MODERATION_CATEGORIES)
        }
        categories = dict.fromkeys(_MODERATION_CATEGORIES, False)
        results.append({"flagged": False, "categories": categories, "category_scores": scores})
    moderation_id = "modr-mock-" + hashlib.sha256(body).hexdigest()[:20]
    return encode({"id": moderation_id, "model": request.model, "results": results})


def _not_found() -> _MockResponse:
    error = {"error": {"message": "not found", "type": "invalid_request_error"}}
    return _MockResponse(404, encode(error))


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + encode(payload) + b"\n\n"
