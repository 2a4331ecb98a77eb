"""What a request may cost before it runs: prompt token estimates and hold quotes.

No tokenizer, no network: the prompt estimate reads the raw request body in a few C-speed
passes (``bytes.count``/``find``/``translate``), so it is cheap enough for every request.

The rule (``estimate_prompt_tokens``), deliberately on the high side:

- ASCII text: one token per ``ASCII_BYTES_PER_TOKEN`` (3) bytes. English averages about
  4 bytes a token and the body's JSON syntax and field names are counted too, so this
  over-estimates ordinary prompts; JSON-escaped non-ASCII (``\\u00e9``) lands here at 2
  tokens per character.
- Raw UTF-8 non-ASCII bytes: one token per ``NON_ASCII_BYTES_PER_TOKEN`` (2) bytes
  (1.5 tokens per CJK character, 2 per emoji; tokenizers use fewer).
- Media payloads (base64 ``data:`` URLs, base64 ``"data"`` fields as in Anthropic image and
  OpenAI audio parts) and remote ``"url": "http..."`` images: not counted as text but as
  ``MEDIA_TOKENS`` each (a large high-detail image is 1–2k tokens on current models).
- Plus ``TOKENS_PER_MESSAGE`` per ``"role"`` and ``TOKENS_PER_REQUEST`` once (chat framing).

It is a heuristic, not a bound: adversarial text (random strings, single-character words)
or a long PDF can tokenize denser. The wallet then records an *overrun* when the measured
cost exceeds the request's worst case, which is the only way an account can end below its
limit (docs/architecture.md §3.6).
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from relay.money.pricing import (
    ONE,
    ModelPrice,
    image_cost_micros,
    token_cost_micros,
    video_cost_micros,
    worst_case_token_cost_micros,
)

__all__ = [
    "ASCII_BYTES_PER_TOKEN",
    "EXPECTED_OUTPUT_TOKENS",
    "MEDIA_TOKENS",
    "NON_ASCII_BYTES_PER_TOKEN",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_REQUEST",
    "CostQuote",
    "estimate_prompt_tokens",
    "expected_output_tokens",
    "quote_chat",
    "quote_embedding",
    "quote_images",
    "quote_video",
    "worst_case_output_tokens",
]

ASCII_BYTES_PER_TOKEN = 3
NON_ASCII_BYTES_PER_TOKEN = 2
MEDIA_TOKENS = 2_000
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3
# What the cheap hold assumes a chat answer uses when far from any limit
# (docs/architecture.md §3.5).
EXPECTED_OUTPUT_TOKENS = 512
# A base64 "data" field shorter than this is ordinary text, not a media payload.
_MIN_MEDIA_FIELD_BYTES = 256
_ASCII = bytes(range(128))
_JSON_SPACE = b" \t\r\n"
_DATA_URL_MARK = b";base64,"
_DATA_KEY = b'"data"'
_URL_KEY = b'"url"'
_NONE = (0, 0)


class CostQuote(msgspec.Struct, frozen=True):
    """A request's price before it runs: the cheap estimate and the worst case (≥ estimate)."""

    estimate_micros: int
    worst_case_micros: int
    prompt_tokens: int = 0
    max_output_tokens: int = 0


def _string_value_after(body: bytes, key_end: int) -> tuple[int, int] | None:
    """Span of the JSON string value that follows a key ending at ``key_end``, if any."""
    i = key_end
    size = len(body)
    while i < size and body[i] in _JSON_SPACE:
        i += 1
    if i >= size or body[i] != ord(":"):
        return None
    i += 1
    while i < size and body[i] in _JSON_SPACE:
        i += 1
    if i >= size or body[i] != ord('"'):
        return None
    end = body.find(b'"', i + 1)
    return None if end < 0 else (i + 1, end)


def _data_url_payloads(body: bytes, start: int) -> tuple[int, int]:
    """(count, bytes) of base64 ``data:`` URL payloads from the first one at ``start``."""
    count = size = 0
    while start >= 0:
        end = body.find(b'"', start)
        if end < 0:
            end = len(body)
        count += 1
        size += end - start
        start = body.find(_DATA_URL_MARK, end)
    return count, size


def _keyed_media(
    body: bytes, key: bytes, start: int, min_bytes: int, prefix: bytes
) -> tuple[int, int]:
    """(count, bytes) of ``key`` string values, from the first ``key`` at ``start``, that
    start with ``prefix`` and are at least ``min_bytes`` long."""
    count = size = 0
    while start >= 0:
        span = _string_value_after(body, start + len(key))
        next_from = start + len(key)
        if span is not None:
            value_start, value_end = span
            next_from = value_end
            if value_end - value_start >= min_bytes and body.startswith(prefix, value_start):
                # A data URL under "url" was already counted by _data_url_payloads.
                if body.find(_DATA_URL_MARK, value_start, value_end) < 0:
                    count += 1
                    size += value_end - value_start
        start = body.find(key, next_from)
    return count, size


