"""The wire fields relay reads on the audio routes (OpenAI's shapes), bounded.

A transcription answer reports what it used in one of three ways: ``duration`` (seconds,
``verbose_json``), ``usage: {"type": "duration", "seconds": N}`` (whisper-1 today) or
``usage: {"type": "tokens", "input_tokens", "output_tokens"}`` (gpt-4o-transcribe). The
seconds are read as the JSON number's own digits into a ``Decimal`` (never a float) and
must lie in ``0 ≤ s ≤ MAX_REPORTED_AUDIO_SECONDS``; tokens are bounded like chat usage.
Anything else (negative, huge, a string) is an upstream fault: ``AudioUsageInvalid``.
A ``text``, ``srt`` or ``vtt`` answer is plain text and reports nothing.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from relay.upstream.wire_openai import ReportedTokens

__all__ = [
    "MAX_REPORTED_AUDIO_SECONDS",
    "MAX_SPEECH_CHARACTERS",
    "AudioUsage",
    "AudioUsageInvalid",
    "SpeechRequest",
    "TRANSCRIPT_FORMATS",
    "decode_speech_request",
    "transcription_usage",
]

# No single upload lasts a day; an upstream reporting more (or less than 0) is broken.
MAX_REPORTED_AUDIO_SECONDS = 86_400
# OpenAI's own limit on a speech request's input.
MAX_SPEECH_CHARACTERS = 4_096
TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")


class SpeechRequest(msgspec.Struct):
    model: str
    input: Annotated[str, Meta(max_length=MAX_SPEECH_CHARACTERS)]
    voice: str | dict[str, str]
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, Meta(ge=0.25, le=4.0)] | None = None
    instructions: str | None = None


class AudioUsageInvalid(ValueError):
    """The upstream reported audio usage out of bounds: never billed as reported."""


class AudioUsage(msgspec.Struct, frozen=True):
    """What a transcription used: seconds, or tokens (then ``seconds`` is None)."""

    seconds: Decimal | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    by_tokens: bool = False


class _Usage(msgspec.Struct):
    type: str | None = None
    seconds: msgspec.Raw = msgspec.Raw()
    input_tokens: ReportedTokens | None = None
    output_tokens: ReportedTokens | None = None


class _Answer(msgspec.Struct):
    duration: msgspec.Raw = msgspec.Raw()
    usage: _Usage | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode
decode_speech_request = msgspec.json.Decoder(SpeechRequest).decode


def _seconds(raw: msgspec.Raw) -> Decimal | None:
    text = bytes(raw).strip()
    if not text or text == b"null":
        return None
    try:
        seconds = Decimal(text.decode("ascii"))
    except (InvalidOperation, UnicodeDecodeError):
        raise AudioUsageInvalid("audio duration is not a number") from None
    # Decimal accepts "NaN"/"Infinity" and a JSON string's quotes fail above.
    if not seconds.is_finite() or not 0 <= seconds <= MAX_REPORTED_AUDIO_SECONDS:
        raise AudioUsageInvalid("audio duration out of range")
    return seconds


def transcription_usage(raw: bytes) -> AudioUsage | None:
    """The usage a JSON transcription answer reports; None when it reports none.

    ``msgspec.DecodeError`` for a body that is not a JSON object; ``AudioUsageInvalid``
    for usage out of bounds (token counts included).
    """
    try:
        answer = _decode_answer(raw)
    except msgspec.ValidationError as exc:
        if "`$.usage" in str(exc):
            raise AudioUsageInvalid("audio token usage out of range") from None
        raise
    usage = answer.usage
    if usage is not None and usage.type == "tokens":
        return AudioUsage(
            input_tokens=usage.input_tokens or 0,
            output_tokens=usage.output_tokens or 0,
            by_tokens=True,
        )
    seconds = _seconds(usage.seconds) if usage is not None else None
    if seconds is None:
        seconds = _seconds(answer.duration)
    return None if seconds is None else AudioUsage(seconds=seconds)
