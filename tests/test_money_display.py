"""The one money formatter: cents with separators for balances and totals, every digit for
per-request amounts, numbers a spreadsheet reads for CSV; never a float."""

from __future__ import annotations

from decimal import Decimal

import pytest

from relay.money.display import (
    format_amount,
    format_usd,
    format_usd_exact,
    format_usd_price,
    usd_cell,
)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (0, "$0.00"),
        (2_500_000, "$2.50"),
        (18_209_939, "$18.21"),
        (960_000, "$0.96"),
        (1_234_567_890, "$1,234.57"),
        (1_000_000_000_000_000, "$1,000,000,000.00"),
        (-5_000_000, "\u2212$5.00"),
        (5_000, "$0.01"),  # half a cent rounds up
        (4_999, "<$0.01"),  # not zero, so never "$0.00"
        (-25, "\u2212<$0.01"),
        (None, "—"),
    ],
)
def test_totals_read_in_cents_with_separators(micros: int | None, text: str) -> None:
    assert format_usd(micros) == text


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (25, "$0.000025"),
        (800_000, "$0.80"),
        (1_234_500_000, "$1,234.50"),
        (-120, "\u2212$0.00012"),
        (0, "$0.00"),
    ],
)
def test_per_request_amounts_keep_every_digit(micros: int, text: str) -> None:
    assert format_usd_exact(micros) == text


def test_csv_cells_and_receipt_amounts() -> None:
    assert usd_cell(1_234_567_890) == "1234.57"
    assert usd_cell(101, exact=True) == "0.000101"
    assert usd_cell(800_000, exact=True) == "0.80"
    assert usd_cell(-2_500_000, exact=True) == "-2.50"
    assert usd_cell(-1) == "0.00"  # no "-0.00"
    assert format_amount(1_234_500_000) == "1,234.50"


def test_prices_are_exact_decimals() -> None:
    assert format_usd_price(Decimal("0.15") * Decimal("1.5")) == "$0.225"
    assert format_usd_price(Decimal("2.5")) == "$2.50"
    assert format_usd_price(Decimal("1000")) == "$1,000.00"