def estimate_prompt_tokens(body: bytes) -> int:
    """Prompt tokens of a JSON request body, on the high side (rule in the module docstring)."""
    # Most bodies carry no media: one find per marker, and the scanners only run on a hit
    # (they resume from it, so no byte is searched twice).
    # The data URL mark is searched from the first ``;``, found with a one-byte search
    # (``memchr``): a multi-byte needle is scanned for byte by byte, and few prompts
    # hold a ``;`` at all.
    semicolon = body.find(b";")
    first = -1 if semicolon < 0 else body.find(_DATA_URL_MARK, semicolon)
    data_urls, data_url_bytes = _NONE if first < 0 else _data_url_payloads(body, first)
    first = body.find(_DATA_KEY)
    fields, field_bytes = (
        _NONE if first < 0 else _keyed_media(body, _DATA_KEY, first, _MIN_MEDIA_FIELD_BYTES, b"")
    )
    first = body.find(_URL_KEY)
    remote = 0 if first < 0 else _keyed_media(body, _URL_KEY, first, 1, b"http")[0]
    non_ascii = 0 if body.isascii() else len(body.translate(None, _ASCII))
    # Media payloads are base64, so all of their bytes are ASCII.
    ascii_text = max(0, len(body) - non_ascii - data_url_bytes - field_bytes)
    return (
        -(-ascii_text // ASCII_BYTES_PER_TOKEN)
        + -(-non_ascii // NON_ASCII_BYTES_PER_TOKEN)
        + (data_urls + fields + remote) * MEDIA_TOKENS
        + body.count(b'"role"') * TOKENS_PER_MESSAGE
        + TOKENS_PER_REQUEST
    )


def worst_case_output_tokens(requested_max: int | None, model_max_output: int) -> int:
    """The most output a request can produce: its ``max_tokens`` clamped to the model's max.

    No ``max_tokens`` means the model's max; a non-positive one is taken as 1 (upstreams
    reject it anyway, and 0 would let any answer count as an overrun).
    """
    if requested_max is None:
        return model_max_output
    return min(max(requested_max, 1), model_max_output)


def expected_output_tokens(requested_max: int | None, model_max_output: int) -> int:
    """The output the cheap hold assumes: typical answer length, never above the worst case."""
    return min(EXPECTED_OUTPUT_TOKENS, worst_case_output_tokens(requested_max, model_max_output))


def quote_chat(
    price: ModelPrice,
    body: bytes,
    *,
    requested_max_tokens: int | None,
    multiplier: Decimal = ONE,
) -> CostQuote:
    """Estimate and worst case of a chat/messages request.

    The worst case bills every estimated prompt token at the dearest input price (a cache
    write can cost more than a plain input token) plus the clamped maximum output.
    """
    prompt = estimate_prompt_tokens(body)
    worst_output = worst_case_output_tokens(requested_max_tokens, price.max_output_tokens)
    # expected_output_tokens(...), without clamping twice.
    expected_output = min(EXPECTED_OUTPUT_TOKENS, worst_output)
    estimate = token_cost_micros(
        price, prompt_tokens=prompt, completion_tokens=expected_output, multiplier=multiplier
    )
    worst = worst_case_token_cost_micros(
        price, prompt_tokens=prompt, completion_tokens=worst_output, multiplier=multiplier
    )
    return CostQuote(estimate, max(estimate, worst), prompt, worst_output)


def quote_embedding(price: ModelPrice, body: bytes, *, multiplier: Decimal = ONE) -> CostQuote:
    """Embeddings bill input only; the over-estimated prompt is both estimate and worst case."""
    prompt = estimate_prompt_tokens(body)
    cost = token_cost_micros(price, prompt_tokens=prompt, multiplier=multiplier)
    return CostQuote(cost, cost, prompt, 0)


def quote_images(
    price: ModelPrice,
    *,
    n: int,
    size: str,
    quality: str | None = None,
    multiplier: Decimal = ONE,
) -> CostQuote:
    """Images are priced per image, so the quote is exact (ValueError for unpriced sizes)."""
    cost = image_cost_micros(price, n=n, size=size, quality=quality, multiplier=multiplier)
    return CostQuote(cost, cost)


def quote_video(
    price: ModelPrice, *, seconds: int | Decimal, multiplier: Decimal = ONE
) -> CostQuote:
    """Video is priced per requested second, so the quote is exact."""
    cost = video_cost_micros(price, seconds=seconds, multiplier=multiplier)
    return CostQuote(cost, cost)
