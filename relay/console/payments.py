"""The console's side of payments: the payments service (when the server runs it), whether
card top-ups are offered, and the amounts the Billing forms take.

Forms take USD as typed ("25", "12.50"); each field is checked on the server with a
message naming it, and the whole form is kept so that an error re-shows what was typed.
Amounts charged to a card must be whole cents; the service checks the configured range.
"""

from __future__ import annotations

import msgspec

from relay.console.web import Ctx
from relay.errors import InvalidRequest
from relay.money.pricing import micros_to_usd, usd_to_micros
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.runtime import payments_runtime
from relay.payments.service import PaymentsService, PaymentsUnavailable

__all__ = [
    "AutoTopUpForm",
    "FormError",
    "TopUpLimits",
    "card_topups_ready",
    "parse_amount",
    "payments_service",
    "topup_limits",
]


class FormError(ValueError):
    """A form field is wrong; the message is shown beside the form."""


class AutoTopUpForm(msgspec.Struct, frozen=True):
    """The auto top-up form's fields as typed (USD strings)."""

    enabled: bool = False
    trigger_usd: str = "5"
    amount_usd: str = "25"
    monthly_cap_usd: str = "100"

    @classmethod
    def of(cls, settings: AutoTopUpSettings | None) -> AutoTopUpForm:
        if settings is None:
            return cls()
        return cls(
            enabled=settings.enabled,
            trigger_usd=micros_to_usd(settings.trigger_micros),
            amount_usd=micros_to_usd(settings.amount_micros),
            monthly_cap_usd=micros_to_usd(settings.monthly_cap_micros),
        )

    @classmethod
    def from_form(cls, form: dict[str, str]) -> AutoTopUpForm:
        return cls(
            enabled=form.get("enabled") == "on",
            trigger_usd=form.get("trigger_usd", "").strip(),
            amount_usd=form.get("amount_usd", "").strip(),
            monthly_cap_usd=form.get("monthly_cap_usd", "").strip(),
        )

    def settings(self, account_id: str, service: PaymentsService) -> AutoTopUpSettings:
        """Checked settings, or FormError naming the field that is wrong."""
        trigger = parse_amount(self.trigger_usd, "The balance that triggers a refill")
        amount = parse_amount(self.amount_usd, "The refill amount", positive=True)
        cap = parse_amount(self.monthly_cap_usd, "The monthly cap", positive=True)
        if cap < amount:
            raise FormError("The monthly cap must be at least the refill amount.")
        if self.enabled:
            try:
                service.check_amount(amount)  # the same range and whole cents as a top-up
            except InvalidRequest as exc:
                raise FormError(
                    "Refill amount: " + exc.message.replace("amount_usd ", "")
                ) from None
        return AutoTopUpSettings(
            account_id=account_id,
            enabled=self.enabled,
            trigger_micros=trigger,
            amount_micros=amount,
            monthly_cap_micros=cap,
        )


class TopUpLimits(msgspec.Struct, frozen=True):
    min_usd: str
    max_usd: str


def payments_service(ctx: Ctx) -> PaymentsService | None:
    """The running payments service, or None when the server runs without it."""
    try:
        return payments_runtime(ctx.request).service
    except PaymentsUnavailable:
        return None


def card_topups_ready(service: PaymentsService | None) -> bool:
    """Stripe is the provider and its secret key is set: the Top up form can work."""
    return (
        service is not None
        and service.config is not None
        and service.config.provider == "stripe"
        and service.stripe is not None
    )


def topup_limits(service: PaymentsService | None) -> TopUpLimits | None:
    if service is None or service.config is None:
        return None
    config = service.config
    return TopUpLimits(
        micros_to_usd(usd_to_micros(config.min_topup_usd)),
        micros_to_usd(usd_to_micros(config.max_topup_usd)),
    )


def parse_amount(text: str, label: str, *, positive: bool = False) -> int:
    """Micro-USD from a form field: whole cents, not negative (or positive)."""
    try:
        micros = usd_to_micros(text)
    except ValueError:
        raise FormError(f"{label} must be an amount in USD, such as 25 or 12.50.") from None
    if micros % 10_000:
        raise FormError(f"{label} must be whole cents, such as 12.50.")
    if micros < 0 or (positive and micros == 0):
        raise FormError(f"{label} must be {'more than' if positive else 'at least'} 0.")
    return micros
