"""Audio quotes (``relay.money.audio_estimate``), their prices and the multipart round trip
the audio and image-edit routes forward."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import ModelConfig
from relay.http.multipart import (
    FormPart,
    encode_form,
    form_boundary,
    form_content_type,
    parse_parts,
)
from relay.money.audio_estimate import audio_length, quote_speech, quote_transcription, wav_seconds
from relay.money.pricing import ModelPrice, audio_cost_micros, character_cost_micros


def riff(chunks: list[tuple[bytes, bytes]], declared: dict[bytes, int] | None = None) -> bytes:
    body = b"WAVE"
    for chunk_id, data in chunks:
        size = (declared or {}).get(chunk_id, len(data))
        body += chunk_id + struct.pack("<I", size) + data + (b"\x00" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


FMT_16K = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)  # 32,000 bytes a second


def price(**fields: str) -> ModelPrice:
    return ModelPrice.from_config(ModelConfig(name="m", routes=["p:m"], **fields))  # type: ignore[arg-type]


def test_wav_duration_is_read_from_the_header() -> None:
    audio = riff([(b"fmt ", FMT_16K), (b"LIST", b"x" * 5), (b"data", b"\x00" * 48_000)])
    assert wav_seconds(audio) == Decimal("1.5")
    length = audio_length(audio, 60)
    assert (length.estimate, length.worst, length.exact) == (Decimal("1.5"), Decimal(2), True)


def test_a_streamed_wav_is_measured_by_the_bytes_present() -> None:
    audio = riff([(b"fmt ", FMT_16K), (b"data", b"\x00" * 16_000)], {b"data": 0xFFFFFFFF})
    assert wav_seconds(audio) == Decimal("0.5")


@pytest.mark.parametrize(
    "audio",
    [
        b"",
        b"ID3\x04" + b"\x00" * 100,
        riff([(b"data", b"\x00" * 10)]),  # no fmt chunk before data
        riff([(b"fmt ", struct.pack("<HHIIHH", 1, 1, 0, 0, 0, 0)), (b"data", b"\x00")]),
        b"RIFF\x00\x00\x00\x00WAVEfmt ",  # cut short
    ],
)
def test_what_is_not_a_usable_wav_has_no_declared_duration(audio: bytes) -> None:
    assert wav_seconds(audio) is None


def test_other_formats_are_estimated_from_their_size_and_capped() -> None:
    length = audio_length(b"\x01" * 160_000, 7_200)
    assert (length.estimate, length.worst, length.exact) == (Decimal(10), Decimal(160), False)
    capped = audio_length(b"\x01" * 160_000, 60)
    assert (capped.estimate, capped.worst) == (Decimal(10), Decimal(60))
    tiny = audio_length(b"\x01", 60)
    assert tiny.estimate == tiny.worst == Decimal(1)


def test_a_wav_longer_than_the_maximum_is_refused() -> None:
    audio = riff([(b"fmt ", FMT_16K), (b"data", b"\x00" * 96_000)])  # 3 s
    with pytest.raises(ValueError, match="more than the 2 s"):
        audio_length(audio, 2)


def test_audio_and_character_prices_are_exact() -> None:
    whisper = price(usd_per_audio_second="0.0001")
    assert audio_cost_micros(whisper, seconds=Decimal("3.25")) == 325
    assert audio_cost_micros(whisper, seconds=Decimal("0.001")) == 1  # rounded up once
    assert audio_cost_micros(price(), seconds=Decimal(5)) == 0  # bills tokens instead
    with pytest.raises(TypeError):
        audio_cost_micros(whisper, seconds=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        audio_cost_micros(whisper, seconds=Decimal("NaN"))
    tts = price(usd_per_mchar="15")
    assert character_cost_micros(tts, characters=4_096) == 61_440
    assert character_cost_micros(tts, characters=1, multiplier=Decimal("0.5")) == 8
    with pytest.raises(ValueError, match="usd_per_mchar"):
        character_cost_micros(price(), characters=1)
    assert quote_speech(tts, 100).worst_case_micros == 1_500


def test_a_token_priced_transcription_holds_the_token_worst_case() -> None:
    both = price(usd_per_audio_second="0.0001", input_usd_per_mtok="2.5", output_usd_per_mtok="10")
    length = audio_length(b"\x01" * 16_000, 7_200)  # 1 s estimate, 16 s worst
    quote = quote_transcription(both, length, 0)
    # tokens: 50 audio (× 2.5 µ$) + 10 transcript (× 10 µ$) a second = 225 µ$ > 100 µ$
    assert quote.estimate_micros == 225
    assert quote.worst_case_micros == 16 * 225


def test_a_windows_path_and_a_quote_in_a_filename_survive() -> None:
    parts = [FormPart("file", b"x", 'C:\\dir\\say "hi".wav', "audio/wav")]
    boundary = form_boundary(parts)
    (parsed,) = parse_parts(encode_form(parts, boundary), form_content_type(boundary))
    assert parsed.filename == 'C:\\dir\\say "hi".wav'


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            # Not a backslash: the standard library's header parser misreads a quoted name
            # that ends in one (``name="\\"; filename=...``), whoever encoded it.
            st.text(
                st.characters(min_codepoint=48, max_codepoint=122, blacklist_characters="\\"),
                min_size=1,
                max_size=8,
            ),
            st.binary(max_size=300),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_a_form_survives_encoding_and_parsing_byte_for_byte(
    fields: list[tuple[str, bytes, bool]],
) -> None:
    parts = [
        FormPart(
            name,
            data,
            f'{name}.bin"\r\n' if is_file else None,
            "application/x" if is_file else None,
        )
        for name, data, is_file in fields
    ]
    boundary = form_boundary(parts)
    parsed = parse_parts(encode_form(parts, boundary), form_content_type(boundary))
    assert [(part.name, part.data) for part in parsed] == [(p.name, p.data) for p in parts]
    assert [part.filename is None for part in parsed] == [p.filename is None for p in parts]
