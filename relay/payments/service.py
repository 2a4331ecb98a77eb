"""Payments as relay sees them: start a checkout, credit a confirmed payment, record a failure.

Crediting is where money enters the wallet, so it is built to happen once per payment:
the wallet refuses a reference it has seen or has in flight (``DuplicateReference``,
synchronous, so two concurrent deliveries cannot both pass), the ledger's unique index
refuses it on disk, and the handled event id is remembered. The ledger row, the payment
row, the receipt, the event id and the audit row are one write, committed in one
transaction; only then does the wallet's balance move (``crediting.commit_credit``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec

from relay.config import PaymentsConfig
from relay.errors import InvalidRequest, NotFound, RelayError
from relay.identity.accounts import AccountStore
from relay.identity.audit import append_audit
from relay.money.pricing import micros_to_usd, usd_to_micros
from relay.money.wallet import DuplicateReference, Wallet
from relay.payments import auto_settings
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.crediting import EventRecord, commit_credit, credit_write, wall_ms
from relay.payments.receipts import SellerDetails
from relay.payments.store import (
    PaidPayment,
    Payment,
    add_notice,
    customer_of,
    insert_pending,
    mark_failed,
    micros_to_minor,
    new_payment_id,
    record_event,
    save_customer,
)
from relay.payments.stripe_client import StripeClient, StripeError
from relay.storage.db import Database

__all__ = [
    "CreditResult",
    "PaymentsService",
    "PaymentsUnavailable",
]

log = logging.getLogger("relay.payments")
Clock = Callable[[], int]


class PaymentsUnavailable(RelayError):
    status = 503
    type = "invalid_request_error"
    code = "payments_unavailable"


class CreditResult(msgspec.Struct, frozen=True):
    credited: bool
    provider_payment_id: str
    amount_micros: int
    receipt_number: str | None = None


class PaymentsService:
    """Long-lived (built in the lifespan); ``stripe`` is None unless provider = "stripe"."""

    def __init__(
        self,
        *,
        db: Database,
        wallet: Wallet,
        accounts: AccountStore,
        config: PaymentsConfig | None,
        stripe: StripeClient | None,
        auto_topups: dict[str, AutoTopUpSettings] | None = None,
        clock: Clock = wall_ms,
    ) -> None:
        self.db = db
        self.wallet = wallet
        self.accounts = accounts
        self.config = config
        self.stripe = stripe
        self.seller = SellerDetails.from_config(config)
        self.clock = clock
        # The auto top-up trigger reads these on the hot path: memory, never the database.
        self.auto_topups: dict[str, AutoTopUpSettings] = dict(auto_topups or {})

    @property
    def currency(self) -> str:
        return self.config.currency if self.config else "usd"

    def _buyer_name(self, account_id: str) -> str:
        account = self.accounts.accounts.get(account_id)
        return account.name if account else account_id

    # -- checkout -------------------------------------------------------------------------

    def _require_stripe(self) -> tuple[PaymentsConfig, StripeClient]:
        if self.config is None or self.config.provider != "stripe" or self.stripe is None:
            raise PaymentsUnavailable("Card payments are not configured ([payments] stripe)")
        return self.config, self.stripe

    def check_amount(self, amount_micros: int) -> int:
        """The amount in minor units, or InvalidRequest naming the allowed range."""
        config, _ = self._require_stripe()
        low, high = usd_to_micros(config.min_topup_usd), usd_to_micros(config.max_topup_usd)
        if not low <= amount_micros <= high:
            raise InvalidRequest(
                f"amount_usd must be between {micros_to_usd(low)} and {micros_to_usd(high)}",
                param="amount_usd",
            )
        try:
            return micros_to_minor(amount_micros, config.currency)
        except ValueError:
            raise InvalidRequest("amount_usd must be whole cents", param="amount_usd") from None

    async def start_checkout(
        self,
        account_id: str,
        amount_micros: int,
        *,
        success_url: str | None = None,
        cancel_url: str | None = None,
        actor: str,
    ) -> tuple[Payment, str]:
        """Create a Stripe Checkout Session for a top-up: (pending payment, session URL)."""
        config, stripe = self._require_stripe()
        amount_minor = self.check_amount(amount_micros)
        success_url = success_url or config.success_url
        cancel_url = cancel_url or config.cancel_url
        if not success_url or not cancel_url:
            raise InvalidRequest("success_url and cancel_url are needed (or set them in config)")
        customer = await customer_of(self.db, account_id)
        payment_id = new_payment_id()
        try:
            session = await stripe.create_checkout_session(
                account_id=account_id,
                amount_minor=amount_minor,
                currency=config.currency,
                success_url=success_url,
                cancel_url=cancel_url,
                customer_id=customer.customer_id if customer else None,
                idempotency_key=f"relay-checkout-{payment_id}",
            )
        except StripeError as exc:
            raise PaymentsUnavailable(f"Stripe refused the checkout: {exc.reason}") from None
        if not session.url:
            raise PaymentsUnavailable("Stripe returned a checkout session without a URL")
        now = self.clock()
        payment = Payment(
            id=payment_id,
            account_id=account_id,
            provider="stripe",
            provider_payment_id=session.id,
            kind="topup",
            amount_micros=amount_micros,
            currency=config.currency,
            amount_minor=amount_minor,
            status="pending",
            created_at_ms=now,
            updated_at_ms=now,
        )
        await self.write_with_audit(
            lambda conn: insert_pending(conn, payment),
            actor=actor,
            action="payment.checkout",
            target=account_id,
            detail={
                "payment_id": payment_id,
                "session": session.id,
                "amount_micros": amount_micros,
            },
        )
        return payment, session.url

    # -- outcomes -------------------------------------------------------------------------

    async def credit(
        self, paid: PaidPayment, *, actor: str, event: EventRecord | None = None
    ) -> CreditResult:
        """Credit a confirmed payment once; a repeat returns ``credited=False``."""
        if paid.account_id not in self.accounts.accounts:
            raise NotFound(f"No account {paid.account_id!r}", code="account_not_found")
        try:
            entry = self.wallet.prepare(
                paid.account_id,
                "credit",
                paid.amount_micros,
                reference=paid.provider_payment_id,
                note=f"{paid.provider} {paid.kind}",
            )
        except DuplicateReference:
            if event is not None:
                await self.remember(event, "already_credited")
            return CreditResult(False, paid.provider_payment_id, paid.amount_micros)
        write = credit_write(
            entry,
            paid,
            at_ms=self.clock(),
            buyer_name=self._buyer_name(paid.account_id),
            seller=self.seller,
            audit_key=self.accounts.audit_key,
            actor=actor,
            event=event,
        )
        # One transaction for ledger, payment, receipt, event and audit; then the wallet.
        receipt = await commit_credit(self.db, self.wallet, entry, write)
        if paid.kind == "auto_topup":
            self._reset_cached_failures(paid.account_id)
        return CreditResult(True, paid.provider_payment_id, paid.amount_micros, receipt.number)

    async def record_failure(
        self,
        provider: str,
        provider_payment_id: str,
        reason: str,
        *,
        actor: str,
        event: EventRecord | None = None,
    ) -> Payment | None:
        """A pending payment failed: row, audit, and for auto top-up a notice and the count."""
        at_ms = self.clock()
        key = self.accounts.audit_key

        def write(conn: sqlite3.Connection) -> tuple[Payment | None, AutoTopUpSettings | None]:
            if event is not None:
                record_event(conn, event.event_id, event.provider, event.type, "failed", at_ms)
            payment = mark_failed(conn, provider, provider_payment_id, reason, at_ms)
            if payment is None:
                return None, None
            detail = {"payment_id": payment.id, "reference": provider_payment_id, "reason": reason}
            append_audit(
                conn,
                key,
                actor=actor,
                action="payment.failed",
                target=payment.account_id,
                detail=detail,
            )
            if payment.kind != "auto_topup":
                return payment, None
            settings = auto_settings.register_failure(conn, payment.account_id, at_ms)
            _notify_auto_topup_failure(conn, key, payment, reason, settings, at_ms)
            return payment, settings

        payment, settings = await self.db.write(write)
        if settings is not None:
            self.auto_topups[settings.account_id] = settings
        return payment

    async def remember(self, event: EventRecord, outcome: str) -> None:
        at_ms = self.clock()
        await self.db.write(
            lambda conn: record_event(
                conn, event.event_id, event.provider, event.type, outcome, at_ms
            )
        )

    async def save_customer(
        self, account_id: str, customer_id: str, payment_method_id: str | None
    ) -> None:
        at_ms = self.clock()
        await self.db.write(
            lambda conn: save_customer(
                conn, account_id, "stripe", customer_id, payment_method_id, at_ms
            )
        )

    # -- auto top-up settings ---------------------------------------------------------------

    async def set_auto_topup(self, settings: AutoTopUpSettings, *, actor: str) -> None:
        settings = msgspec.structs.replace(settings, updated_at_ms=self.clock())
        await self.write_with_audit(
            lambda conn: auto_settings.save_settings(conn, settings),
            actor=actor,
            action="auto_topup.update",
            target=settings.account_id,
            detail=msgspec.structs.asdict(settings),
        )
        self.auto_topups[settings.account_id] = settings

    def _reset_cached_failures(self, account_id: str) -> None:
        current = self.auto_topups.get(account_id)
        if current is not None and current.consecutive_failures:
            self.auto_topups[account_id] = msgspec.structs.replace(current, consecutive_failures=0)

    async def write_with_audit(
        self,
        change: Callable[[sqlite3.Connection], None],
        *,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any],
    ) -> None:
        key = self.accounts.audit_key

        def write(conn: sqlite3.Connection) -> None:
            change(conn)
            append_audit(conn, key, actor=actor, action=action, target=target, detail=detail)

        await self.db.write(write)


def _notify_auto_topup_failure(
    conn: sqlite3.Connection,
    audit_key: bytes,
    payment: Payment,
    reason: str,
    settings: AutoTopUpSettings | None,
    at_ms: int,
) -> None:
    amount = micros_to_usd(payment.amount_micros)
    message = f"Automatic top-up of {amount} {payment.currency.upper()} failed: {reason}."
    just_disabled = (
        settings is not None
        and not settings.enabled
        and settings.consecutive_failures == auto_settings.MAX_CONSECUTIVE_FAILURES
    )
    if settings is not None and just_disabled:
        message += " Auto top-up is now off; update the card and turn it back on."
        append_audit(
            conn,
            audit_key,
            actor="auto-topup",
            action="auto_topup.disabled",
            target=payment.account_id,
            detail={"consecutive_failures": settings.consecutive_failures},
        )
    add_notice(conn, payment.account_id, "auto_topup_failed", message, at_ms)
