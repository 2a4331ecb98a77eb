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
from relay.payments.auto_settings import load_all_settings
from relay.payments.auto_topup import AutoTopUp
from relay.payments.service import PaymentsService, PaymentsUnavailable
from relay.payments.stripe_client import StripeClient
from relay.payments.webhook import StripeWebhook
from relay.state import RelayState

__all__ = ["PaymentsRuntime", "open_payments", "payments_runtime"]

log = logging.getLogger("relay.payments")


@dataclass
class PaymentsRuntime:
    service: PaymentsService
    auto_topup: AutoTopUp
    erasure: ErasureJob
    webhook: StripeWebhook | None = None

    def start(self) -> None:
        self.erasure.start()

    async def aclose(self) -> None:
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
    service = PaymentsService(
        db=state.db,
        wallet=state.wallet,
        accounts=state.store,
        config=config,
        stripe=stripe,
        auto_topups=await load_all_settings(state.db),
    )
    return PaymentsRuntime(
        service=service,
        auto_topup=AutoTopUp(service),
        erasure=ErasureJob(state.db, state.store),
        webhook=StripeWebhook(service, webhook_secret) if webhook_secret else None,
    )


def payments_runtime(request: Request) -> PaymentsRuntime:
    runtime = getattr(request.state, "payments", None)
    if not isinstance(runtime, PaymentsRuntime):
        raise PaymentsUnavailable("Payments are not enabled on this server")
    return runtime
