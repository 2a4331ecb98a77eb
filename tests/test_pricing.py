from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import ModelConfig
from relay.money.pricing import (
    ModelPrice,
    image_cost_micros,
    micros_to_usd,
    parse_multiplier,
    pricing_view,
    token_cost_micros,
    usd_to_micros,
    video_cost_micros,
    worst_case_token_cost_micros,
)


def price_of(**fields: object) -> ModelPrice:
    config = ModelConfig(name="m", routes=["p:m"], **fields)  # type: ignore[arg-type]
    return ModelPrice.from_config(config)


def test_from_config_parses_exact_decimals_and_defaults_cache_prices_to_input() -> None:
    price = price_of(input_usd_per_mtok="0.15", output_usd_per_mtok="0.60")
    assert price.input_usd_per_mtok == Decimal("0.15")
    assert price.output_usd_per_mtok == Decimal("0.60")
    assert price.cached_input_usd_per_mtok == Decimal("0.15")
    assert price.cache_write_usd_per_mtok == Decimal("0.15")
    assert price.max_output_tokens == 4096


def test_a_zero_cache_price_is_kept_not_replaced_by_the_input_price() -> None:
    price = price_of(input_usd_per_mtok="3", cached_input_usd_per_mtok="0")
    assert price.cached_input_usd_per_mtok == Decimal(0)


def test_one_token_at_fifteen_cents_per_mtok_rounds_up_to_one_micro() -> None:
    price = price_of(input_usd_per_mtok="0.15")
    assert token_cost_micros(price, prompt_tokens=1) == 1
    assert token_cost_micros(price, prompt_tokens=0) == 0


@pytest.mark.parametrize(
    ("unit", "tokens", "expected"),
    [
        ("0.15", 1_000_000, 150_000),
        ("0.15", 20, 3),  # exactly 3.0: no rounding up of an exact amount
        ("0.15", 21, 4),  # 3.15
        ("0.000001", 1, 1),  # one millionth of a micro, still rounds up to one micro
        ("0.000001", 1_000_000, 1),
        ("0.000001", 1_000_001, 2),
        ("3.333", 3, 10),  # 9.999
        ("3.333", 1000, 3333),
    ],
)
def test_token_costs_are_exact_on_awkward_prices(unit: str, tokens: int, expected: int) -> None:
    price = price_of(input_usd_per_mtok=unit)
    assert token_cost_micros(price, prompt_tokens=tokens) == expected


def test_rounding_happens_once_on_the_sum_not_per_part() -> None:
    price = price_of(input_usd_per_mtok="0.15", output_usd_per_mtok="0.6")
    # 0.15 + 0.6 = 0.75 → 1 micro (per-part rounding would give 2).
    assert token_cost_micros(price, prompt_tokens=1, completion_tokens=1) == 1


def test_cached_and_cache_write_tokens_are_part_of_prompt_tokens() -> None:
    price = price_of(
        input_usd_per_mtok="3",
        output_usd_per_mtok="15",
        cached_input_usd_per_mtok="0.3",
        cache_write_usd_per_mtok="3.75",
    )
    cost = token_cost_micros(
        price, prompt_tokens=1000, cached_tokens=600, cache_write_tokens=100, completion_tokens=10
    )
    # (1000-600-100)*3 + 600*0.3 + 100*3.75 + 10*15
    assert cost == 900 + 180 + 375 + 150


def test_inconsistent_cache_counts_never_make_the_uncached_part_negative() -> None:
    price = price_of(input_usd_per_mtok="1", cached_input_usd_per_mtok="0.5")
    assert token_cost_micros(price, prompt_tokens=10, cached_tokens=20) == 10


def test_multiplier_is_applied_before_the_single_rounding() -> None:
    price = price_of(input_usd_per_mtok="0.15")
    assert token_cost_micros(price, prompt_tokens=10, multiplier=Decimal("2")) == 3
    assert token_cost_micros(price, prompt_tokens=10, multiplier=Decimal("0.5")) == 1  # 0.75
    assert token_cost_micros(price, prompt_tokens=1000, multiplier=Decimal("0.8")) == 120
    assert token_cost_micros(price, prompt_tokens=1000, multiplier=Decimal("0")) == 0


