"""What audio routes may cost before they run: upload durations and speech quotes.

A transcription is billed per second of audio (``usd_per_audio_second``) or, for models
such as gpt-4o-transcribe that report tokens, per token. Its hold needs the audio's
duration before the upstream has heard it:

- A WAV upload declares it: the ``fmt `` chunk's byte rate and the ``data`` chunk's size
  give the duration exactly (``wav_seconds``): the estimate, and rounded up to a whole
  second (as upstreams bill) the worst case; a WAV longer than
  ``[server] max_audio_seconds`` is refused.
- Any other container (mp3, m4a, ogg, webm, flac, ...) is estimated from its size: the
  cheap hold assumes ``TYPICAL_BYTES_PER_SECOND`` (128 kbit/s), the worst case
  ``WORST_BYTES_PER_SECOND`` (8 kbit/s, below any speech codec setting the upstreams
  accept), both capped at ``max_audio_seconds``. A longer upload is billed at most the
  worst case (the wallet records the overrun).

For token-billed models the worst case also covers tokens: ``AUDIO_TOKENS_PER_SECOND``
input tokens and ``TRANSCRIPT_TOKENS_PER_SECOND`` output tokens per second of audio,
both on the high side (speech runs at about 3 words, 4 tokens, a second).
A speech (TTS) request is priced per input character, so its quote is exact.
"""

from __future__ import annotations

import struct
from decimal import ROUND_CEILING, Decimal

from relay.money.estimate import CostQuote
from relay.money.pricing import (
    ONE,
    ModelPrice,
    audio_cost_micros,
    character_cost_micros,
    token_cost_micros,
    worst_case_token_cost_micros,
)

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "TRANSCRIPT_TOKENS_PER_SECOND",
    "TYPICAL_BYTES_PER_SECOND",
    "WORST_BYTES_PER_SECOND",
    "AudioLength",
    "audio_length",
    "quote_speech",
    "quote_transcription",
    "wav_seconds",
]

TYPICAL_BYTES_PER_SECOND = 16_000
WORST_BYTES_PER_SECOND = 1_000
AUDIO_TOKENS_PER_SECOND = 50
TRANSCRIPT_TOKENS_PER_SECOND = 10
_MILLIS = Decimal(1000)
# A WAV's chunks before ``data`` (fmt, LIST, fact, ...) are small: look no further.
_WAV_HEADER_SCAN = 64 * 1024


class AudioLength:
    """An upload's duration in seconds: the estimate and the worst case (≥ estimate)."""

    __slots__ = ("estimate", "worst", "exact")

    def __init__(self, estimate: Decimal, worst: Decimal, *, exact: bool):
        self.estimate = estimate
        self.worst = worst
        self.exact = exact


def _millis_up(numerator: int, denominator: int) -> Decimal:
    """``numerator / denominator`` seconds, rounded up to a whole millisecond, exactly."""
    return Decimal(-(-(numerator * 1000) // denominator)) / _MILLIS


def wav_seconds(data: bytes) -> Decimal | None:
    """The duration a RIFF/WAVE file declares, or None when ``data`` is not one.

    A ``data`` chunk that declares more than the upload holds (a streamed WAV writes
    0xFFFFFFFF) is measured by the bytes actually there.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    byte_rate = 0
    offset = 12
    limit = min(len(data), _WAV_HEADER_SCAN)
    while offset + 8 <= limit:
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(data):
            (byte_rate,) = struct.unpack_from("<I", data, body + 8)
        elif chunk_id == b"data":
            if byte_rate <= 0:
                return None
            present = min(size, len(data) - body)
            return _millis_up(present, byte_rate)
        offset = body + size + (size & 1)  # chunks are padded to an even length
    return None


def audio_length(data: bytes, max_seconds: int) -> AudioLength:
    """The upload's duration: exact for WAV (ValueError past ``max_seconds``), else an
    estimate from its size (module docstring), each at least one second."""
    declared = wav_seconds(data)
    if declared is not None:
        if declared > max_seconds:
            raise ValueError(f"the audio lasts {declared} s, more than the {max_seconds} s allowed")
        # Upstreams bill whole seconds (whisper-1 reports ``seconds`` rounded up).
        return AudioLength(
            declared, max(declared.to_integral_value(ROUND_CEILING), ONE), exact=True
        )
    cap = Decimal(max_seconds)
    estimate = min(max(_millis_up(len(data), TYPICAL_BYTES_PER_SECOND), ONE), cap)
    worst = min(max(_millis_up(len(data), WORST_BYTES_PER_SECOND), ONE), cap)
    return AudioLength(estimate, worst, exact=False)


def _audio_tokens(seconds: Decimal, per_second: int) -> int:
    return int(-(-(seconds * per_second) // 1))


def quote_transcription(
    price: ModelPrice, length: AudioLength, prompt_tokens: int, *, multiplier: Decimal = ONE
) -> CostQuote:
    """Estimate and worst case of a transcription: per second, and per token when the
    model has token prices (whichever the upstream reports is what settles)."""
    estimate = audio_cost_micros(price, seconds=length.estimate, multiplier=multiplier)
    worst = audio_cost_micros(price, seconds=length.worst, multiplier=multiplier)
    if price.input_usd_per_mtok or price.output_usd_per_mtok:
        estimate = max(
            estimate,
            token_cost_micros(
                price,
                prompt_tokens=prompt_tokens
                + _audio_tokens(length.estimate, AUDIO_TOKENS_PER_SECOND),
                completion_tokens=_audio_tokens(length.estimate, TRANSCRIPT_TOKENS_PER_SECOND),
                multiplier=multiplier,
            ),
        )
        worst = max(
            worst,
            worst_case_token_cost_micros(
                price,
                prompt_tokens=prompt_tokens + _audio_tokens(length.worst, AUDIO_TOKENS_PER_SECOND),
                completion_tokens=_audio_tokens(length.worst, TRANSCRIPT_TOKENS_PER_SECOND),
                multiplier=multiplier,
            ),
        )
    return CostQuote(estimate, max(estimate, worst))


def quote_speech(price: ModelPrice, characters: int, *, multiplier: Decimal = ONE) -> CostQuote:
    """Speech is priced per input character, known up front: the quote is exact
    (ValueError when the model has no ``usd_per_mchar``)."""
    cost = character_cost_micros(price, characters=characters, multiplier=multiplier)
    return CostQuote(cost, cost)
