"""The ``mock`` provider's audio: transcriptions, translations and speech, offline.

A transcription reads the uploaded form just enough to answer like OpenAI (the
``response_format`` asked for, the audio's duration: exact for a WAV, else from its
size at 128 kbit/s) with a deterministic sentence that never repeats the audio. Speech
answers a short, valid silent WAV (or bytes shaped like the asked format) whose length
follows the input, in pieces, as a real upstream streams it.
"""

from __future__ import annotations

import hashlib
import struct
from decimal import ROUND_CEILING, Decimal
from typing import Any

import msgspec

from relay.money.audio_estimate import TYPICAL_BYTES_PER_SECOND, wav_seconds
from relay.upstream.providers.mock_media import form_values
from relay.upstream.wire_openai import encode

__all__ = ["SPEECH_TYPES", "speech_audio", "transcription_answer"]

SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
_PIECE = 4_096
_SAMPLE_RATE = 8_000  # 8 kHz, 8-bit mono: small bodies, still a valid WAV
_CHARS_PER_SECOND = 15  # about how fast a voice reads


def _seconds(audio: bytes) -> Decimal:
    declared = wav_seconds(audio)
    if declared is not None:
        return declared
    estimate = Decimal(len(audio)) / TYPICAL_BYTES_PER_SECOND
    return max(estimate.quantize(Decimal("0.01"), rounding=ROUND_CEILING), Decimal("0.1"))


def _subtitles(text: str, seconds: Decimal, vtt: bool) -> str:
    end = int(seconds * 1000)
    stamp = f"{end // 3_600_000:02d}:{end // 60_000 % 60:02d}:{end // 1000 % 60:02d}"
    millis = f"{end % 1000:03d}"
    if vtt:
        return f"WEBVTT\n\n00:00:00.000 --> {stamp}.{millis}\n{text}\n"
    return f"1\n00:00:00,000 --> {stamp},{millis}\n{text}\n"


def transcription_answer(body: bytes, content_type: str, translate: bool) -> tuple[bytes, str]:
    """The answer body and its content type, in the form's ``response_format``."""
    form = form_values(body, content_type)
    audio = form.get("file", b"")
    seconds = _seconds(audio)
    digest = hashlib.sha256(audio).hexdigest()[:8]
    task = "translate" if translate else "transcribe"
    text = f"Mock {task} of {len(audio)} bytes of audio ({digest}) by relay's mock model."
    fmt = form.get("response_format", b"json").decode("latin-1")
    if fmt == "text":
        return text.encode(), "text/plain; charset=utf-8"
    if fmt in ("srt", "vtt"):
        return _subtitles(text, seconds, fmt == "vtt").encode(), "text/plain; charset=utf-8"
    usage = {"type": "duration", "seconds": int(seconds.to_integral_value(ROUND_CEILING))}
    answer: dict[str, Any] = {"text": text, "usage": usage}
    if fmt == "verbose_json":
        segment = {"id": 0, "start": 0.0, "end": float(seconds), "text": text}
        answer = {
            "task": task,
            "language": "english",
            "duration": float(seconds),
            "text": text,
            "segments": [segment],
            "usage": usage,
        }
    return encode(answer), "application/json"


class _Speech(msgspec.Struct):
    input: str = ""
    response_format: str = "mp3"


def _silent_wav(seconds: int) -> bytes:
    frames = _SAMPLE_RATE * seconds
    fmt = struct.pack("<HHIIHH", 1, 1, _SAMPLE_RATE, _SAMPLE_RATE, 1, 8)
    header = b"RIFF" + struct.pack("<I", 36 + frames) + b"WAVE"
    header += b"fmt " + struct.pack("<I", len(fmt)) + fmt
    return header + b"data" + struct.pack("<I", frames) + b"\x80" * frames


def speech_audio(body: bytes) -> tuple[list[bytes], str]:
    """The audio's pieces and content type: silence as long as reading the input takes."""
    request = msgspec.json.decode(body, type=_Speech)
    seconds = max(1, -(-len(request.input) // _CHARS_PER_SECOND))
    fmt = request.response_format if request.response_format in SPEECH_TYPES else "mp3"
    if fmt == "wav":
        audio = _silent_wav(seconds)
    else:
        seed = hashlib.sha256(body).digest()
        audio = b"ID3\x04\x00\x00" + seed * (seconds * 64)  # shaped like the format, not real
    pieces = [audio[start : start + _PIECE] for start in range(0, len(audio), _PIECE)]
    return pieces, SPEECH_TYPES[fmt]
