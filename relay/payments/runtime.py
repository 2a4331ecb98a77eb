"""The payments pieces that live as long as the server: opened in the lifespan.

``PaymentsRuntime`` (service, webhook, auto top-up, erasure job) is built from the config by
``open_payments`` and reaches handlers, the admin API's and the console's alike, as
``request.state.payments`` through ``payments_runtime``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import httpx
from starlette.requests import Request

from relay.identity.data_rights import ErasureJob
from relay.payments.auto_topup import AutoTopUp
from relay.payments.backend import PaymentRecords, SqlitePayments
from relay.payments.pg_backend import PgPayments
from relay.payments.service import PaymentsService, PaymentsUnavailable
from relay.payments.stripe_client import StripeClient
from relay.payments.webhook import StripeWebhook
from relay.state import RelayState

__all__ = ["PaymentsRuntime", "open_payments", "payment_records", "payments_runtime"]

log = logging.getLogger("relay.payments")


@dataclass
class PaymentsRuntime:
    service: PaymentsService
    auto_topup: AutoTopUp
    # The embedded erasure job; None in cluster mode (the elected runner's PgErasure).
    erasure: ErasureJob | None
    webhook: StripeWebhook | None = None

    def start(self) -> None:
        if self.erasure is not None:
            self.erasure.start()

    async def aclose(self) -> None:
        if self.erasure is not None:
            await self.erasure.stop()
        await self.auto_topup.aclose()
        if self.service.stripe is not None:
            await self.service.stripe.aclose()


async def open_payments(
    state: RelayState, *, stripe_transport: httpx.AsyncBaseTransport | None = None
) -> PaymentsRuntime:
    """Build the payments runtime from the config; secrets come from the environment."""
    config = state.config.payments
    stripe: StripeClient | None = None
    webhook_secret: str | None = None
    if config is not None and config.provider == "stripe":
        secret_key = os.environ.get(config.secret_key_env) or None
        webhook_secret = os.environ.get(config.webhook_secret_env) or None
        if secret_key is None:
            log.warning("card top-ups disabled: %s is not set", config.secret_key_env)
        else:
            stripe = StripeClient(
                secret_key,
                api_base=config.api_base,
                timeout_s=config.timeout_s,
                transport=stripe_transport,
            )
        if webhook_secret is None:
            log.warning("Stripe webhooks refused: %s is not set", config.webhook_secret_env)
    records = payment_records(state)
    service = PaymentsService(
        records=records,
        wallet=state.wallet,
        accounts=state.store,
        config=config,
        stripe=stripe,
        auto_topups=await records.auto_topups(),
    )
    return PaymentsRuntime(
        service=service,
        auto_topup=AutoTopUp(service),
        erasure=ErasureJob(state.db, state.store) if state.cluster is None else None,
        webhook=StripeWebhook(service, webhook_secret) if webhook_secret else None,
    )


def payment_records(state: RelayState) -> PaymentRecords:
    """PostgreSQL's records in cluster mode (shared by every instance), else SQLite's."""
    if state.cluster is not None:
        return PgPayments(state.cluster.pool, state.store.audit_key)
    return SqlitePayments(state.db, state.wallet, state.store.audit_key)


def payments_runtime(request: Request) -> PaymentsRuntime:
    runtime = getattr(request.state, "payments", None)
    if not isinstance(runtime, PaymentsRuntime):
        raise PaymentsUnavailable("Payments are not enabled on this server")
    return runtime
