"""Exact prices: a model's configured prices and the cost of a request in micro-USD.

Prices come from the config as decimal strings and are parsed once, exactly, into a
``ModelPrice``. A USD price per million tokens is numerically a micro-USD price per token,
so a token cost is ``Σ tokens_i × price_i`` micro-USD. Every cost is computed exactly (never
float), multiplied by the account/key price multiplier, and only then rounded UP once to a
whole micro-USD: a request is never billed less than its exact cost and never a full
micro-USD more.

The arithmetic is integer-only: when a ``ModelPrice`` is built, its token prices are scaled
once to integers over one common denominator (``TokenRates``), and a multiplier or a
per-image/per-second price becomes an integer ratio (``Decimal.as_integer_ratio``, exact).
A cost is then one integer ceiling division, ``-(-numerator // denominator)``.

Token convention (OpenAI's): ``prompt_tokens`` counts every input token, *including* the
cached (cache-read) and cache-write tokens. So::

    cost = (prompt − cached − cache_write) × input
         + cached × cached_input + cache_write × cache_write_price + completion × output

An adapter for an API that reports them separately (Anthropic's ``input_tokens`` excludes
``cache_read_input_tokens`` and ``cache_creation_input_tokens``) sums them into ``prompt``.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from functools import cached_property

import msgspec

from relay.config import ModelConfig

__all__ = [
    "MICROS_PER_USD",
    "ONE",
    "ModelPrice",
    "audio_cost_micros",
    "character_cost_micros",
    "image_cost_micros",
    "image_unit_price",
    "micros_to_usd",
    "parse_multiplier",
    "pricing_view",
    "token_cost_micros",
    "usd_to_micros",
    "video_cost_micros",
    "worst_case_token_cost_micros",
]

MICROS_PER_USD = 1_000_000
ONE = Decimal(1)
# Amounts typed by people (top-ups, limits) beyond a trillion USD are typos or attacks:
# refusing them keeps the exact arithmetic below cheap.
_MAX_USD_DIGITS = 12


class _TokenRates(msgspec.Struct, frozen=True):
    """Token prices as integers: micro-USD per token × ``denominator``, for integer-only costs."""

    input: int
    cached_input: int
    cache_write: int
    output: int
    highest_input: int
    denominator: int


def _scale_to_common_denominator(*prices: Decimal) -> tuple[list[int], int]:
    """Exact integer numerators of ``prices`` over their least common denominator."""
    ratios = [price.as_integer_ratio() for price in prices]
    denominator = math.lcm(*(ratio_denominator for _, ratio_denominator in ratios))
    numerators = [numerator * (denominator // part) for numerator, part in ratios]
    return numerators, denominator


# dict=True only to hold the cached ``_token_rates``; fields, equality and encoding are as before.
class ModelPrice(msgspec.Struct, frozen=True, dict=True):
    """One model's prices, exact. Token prices are USD per million tokens (= micro-USD/token)."""

    model: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cached_input_usd_per_mtok: Decimal
    cache_write_usd_per_mtok: Decimal
    usd_per_image: Decimal | None = None
    # Keys are lower-case "SIZE" or "SIZE/QUALITY", e.g. "1024x1024/hd".
    image_prices: dict[str, Decimal] = {}
    usd_per_video_second: Decimal | None = None
    usd_per_audio_second: Decimal | None = None
    # USD per million characters = micro-USD per character (speech input).
    usd_per_mchar: Decimal | None = None
    max_output_tokens: int = 4096
    context_window: int = 128_000

    def __post_init__(self) -> None:
        # Scaled once here, not per request; a non-finite price fails now, not on first use.
        _ = self._token_rates

    @classmethod
    def from_config(cls, model: ModelConfig) -> ModelPrice:
        input_price = Decimal(model.input_usd_per_mtok)
        return cls(
            model=model.name,
            input_usd_per_mtok=input_price,
            output_usd_per_mtok=Decimal(model.output_usd_per_mtok),
            cached_input_usd_per_mtok=_decimal_or(model.cached_input_usd_per_mtok, input_price),
            cache_write_usd_per_mtok=_decimal_or(model.cache_write_usd_per_mtok, input_price),
            usd_per_image=_optional_decimal(model.usd_per_image),
            image_prices={
                size.lower(): Decimal(price) for size, price in model.image_prices.items()
            },
            usd_per_video_second=_optional_decimal(model.usd_per_video_second),
            usd_per_audio_second=_optional_decimal(model.usd_per_audio_second),
            usd_per_mchar=_optional_decimal(model.usd_per_mchar),
            max_output_tokens=model.max_output_tokens,
            context_window=model.context_window,
        )

    @property
    def highest_input_usd_per_mtok(self) -> Decimal:
        """The dearest way an input token can be billed (a cache write can cost more)."""
        return max(
            self.input_usd_per_mtok, self.cached_input_usd_per_mtok, self.cache_write_usd_per_mtok
        )

    @cached_property
    def _token_rates(self) -> _TokenRates:
        (plain, cached, cache_write, output), denominator = _scale_to_common_denominator(
            self.input_usd_per_mtok,
            self.cached_input_usd_per_mtok,
            self.cache_write_usd_per_mtok,
            self.output_usd_per_mtok,
        )
        return _TokenRates(
            input=plain,
            cached_input=cached,
            cache_write=cache_write,
            output=output,
            highest_input=max(plain, cached, cache_write),
            denominator=denominator,
        )