def test_bad_inputs_are_refused() -> None:
    price = price_of(input_usd_per_mtok="1")
    with pytest.raises(ValueError):
        token_cost_micros(price, prompt_tokens=-1)
    with pytest.raises(TypeError):
        token_cost_micros(price, prompt_tokens=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        token_cost_micros(price, prompt_tokens=1, multiplier=Decimal("-1"))
    with pytest.raises(ValueError):
        parse_multiplier("abc")
    with pytest.raises(ValueError):
        parse_multiplier("-0.5")
    assert parse_multiplier("1.25") == Decimal("1.25")


def test_worst_case_bills_every_prompt_token_at_the_dearest_input_price() -> None:
    price = price_of(
        input_usd_per_mtok="3", output_usd_per_mtok="15", cache_write_usd_per_mtok="3.75"
    )
    assert worst_case_token_cost_micros(price, prompt_tokens=100, completion_tokens=10) == 525
    measured = token_cost_micros(
        price, prompt_tokens=100, cache_write_tokens=100, completion_tokens=10
    )
    assert measured == 525


def test_images_are_priced_by_size_and_quality_then_size_then_default() -> None:
    price = price_of(
        kind="image",
        usd_per_image="0.02",
        image_prices={"1024x1024": "0.04", "1024x1024/HD": "0.08"},
    )
    assert image_cost_micros(price, n=1, size="1024x1024", quality="hd") == 80_000
    assert image_cost_micros(price, n=2, size="1024x1024", quality="standard") == 80_000
    assert image_cost_micros(price, n=3, size="1024x1024") == 120_000
    assert image_cost_micros(price, n=1, size="512x512") == 20_000


def test_an_unpriced_image_size_without_default_is_a_value_error() -> None:
    price = price_of(kind="image", image_prices={"1024x1024": "0.04"})
    with pytest.raises(ValueError, match="512x512"):
        image_cost_micros(price, n=1, size="512x512")


def test_video_is_priced_per_second_and_refuses_floats() -> None:
    price = price_of(kind="video", usd_per_video_second="0.1")
    assert video_cost_micros(price, seconds=8) == 800_000
    assert video_cost_micros(price, seconds=Decimal("4.5")) == 450_000
    with pytest.raises(TypeError):
        video_cost_micros(price, seconds=4.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        video_cost_micros(price_of(), seconds=1)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("5", 5_000_000),
        ("0.25", 250_000),
        ("-0.25", -250_000),
        ("1.234567", 1_234_567),
        ("0.000001", 1),
        (" 10.50 ", 10_500_000),
        ("1e2", 100_000_000),
        ("0", 0),
    ],
)
def test_usd_to_micros_is_exact(text: str, micros: int) -> None:
    assert usd_to_micros(text) == micros


@pytest.mark.parametrize("text", ["0.0000001", "1.2345678", "abc", "NaN", "Infinity", "", "1e20"])
def test_usd_to_micros_refuses_sub_micro_or_non_amounts(text: str) -> None:
    with pytest.raises(ValueError):
        usd_to_micros(text)


@pytest.mark.parametrize(
    ("micros", "text"),
    [(1_234_567, "1.234567"), (-5, "-0.000005"), (2_500_000, "2.5"), (0, "0"), (7, "0.000007")],
)
def test_micros_to_usd(micros: int, text: str) -> None:
    assert micros_to_usd(micros) == text


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_micros_usd_round_trip(micros: int) -> None:
    assert usd_to_micros(micros_to_usd(micros)) == micros


