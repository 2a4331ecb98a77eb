"""The ``mock`` provider's images and video jobs, deterministic and offline.

Images are 1×1 PNGs whose colour derives from the request, as base64 or as a ``data:``
URL. A video job's id carries its creation time and how long the mock takes to
"render" it, so its status is a pure function of the clock: jobs survive a restart of
relay (or of the mock) and need no state.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import zlib
from typing import Any

import msgspec

from relay.upstream.wire_openai import encode

__all__ = [
    "DEFAULT_VIDEO_RENDER_S",
    "image_answer",
    "form_values",
    "image_edit_answer",
    "tiny_png",
    "video_content",
    "video_created",
    "video_status",
]

DEFAULT_VIDEO_RENDER_S = 3.0
_ID_PREFIX = "video_mock_"
_CONTENT_BYTES = 64 * 1024


class _ImageRequest(msgspec.Struct):
    model: str = "mock"
    prompt: str = ""
    n: int = 1
    size: str = "1024x1024"
    response_format: str | None = None


class _VideoRequest(msgspec.Struct):
    model: str = "mock"
    seconds: int | str = "4"
    size: str = "720x1280"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    checksum = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def tiny_png(rgb: bytes) -> bytes:
    """A valid 1×1 truecolour PNG of the colour ``rgb`` (3 bytes)."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + rgb[:3])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def image_answer(body: bytes) -> bytes:
    """An OpenAI images answer with ``n`` deterministic images."""
    request = msgspec.json.decode(body, type=_ImageRequest)
    data = []
    for index in range(max(1, request.n)):
        digest = hashlib.sha256(body + index.to_bytes(4, "big")).digest()
        encoded = base64.b64encode(tiny_png(digest)).decode()
        if request.response_format == "url":
            data.append({"url": f"data:image/png;base64,{encoded}"})
        else:
            data.append({"b64_json": encoded})
    return encode({"created": int(time.time()), "data": data})


def form_values(body: bytes, content_type: str) -> dict[str, bytes]:
    """Each part's name → its bytes, found by splitting on the boundary (enough for a mock)."""
    boundary = content_type.partition("boundary=")[2].strip().strip('"')
    values: dict[str, bytes] = {}
    if not boundary:
        return values
    for chunk in body.split(b"--" + boundary.encode("latin-1")):
        head, sep, data = chunk.partition(b"\r\n\r\n")
        marker = head.find(b'name="')
        if not sep or marker < 0:
            continue
        name_end = head.find(b'"', marker + 6)
        values[head[marker + 6 : name_end].decode("latin-1")] = data.removesuffix(b"\r\n")
    return values


def image_edit_answer(body: bytes, content_type: str) -> bytes:
    """``/images/edits`` (a multipart form): ``n`` images derived from the whole form."""
    form = form_values(body, content_type)
    count = form.get("n", b"1")
    request = {
        "n": int(count) if count.isdigit() and len(count) < 3 else 1,
        "response_format": form.get("response_format", b"b64_json").decode("latin-1"),
        "prompt": hashlib.sha256(body).hexdigest(),
    }
    return image_answer(encode(request))


def _video_view(video_id: str, request: _VideoRequest, status: str, progress: int) -> bytes:
    view: dict[str, Any] = {
        "id": video_id,
        "object": "video",
        "model": request.model,
        "status": status,
        "progress": progress,
        "seconds": str(request.seconds),
        "size": request.size,
    }
    return encode(view)


def video_created(body: bytes, render_s: float, now_ms: int) -> bytes:
    """``POST /videos``: a queued job whose id encodes when it will be done."""
    request = msgspec.json.decode(body, type=_VideoRequest)
    seconds = str(request.seconds)
    if not seconds.isdigit():
        seconds = "4"
    digest = hashlib.sha256(body).hexdigest()[:12]
    video_id = f"{_ID_PREFIX}{now_ms:x}_{int(render_s * 1000):x}_{seconds}_{digest}"
    return _video_view(video_id, _VideoRequest(request.model, seconds, request.size), "queued", 0)


def video_status(video_id: str, now_ms: int) -> bytes | None:
    """``GET /videos/{id}``: progress from the clock; None for an id the mock never made."""
    parts = video_id.removeprefix(_ID_PREFIX).split("_")
    if not video_id.startswith(_ID_PREFIX) or len(parts) != 4:
        return None
    try:
        created_ms, render_ms = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        return None
    done = (now_ms - created_ms) / render_ms if render_ms else 1.0
    request = _VideoRequest(seconds=parts[2])
    if done >= 1:
        return _video_view(video_id, request, "completed", 100)
    if done < 0.1:
        return _video_view(video_id, request, "queued", 0)
    return _video_view(video_id, request, "in_progress", int(done * 100))


def video_content(video_id: str) -> list[bytes]:
    """``GET /videos/{id}/content``: deterministic bytes that start like an MP4, in pieces."""
    seed = hashlib.sha256(video_id.encode()).digest()
    body = b"\x00\x00\x00\x18ftypmp42" + seed * (_CONTENT_BYTES // len(seed))
    return [body[start : start + 16_384] for start in range(0, len(body), 16_384)]