def _optional_decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _decimal_or(value: str | None, default: Decimal) -> Decimal:
    # Not `or`: a configured price of "0" (free cache reads) is falsy but meant.
    return default if value is None else Decimal(value)


def parse_multiplier(text: str) -> Decimal:
    """An account's or key's price multiplier ("1", "0.8", "1.25"): finite and non-negative."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"price multiplier {text!r} is not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"price multiplier {text!r} must be a non-negative decimal")
    return value


_UNIT_RATIO = (1, 1)


def _multiplier_ratio(multiplier: Decimal) -> tuple[int, int]:
    if multiplier is ONE:
        return _UNIT_RATIO
    if not multiplier.is_finite() or multiplier < 0:
        raise ValueError("multiplier must be a finite, non-negative Decimal")
    return multiplier.as_integer_ratio()


def _round_up(numerator: int, denominator: int, multiplier: Decimal) -> int:
    """``numerator / denominator`` micro-USD × ``multiplier``, rounded up once, exactly."""
    times, per = _multiplier_ratio(multiplier)
    return -(-(numerator * times) // (denominator * per))


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if value < 0:
        raise ValueError(f"{name} must not be negative")


def _are_plain_counts(*values: int) -> bool:
    """The common case, checked in one go: exact ``int``s (not bool/subclasses), not negative."""
    for value in values:
        if type(value) is not int or value < 0:
            return False
    return True


def token_cost_micros(
    price: ModelPrice,
    *,
    prompt_tokens: int,
    completion_tokens: int = 0,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    multiplier: Decimal = ONE,
) -> int:
    """Cost of a token-billed request, rounded up once (see the module docstring's convention).

    Cached and cache-write tokens beyond ``prompt_tokens`` (an inconsistent upstream report)
    are still billed at their own prices; the uncached remainder is then zero, never negative.
    """
    if not _are_plain_counts(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens):
        _check_count("prompt_tokens", prompt_tokens)
        _check_count("completion_tokens", completion_tokens)
        _check_count("cached_tokens", cached_tokens)
        _check_count("cache_write_tokens", cache_write_tokens)
    rates = price._token_rates
    uncached = max(0, prompt_tokens - cached_tokens - cache_write_tokens)
    numerator = (
        uncached * rates.input
        + cached_tokens * rates.cached_input
        + cache_write_tokens * rates.cache_write
        + completion_tokens * rates.output
    )
    return _round_up(numerator, rates.denominator, multiplier)


def worst_case_token_cost_micros(
    price: ModelPrice,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    multiplier: Decimal = ONE,
) -> int:
    """The most these tokens can cost: every prompt token at the dearest input price.

    Whatever mix of plain, cached and cache-write tokens the upstream reports, the measured
    ``token_cost_micros`` of the same counts is never above this.
    """
    if not _are_plain_counts(prompt_tokens, completion_tokens):
        _check_count("prompt_tokens", prompt_tokens)
        _check_count("completion_tokens", completion_tokens)
    rates = price._token_rates
    numerator = prompt_tokens * rates.highest_input + completion_tokens * rates.output
    return _round_up(numerator, rates.denominator, multiplier)


def image_unit_price(price: ModelPrice, size: str, quality: str | None = None) -> Decimal:
    """USD per image: "SIZE/QUALITY", then "SIZE", then ``usd_per_image``; else ValueError."""
    size_key = size.strip().lower()
    candidates = [f"{size_key}/{quality.strip().lower()}"] if quality else []
    candidates.append(size_key)
    for key in candidates:
        if key in price.image_prices:
            return price.image_prices[key]
    if price.usd_per_image is not None:
        return price.usd_per_image
    known = ", ".join(sorted(price.image_prices)) or "none"
    raise ValueError(f"no price for image size {size!r} on model {price.model!r} (priced: {known})")


def image_cost_micros(
    price: ModelPrice,
    *,
    n: int,
    size: str,
    quality: str | None = None,
    multiplier: Decimal = ONE,
) -> int:
    """Cost of ``n`` images of a size/quality; ValueError (→ 400) for an unpriced size."""
    _check_count("n", n)
    unit, per = image_unit_price(price, size, quality).as_integer_ratio()
    return _round_up(n * unit * MICROS_PER_USD, per, multiplier)


def video_cost_micros(
    price: ModelPrice, *, seconds: int | Decimal, multiplier: Decimal = ONE
) -> int:
    """Cost of ``seconds`` of generated video; ValueError when the model has no video price."""
    if isinstance(seconds, bool | float) or not isinstance(seconds, int | Decimal):
        raise TypeError("seconds must be an int or a Decimal, never a float")
    if not Decimal(seconds).is_finite() or seconds < 0:
        raise ValueError("seconds must be a finite, non-negative number")
    if price.usd_per_video_second is None:
        raise ValueError(f"model {price.model!r} has no usd_per_video_second price")
    duration, duration_per = seconds.as_integer_ratio()
    unit, unit_per = price.usd_per_video_second.as_integer_ratio()
    return _round_up(duration * unit * MICROS_PER_USD, duration_per * unit_per, multiplier)


def audio_cost_micros(price: ModelPrice, *, seconds: Decimal, multiplier: Decimal = ONE) -> int:
    """Cost of ``seconds`` of audio (exact, fractions included); 0 when the model has no
    ``usd_per_audio_second`` (it bills tokens instead)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | Decimal):
        raise TypeError("seconds must be an int or a Decimal, never a float")
    if not Decimal(seconds).is_finite() or seconds < 0:
        raise ValueError("seconds must be a finite, non-negative number")
    if price.usd_per_audio_second is None:
        return 0
    duration, duration_per = seconds.as_integer_ratio()
    unit, unit_per = price.usd_per_audio_second.as_integer_ratio()
    return _round_up(duration * unit * MICROS_PER_USD, duration_per * unit_per, multiplier)


