"""Payments as relay sees them: start a checkout, credit a confirmed payment, record a failure.

Crediting is where money enters the wallet, so it is built to happen once per payment:
the records (``relay.payments.backend``) refuse a reference the account has already been
credited under — embedded, the wallet's synchronous check and the ledger's unique index;
in cluster mode, PostgreSQL's unique index, whichever instance a delivery reaches — and
the handled event id is remembered. The ledger row, the payment row, the receipt, the
event id and the audit row are one write, committed in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from relay.config import PaymentsConfig
from relay.errors import InvalidRequest, NotFound, RelayError
from relay.identity.accounts import AccountStore
from relay.money.pricing import micros_to_usd, usd_to_micros
from relay.money.wallet import Wallet
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.backend import AuditEntry, PaymentRecords
from relay.payments.crediting import EventRecord, wall_ms
from relay.payments.receipts import Receipt, SellerDetails
from relay.payments.store import PaidPayment, Payment, micros_to_minor, new_payment_id
from relay.payments.stripe_client import StripeClient, StripeError

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
        records: PaymentRecords,
        wallet: Wallet,
        accounts: AccountStore,
        config: PaymentsConfig | None,
        stripe: StripeClient | None,
        auto_topups: dict[str, AutoTopUpSettings] | None = None,
        clock: Clock = wall_ms,
    ) -> None:
        self.records = records
        # Embedded auto top-up reads balances here (relay.payments.auto_topup).
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
        customer = await self.records.customer_of(account_id)
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
        detail = {"payment_id": payment_id, "session": session.id, "amount_micros": amount_micros}
        await self.records.insert_pending(
            payment, AuditEntry(actor, "payment.checkout", account_id, detail)
        )
        return payment, session.url

    # -- outcomes -------------------------------------------------------------------------

    async def credit(
        self, paid: PaidPayment, *, actor: str, event: EventRecord | None = None
    ) -> CreditResult:
        """Credit a confirmed payment once; a repeat returns ``credited=False``."""
        if paid.account_id not in self.accounts.accounts:
            raise NotFound(f"No account {paid.account_id!r}", code="account_not_found")
        receipt = await self.records.credit(
            paid,
            at_ms=self.clock(),
            buyer_name=self._buyer_name(paid.account_id),
            seller=self.seller,
            actor=actor,
            event=event,
        )
        if receipt is None:
            if event is not None:
                await self.remember(event, "already_credited")
            return CreditResult(False, paid.provider_payment_id, paid.amount_micros)
        if paid.kind == "auto_topup":
            self._reset_cached_failures(paid.account_id)
        return CreditResult(True, paid.provider_payment_id, paid.amount_micros, receipt.number)

    async def credit_manually(
        self, account_id: str, amount_micros: int, reference: str, *, note: str | None, actor: str
    ) -> Receipt | None:
        """An operator's top-up (a bank transfer) straight into the records, with its payment
        row, receipt and audit row in one transaction: the cluster's manual credit, for the
        admin API and the console alike. None: the reference was credited already."""
        paid = PaidPayment(
            account_id=account_id,
            provider="manual",
            provider_payment_id=reference,
            kind="manual",
            currency="usd",
            amount_minor=amount_micros // 10_000,
            amount_micros=amount_micros,
        )
        return await self.records.credit(
            paid,
            at_ms=self.clock(),
            buyer_name=self._buyer_name(account_id),
            seller=self.seller,
            actor=actor,
            event=None,
            note=note,
        )

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
        payment, settings = await self.records.record_failure(
            provider, provider_payment_id, reason, at_ms=self.clock(), actor=actor, event=event
        )
        if settings is not None:
            self.auto_topups[settings.account_id] = settings
        return payment

    async def remember(self, event: EventRecord, outcome: str) -> None:
        await self.records.remember(event, outcome, self.clock())

    async def save_customer(
        self, account_id: str, customer_id: str, payment_method_id: str | None
    ) -> None:
        await self.records.save_customer(account_id, customer_id, payment_method_id, self.clock())

    # -- auto top-up settings ---------------------------------------------------------------

    async def set_auto_topup(self, settings: AutoTopUpSettings, *, actor: str) -> None:
        settings = msgspec.structs.replace(settings, updated_at_ms=self.clock())
        audit = AuditEntry(
            actor, "auto_topup.update", settings.account_id, msgspec.structs.asdict(settings)
        )
        await self.records.save_auto_topup(settings, audit)
        self.auto_topups[settings.account_id] = settings

    def _reset_cached_failures(self, account_id: str) -> None:
        current = self.auto_topups.get(account_id)
        if current is not None and current.consecutive_failures:
            self.auto_topups[account_id] = msgspec.structs.replace(current, consecutive_failures=0)
