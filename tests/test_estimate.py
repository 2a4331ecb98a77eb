from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest

from relay.config import ModelConfig
from relay.money.estimate import (
    EXPECTED_OUTPUT_TOKENS,
    MEDIA_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REQUEST,
    CostQuote,
    estimate_prompt_tokens,
    expected_output_tokens,
    quote_chat,
    quote_embedding,
    quote_images,
    quote_video,
    worst_case_output_tokens,
)
from relay.money.pricing import ModelPrice, token_cost_micros


def chat_body(*contents: object, compact: bool = True) -> bytes:
    messages = [{"role": "user", "content": content} for content in contents]
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(
        {"model": "m", "messages": messages}, separators=separators, ensure_ascii=False
    ).encode()


def price_of(**fields: object) -> ModelPrice:
    return ModelPrice.from_config(ModelConfig(name="m", routes=["p:m"], **fields))  # type: ignore[arg-type]


def test_ascii_text_counts_a_token_per_three_bytes_plus_framing() -> None:
    body = chat_body("x" * 300)
    expected = -(-len(body) // 3) + TOKENS_PER_MESSAGE + TOKENS_PER_REQUEST
    assert estimate_prompt_tokens(body) == expected


def test_estimate_is_above_a_typical_english_tokenization() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 200  # ~10 tokens per sentence
    assert estimate_prompt_tokens(chat_body(text)) > 10 * 200


def test_raw_non_ascii_counts_a_token_per_two_bytes() -> None:
    ascii_body = chat_body("")
    cjk = "漢" * 100  # 300 UTF-8 bytes → 150 tokens
    body = chat_body(cjk)
    assert estimate_prompt_tokens(body) == estimate_prompt_tokens(ascii_body) + 150


def test_every_message_adds_its_overhead() -> None:
    one = estimate_prompt_tokens(chat_body("hi"))
    two = estimate_prompt_tokens(chat_body("hi", "hi"))
    assert two - one >= TOKENS_PER_MESSAGE


def test_base64_image_data_url_counts_a_fixed_amount_not_its_size() -> None:
    payload = base64.b64encode(bytes(300_000)).decode()
    image = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{payload}"}},
    ]
    tokens = estimate_prompt_tokens(chat_body(image))
    assert MEDIA_TOKENS <= tokens < MEDIA_TOKENS + 100


def test_anthropic_base64_source_and_remote_urls_count_as_media() -> None:
    payload = base64.b64encode(bytes(30_000)).decode()
    parts = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": payload}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
    ]
    tokens = estimate_prompt_tokens(chat_body(parts, compact=False))
    assert 2 * MEDIA_TOKENS <= tokens < 2 * MEDIA_TOKENS + 100


def test_a_short_data_field_is_ordinary_text() -> None:
    body = chat_body([{"type": "text", "text": "x", "data": "abc"}])
    assert estimate_prompt_tokens(body) < MEDIA_TOKENS


def test_escaped_quotes_in_text_are_not_mistaken_for_a_data_key() -> None:
    text = '"data": "' + "A" * 3000 + '"'
    tokens = estimate_prompt_tokens(chat_body(text))
    assert tokens >= 3000 // 3


def test_empty_and_garbage_bodies_still_estimate() -> None:
    assert estimate_prompt_tokens(b"") == TOKENS_PER_REQUEST
    assert estimate_prompt_tokens(b'{"data":') > 0
    assert estimate_prompt_tokens(b'"url" : "http') > 0


def test_estimate_of_a_large_body_grows_with_its_size() -> None:
    small = estimate_prompt_tokens(chat_body("word " * 4_000))
    large = estimate_prompt_tokens(chat_body("word " * 400_000))  # 2 MB
    assert 50 * small < large < 200 * small


@pytest.mark.parametrize(
    ("requested", "model_max", "worst"),
    [(None, 4096, 4096), (100, 4096, 100), (10_000, 4096, 4096), (0, 4096, 1), (-5, 4096, 1)],
)
def test_worst_case_output_is_clamped(requested: int | None, model_max: int, worst: int) -> None:
    assert worst_case_output_tokens(requested, model_max) == worst


def test_expected_output_never_exceeds_the_worst_case() -> None:
    assert expected_output_tokens(None, 16_384) == EXPECTED_OUTPUT_TOKENS
    assert expected_output_tokens(10, 16_384) == 10


def test_chat_quote_estimate_and_worst_case() -> None:
    price = price_of(
        input_usd_per_mtok="3",
        output_usd_per_mtok="15",
        cache_write_usd_per_mtok="3.75",
        max_output_tokens=8192,
    )
    body = chat_body("hello " * 100)
    quote = quote_chat(price, body, requested_max_tokens=None)
    prompt = estimate_prompt_tokens(body)
    assert quote.prompt_tokens == prompt
    assert quote.max_output_tokens == 8192
    assert quote.estimate_micros == token_cost_micros(
        price, prompt_tokens=prompt, completion_tokens=EXPECTED_OUTPUT_TOKENS
    )
    # Worst case: every prompt token as a cache write, plus the full output.
    assert quote.worst_case_micros == -(-(prompt * 375) // 100) + 8192 * 15
    small = quote_chat(price, body, requested_max_tokens=10, multiplier=Decimal("0.5"))
    assert small.estimate_micros <= small.worst_case_micros < quote.worst_case_micros


def test_embedding_image_and_video_quotes_are_exact() -> None:
    embed = quote_embedding(price_of(input_usd_per_mtok="0.02"), b'{"input":"hello"}')
    assert embed.estimate_micros == embed.worst_case_micros
    images = quote_images(
        price_of(kind="image", usd_per_image="0.04"), n=2, size="1024x1024", quality="hd"
    )
    assert images == CostQuote(80_000, 80_000)
    video = quote_video(price_of(kind="video", usd_per_video_second="0.5"), seconds=4)
    assert video == CostQuote(2_000_000, 2_000_000)