def character_cost_micros(price: ModelPrice, *, characters: int, multiplier: Decimal = ONE) -> int:
    """Cost of synthesising ``characters`` of text; ValueError when the model has no
    ``usd_per_mchar`` price."""
    _check_count("characters", characters)
    if price.usd_per_mchar is None:
        raise ValueError(f"model {price.model!r} has no usd_per_mchar price")
    unit, per = price.usd_per_mchar.as_integer_ratio()
    return _round_up(characters * unit, per, multiplier)


def usd_to_micros(text: str) -> int:
    """ "5" → 5_000_000, "-0.25" → -250_000, exactly.

    Amounts more precise than a micro-USD ("0.0000001") are refused with ValueError rather
    than rounded: a top-up or a limit that silently changes value is worse than an error.
    """
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f'{text!r} is not a USD amount such as "5" or "0.25"') from None
    if not amount.is_finite():
        raise ValueError(f"{text!r} is not a finite USD amount")
    if amount and amount.adjusted() >= _MAX_USD_DIGITS:
        raise ValueError(f"{text!r} is too large for a USD amount")
    numerator, denominator = amount.as_integer_ratio()
    micros, remainder = divmod(numerator * MICROS_PER_USD, denominator)
    if remainder:
        raise ValueError(f"{text!r} is more precise than one micro-USD (6 decimal places)")
    return micros


def micros_to_usd(micros: int) -> str:
    """1_234_567 → "1.234567", -5 → "-0.000005", 2_500_000 → "2.5", 0 → "0" (exact)."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{fraction:06d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def pricing_view(price: ModelPrice) -> dict[str, object]:
    """The prices /v1/models shows: decimal strings, only those the model has."""
    view: dict[str, object] = {
        "currency": "USD",
        "input_usd_per_mtok": str(price.input_usd_per_mtok),
        "output_usd_per_mtok": str(price.output_usd_per_mtok),
        "cached_input_usd_per_mtok": str(price.cached_input_usd_per_mtok),
        "cache_write_usd_per_mtok": str(price.cache_write_usd_per_mtok),
    }
    if price.usd_per_image is not None:
        view["usd_per_image"] = str(price.usd_per_image)
    if price.image_prices:
        view["image_prices"] = {key: str(value) for key, value in price.image_prices.items()}
    if price.usd_per_video_second is not None:
        view["usd_per_video_second"] = str(price.usd_per_video_second)
    if price.usd_per_audio_second is not None:
        view["usd_per_audio_second"] = str(price.usd_per_audio_second)
    if price.usd_per_mchar is not None:
        view["usd_per_mchar"] = str(price.usd_per_mchar)
    return view