def test_pricing_view_shows_decimal_strings_and_only_the_prices_a_model_has() -> None:
    chat = pricing_view(price_of(input_usd_per_mtok="0.15", output_usd_per_mtok="0.60"))
    assert chat == {
        "currency": "USD",
        "input_usd_per_mtok": "0.15",
        "output_usd_per_mtok": "0.60",
        "cached_input_usd_per_mtok": "0.15",
        "cache_write_usd_per_mtok": "0.15",
    }
    image = pricing_view(price_of(kind="image", image_prices={"1024x1024": "0.04"}))
    assert image["image_prices"] == {"1024x1024": "0.04"}


prices = st.decimals(
    min_value=Decimal(0), max_value=Decimal(100), places=6, allow_nan=False, allow_infinity=False
)
counts = st.integers(min_value=0, max_value=10**7)


@settings(max_examples=200, deadline=None)
@given(prices, prices, counts, counts, counts, st.integers(min_value=0, max_value=1000))
def test_token_cost_is_the_exact_value_rounded_up_and_monotone(
    unit_in: Decimal, unit_out: Decimal, prompt: int, completion: int, more: int, percent: int
) -> None:
    price = price_of(input_usd_per_mtok=str(unit_in), output_usd_per_mtok=str(unit_out))
    multiplier = Decimal(percent) / 100
    exact = (prompt * Fraction(unit_in) + completion * Fraction(unit_out)) * Fraction(multiplier)
    cost = token_cost_micros(
        price, prompt_tokens=prompt, completion_tokens=completion, multiplier=multiplier
    )
    assert exact <= cost < exact + 1
    bigger = token_cost_micros(
        price, prompt_tokens=prompt + more, completion_tokens=completion, multiplier=multiplier
    )
    assert bigger >= cost


# The integer path must equal the plain exact formula it replaced; that formula lives only
# here, as the reference: Fractions of the Decimal prices, times the multiplier, ceiled once.
def reference_token_cost(
    price: ModelPrice, prompt: int, completion: int, cached: int, cache_write: int, mult: Decimal
) -> int:
    uncached = max(0, prompt - cached - cache_write)
    exact = (
        uncached * Fraction(price.input_usd_per_mtok)
        + cached * Fraction(price.cached_input_usd_per_mtok)
        + cache_write * Fraction(price.cache_write_usd_per_mtok)
        + completion * Fraction(price.output_usd_per_mtok)
    )
    return math.ceil(exact * Fraction(mult))


def reference_worst_case(price: ModelPrice, prompt: int, completion: int, mult: Decimal) -> int:
    exact = prompt * Fraction(price.highest_input_usd_per_mtok) + completion * Fraction(
        price.output_usd_per_mtok
    )
    return math.ceil(exact * Fraction(mult))


def decimal_of(coefficient: int, exponent: int) -> Decimal:
    return Decimal(f"{coefficient}E{exponent}")


# Any number of decimal places (up to 15) and positive exponents ("2E+1"), so the common
# denominator and the multiplier's ratio are exercised well beyond config-like prices.
any_price = st.builds(
    decimal_of, st.integers(min_value=0, max_value=10**12), st.integers(min_value=-15, max_value=3)
)
any_multiplier = st.one_of(
    st.builds(
        decimal_of,
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=-8, max_value=2),
    ),
    # What relay.admission.gate passes: an account multiplier times a key multiplier.
    st.builds(
        lambda a, b: a * b,
        st.sampled_from([Decimal(x) for x in ("1", "0.8", "1.25", "0.333", "3")]),
        st.sampled_from([Decimal(x) for x in ("1", "0.5", "1.1", "0.07", "2.000")]),
    ),
)
any_count = st.integers(min_value=0, max_value=10**9)


def model_price(
    input_: Decimal, output: Decimal, cached: Decimal, cache_write: Decimal
) -> ModelPrice:
    return ModelPrice(
        model="m",
        input_usd_per_mtok=input_,
        output_usd_per_mtok=output,
        cached_input_usd_per_mtok=cached,
        cache_write_usd_per_mtok=cache_write,
    )


