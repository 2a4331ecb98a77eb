"""``[budgets]`` and ``[payments]``: when budget periods begin, and how credit is bought."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from relay.config.fields import PositiveFloat, check_usd

__all__ = ["WEEKDAYS", "BudgetsConfig", "PaymentCurrency", "PaymentsConfig", "Weekday"]

Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)


class BudgetsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[budgets]``: where budget periods begin (UTC) for keys and accounts with a period."""

    day_start_hour: Annotated[int, Meta(ge=0, le=23)] = 0
    week_start: Weekday = "monday"
    # 1..28 so that every month has the day.
    month_start_day: Annotated[int, Meta(ge=1, le=28)] = 1

    @property
    def week_start_index(self) -> int:
        return WEEKDAYS.index(self.week_start)


# Two-decimal currencies only: a minor unit is exactly 10,000 micro-units of the wallet.
PaymentCurrency = Literal["usd", "eur", "gbp"]


class PaymentsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[payments]``: card top-ups through Stripe, or ``manual`` (bank transfers only)."""

    provider: Literal["stripe", "manual"] = "stripe"
    # Names of environment variables: the secrets themselves never live in the file.
    secret_key_env: str = "STRIPE_SECRET_KEY"
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    api_base: str = "https://api.stripe.com"
    currency: PaymentCurrency = "usd"
    min_topup_usd: str = "5"
    max_topup_usd: str = "1000"
    # Where Stripe Checkout sends the buyer back; a checkout request may override them.
    success_url: str | None = None
    cancel_url: str | None = None
    timeout_s: PositiveFloat = 30.0
    seller_name: str = ""
    seller_address: str = ""
    seller_tax_id: str | None = None

    def __post_init__(self) -> None:
        if not self.api_base.startswith(("http://", "https://")):
            raise ValueError("api_base must start with http:// or https://")
        check_usd(self.min_topup_usd, "min_topup_usd")
        check_usd(self.max_topup_usd, "max_topup_usd")
        if Decimal(self.min_topup_usd) > Decimal(self.max_topup_usd):
            raise ValueError("min_topup_usd must not exceed max_topup_usd")
        for key in ("success_url", "cancel_url"):
            url = getattr(self, key)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ValueError(f"{key} must start with http:// or https://")
