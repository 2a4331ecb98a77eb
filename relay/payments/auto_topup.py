"""Auto top-up: when a settlement leaves a balance below its trigger, charge the saved card.

``AutoTopUp.check(account_id)`` is called after every settlement, so it is synchronous
and cheap (two dict lookups and a comparison) and never waits: a refill runs as a task.
At most one refill per account is in flight: the in-memory set covers the call to
Stripe, and a pending ``auto_topup`` payment row (younger than ``pending_window_ms``)
covers the wait for a webhook. A refill that would pass the monthly cap is not made (a
notice says so once a month). A failed refill leaves an audit row and a notice, and the
third failure in a row switches auto top-up off (``relay.payments.service``).
"""

from __future__ import annotations

import asyncio
import logging

from relay.money.pricing import micros_to_usd
from relay.payments import auto_settings
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.backend import AuditEntry
from relay.payments.service import PaymentsService
from relay.payments.store import PaidPayment, Payment, micros_to_minor, new_payment_id
from relay.payments.stripe_client import PaymentIntent, StripeClient, StripeError

__all__ = ["AutoTopUp"]

log = logging.getLogger("relay.payments.auto_topup")
ACTOR = "auto-topup"
HOUR_MS = 3_600_000


class AutoTopUp:
    def __init__(self, service: PaymentsService, *, pending_window_ms: int = HOUR_MS) -> None:
        self._service = service
        self._pending_window_ms = pending_window_ms
        self._in_flight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self, account_id: str) -> bool:
        """After a settlement: schedule a refill if one is due. True if one was scheduled."""
        settings = self._service.auto_topups.get(account_id)
        if settings is None or not settings.enabled or account_id in self._in_flight:
            return False
        wallet = self._service.wallet
        if not wallet.has_account(account_id):
            return False
        if wallet.snapshot(account_id).balance_micros >= settings.trigger_micros:
            return False
        self._start(settings)
        return True

    async def sweep(self) -> int:
        """Cluster mode: a refill for every account whose balance (PostgreSQL's) is below its
        trigger; the elected instance runs this as a cluster job instead of ``check`` after
        each settlement (relay.cluster.job_runner). How many refills it started."""
        started = 0
        for settings in await self._service.records.due_auto_topups():
            if settings.account_id not in self._in_flight:
                self._start(settings)
                started += 1
        return started

    def _start(self, settings: AutoTopUpSettings) -> None:
        account_id = settings.account_id
        self._in_flight.add(account_id)
        task = asyncio.get_running_loop().create_task(self._refill(settings))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(account_id, done))

    def in_flight(self, account_id: str) -> bool:
        return account_id in self._in_flight

    async def wait_idle(self) -> None:
        """Wait for the refills running now (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.wait_idle()

    def _finished(self, account_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight.discard(account_id)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("auto top-up for %s failed: %s", account_id, type(error).__name__)

    async def _refill(self, settings: AutoTopUpSettings) -> None:
        service = self._service
        stripe = service.stripe
        if stripe is None:
            return
        account_id = settings.account_id
        now = service.clock()
        if await service.records.pending_auto_topup(account_id, now - self._pending_window_ms):
            return
        spent = await service.records.monthly_auto_topup_micros(account_id, now)
        if spent + settings.amount_micros > settings.monthly_cap_micros:
            await self._cap_reached(settings, now)
            return
        payment = await self._open_payment(settings, now)
        if payment is None:
            return  # a refill is already awaiting the provider's verdict
        customer = await service.records.customer_of(account_id)
        card = customer.payment_method_id if customer else None
        try:
            if customer is not None and card is None:
                card = await stripe.first_card(customer.customer_id)
            if customer is None or card is None:
                await self._fail(payment.provider_payment_id, "no saved card")
                return
            intent = await self._charge(stripe, payment, customer.customer_id, card)
        except StripeError as exc:
            reference = payment.provider_payment_id
            if exc.payment_intent_id:
                await self._attach(payment, exc.payment_intent_id)
                reference = exc.payment_intent_id
            await self._fail(reference, exc.reason)
            return
        await self._attach(payment, intent.id)
        if intent.status == "succeeded":
            paid = PaidPayment.in_minor_units(
                account_id,
                intent.id,
                "auto_topup",
                currency=payment.currency,
                amount_minor=intent.amount or payment.amount_minor,
            )
            await service.credit(paid, actor=ACTOR)
        # Otherwise (e.g. "processing") the payment stays pending: the webhook settles it.

    async def _open_payment(self, settings: AutoTopUpSettings, now: int) -> Payment | None:
        service = self._service
        payment_id = new_payment_id()
        payment = Payment(
            id=payment_id,
            account_id=settings.account_id,
            provider="stripe",
            # Replaced by the PaymentIntent id once Stripe has answered.
            provider_payment_id=f"pending:{payment_id}",
            kind="auto_topup",
            amount_micros=settings.amount_micros,
            currency=service.currency,
            amount_minor=micros_to_minor(settings.amount_micros, service.currency),
            status="pending",
            created_at_ms=now,
            updated_at_ms=now,
        )
        detail = {"payment_id": payment_id, "amount_micros": settings.amount_micros}
        audit = AuditEntry(ACTOR, "auto_topup.start", settings.account_id, detail)
        since = now - self._pending_window_ms
        opened = await service.records.open_auto_topup(payment, since, audit)
        return payment if opened else None

    async def _charge(
        self, stripe: StripeClient, payment: Payment, customer_id: str, card: str
    ) -> PaymentIntent:
        return await stripe.create_off_session_payment(
            account_id=payment.account_id,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            customer_id=customer_id,
            payment_method_id=card,
            idempotency_key=f"relay-auto-{payment.id}",
        )

    async def _attach(self, payment: Payment, intent_id: str) -> None:
        at_ms = self._service.clock()
        await self._service.records.attach_provider_id(payment.id, intent_id, at_ms)

    async def _fail(self, reference: str, reason: str) -> None:
        await self._service.record_failure("stripe", reference, reason, actor=ACTOR)

    async def _cap_reached(self, settings: AutoTopUpSettings, now: int) -> None:
        service = self._service
        month_start = auto_settings.month_start_ms(now)
        if await service.records.notice_since(settings.account_id, "auto_topup_cap", month_start):
            return
        cap = micros_to_usd(settings.monthly_cap_micros)
        message = f"Auto top-up paused: this month's cap of {cap} is reached."
        detail = {"monthly_cap_micros": settings.monthly_cap_micros}
        await service.records.add_notice(
            settings.account_id,
            "auto_topup_cap",
            message,
            now,
            AuditEntry(ACTOR, "auto_topup.cap_reached", settings.account_id, detail),
        )