@settings(max_examples=1000, deadline=None)
@given(
    any_price,
    any_price,
    any_price,
    any_price,
    any_count,
    any_count,
    any_count,
    any_count,
    any_multiplier,
)
@pytest.mark.slow
def test_integer_token_costs_equal_the_fraction_reference(
    input_: Decimal,
    output: Decimal,
    cached: Decimal,
    cache_write: Decimal,
    prompt: int,
    completion: int,
    cached_tokens: int,
    cache_write_tokens: int,
    multiplier: Decimal,
) -> None:
    price = model_price(input_, output, cached, cache_write)
    cost = token_cost_micros(
        price,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached_tokens,
        cache_write_tokens=cache_write_tokens,
        multiplier=multiplier,
    )
    assert cost == reference_token_cost(
        price, prompt, completion, cached_tokens, cache_write_tokens, multiplier
    )
    worst = worst_case_token_cost_micros(
        price, prompt_tokens=prompt, completion_tokens=completion, multiplier=multiplier
    )
    assert worst == reference_worst_case(price, prompt, completion, multiplier)


@settings(max_examples=300, deadline=None)
@given(any_price, st.integers(min_value=0, max_value=10**4), any_multiplier)
def test_image_and_video_costs_equal_the_fraction_reference(
    unit: Decimal, n: int, multiplier: Decimal
) -> None:
    price = ModelPrice(
        model="m",
        input_usd_per_mtok=Decimal(0),
        output_usd_per_mtok=Decimal(0),
        cached_input_usd_per_mtok=Decimal(0),
        cache_write_usd_per_mtok=Decimal(0),
        usd_per_image=unit,
        usd_per_video_second=unit,
    )
    expected = math.ceil(n * Fraction(unit) * 1_000_000 * Fraction(multiplier))
    assert image_cost_micros(price, n=n, size="any", multiplier=multiplier) == expected
    assert video_cost_micros(price, seconds=n, multiplier=multiplier) == expected
    seconds = Decimal(n) / 8
    expected = math.ceil(Fraction(seconds) * Fraction(unit) * 1_000_000 * Fraction(multiplier))
    assert video_cost_micros(price, seconds=seconds, multiplier=multiplier) == expected


@settings(max_examples=300, deadline=None)
@given(st.builds(decimal_of, st.integers(-(10**15), 10**15), st.integers(-9, 3)))
def test_usd_to_micros_equals_the_fraction_reference(amount: Decimal) -> None:
    micros = Fraction(amount) * 1_000_000
    if micros.denominator == 1 and (not amount or amount.adjusted() < 12):
        assert usd_to_micros(str(amount)) == micros
    else:
        with pytest.raises(ValueError):
            usd_to_micros(str(amount))


def test_cached_integer_rates_leave_fields_equality_and_encoding_unchanged() -> None:
    price = price_of(input_usd_per_mtok="0.15", output_usd_per_mtok="0.60")
    token_cost_micros(price, prompt_tokens=1)
    assert price == price_of(input_usd_per_mtok="0.15", output_usd_per_mtok="0.60")
    assert msgspec.json.decode(msgspec.json.encode(price)) == {
        "model": "m",
        "input_usd_per_mtok": "0.15",
        "output_usd_per_mtok": "0.60",
        "cached_input_usd_per_mtok": "0.15",
        "cache_write_usd_per_mtok": "0.15",
        "usd_per_image": None,
        "image_prices": {},
        "usd_per_video_second": None,
        "usd_per_audio_second": None,
        "usd_per_mchar": None,
        "max_output_tokens": 4096,
        "context_window": 128_000,
    }
    cheaper = msgspec.structs.replace(price, input_usd_per_mtok=Decimal("0.05"))
    assert token_cost_micros(cheaper, prompt_tokens=100) == 5


def test_a_non_finite_token_price_is_refused_when_the_price_is_built() -> None:
    with pytest.raises(ValueError):
        model_price(Decimal("NaN"), Decimal(0), Decimal(0), Decimal(0))
