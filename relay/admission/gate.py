"""The admission gate: scopes, rate limits and wallet holds for a principal.

``Gate`` is the one place the data plane asks "may this principal do this, and what
does it hold?"; ``Gate.admit`` is what relay calls *admission*, and its answer is a
``Ticket``. Checks run in an order that never consumes budget for a request that is then
refused: scopes, then the wallet's headroom rule (``Wallet.plan_hold``, which places
nothing), then the rate-limit slot (``RateLimiter.take_slot``, which consumes nothing
when it refuses), then the hold itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from relay.admission.exchange import Exchange
from relay.admission.limits import RateLimiter
from relay.admission.ticket import Ticket
from relay.errors import Forbidden
from relay.identity.auth import Principal
from relay.money.estimate import CostQuote
from relay.money.pricing import ONE, parse_multiplier
from relay.money.wallet import Wallet
from relay.upstream.routing import Model

__all__ = ["Gate"]


class Gate:
    def __init__(
        self,
        wallet: Wallet,
        limiter: RateLimiter,
        *,
        check_storage: Callable[[], None] = lambda: None,
    ):
        self.wallet = wallet
        self.limiter = limiter
        # Raises StorageUnavailable while the database cannot record (relay.storage.health).
        self._check_storage = check_storage
        self._multipliers: dict[str, Decimal] = {"1": ONE}
        # Account × key products by their texts. A product equal to 1 is ``ONE`` itself,
        # which pricing takes as "no multiplier" (no Decimal arithmetic per request).
        self._products: dict[tuple[str, str], Decimal] = {}

    def _multiplier_of(self, text: str) -> Decimal:
        value = self._multipliers.get(text)
        if value is None:
            value = self._multipliers[text] = parse_multiplier(text)
        return value

    def multiplier(self, principal: Principal) -> Decimal:
        """Account × key price multiplier (discount or markup); 1 for the operator."""
        if principal.key is None or principal.account is None:
            return ONE
        texts = (principal.account.price_multiplier, principal.key.price_multiplier)
        product = self._products.get(texts)
        if product is None:
            product = self._multiplier_of(texts[0]) * self._multiplier_of(texts[1])
            product = self._products[texts] = ONE if product == ONE else product
        return product

    def check_model(self, principal: Principal, model: Model, endpoint: str) -> None:
        key = principal.key
        if key is None:
            return
        if key.models and model.name not in key.models:
            raise Forbidden(
                f"This API key may not use the model {model.name!r}", code="model_not_allowed"
            )
        if key.endpoints and endpoint not in key.endpoints:
            raise Forbidden(
                f"This API key may not use the {endpoint} endpoint", code="endpoint_not_allowed"
            )

    def admit(self, exchange: Exchange, quote: CostQuote) -> Ticket:
        """Take the rate-limit slot and the wallet hold, or refuse with 429/402.

        Use the ticket as ``with ticket:`` around everything after admission: the
        block's exit releases whatever was not settled (see ``relay.admission.ticket``).
        """
        # Fail closed: stop admitting while the writer cannot commit or catch up, so the
        # usage and charge rows of requests already in flight always have room.
        self._check_storage()
        key, account = exchange.principal.key, exchange.principal.account
        if key is None or account is None:
            exchange.admitted_at = time.perf_counter()
            return Ticket()
        # The wallet is asked first (without placing anything): a 402 must not spend rate
        # budget, and a 429 from the limiter consumes nothing by construction.
        plan = self.wallet.plan_hold(
            account.id,
            key.id,
            estimate_micros=quote.estimate_micros,
            worst_case_micros=quote.worst_case_micros,
        )
        slot = self.limiter.take_slot(
            key.id,
            rpm=key.rpm,
            tpm=key.tpm,
            concurrency=key.concurrency,
            estimated_tokens=quote.prompt_tokens,
            account_id=account.id,
            account_rpm=account.rpm,
            account_tpm=account.tpm,
            account_concurrency=account.concurrency,
        )
        # Nothing was awaited since the plan (the limiter touches no money), so the wallet
        # is as it was planned against: that hold is placed without deciding it again.
        hold = self.wallet.place(account.id, key.id, plan)
        exchange.admitted_at = time.perf_counter()
        return Ticket(slot, hold, self.wallet)

    def dry_run(self, exchange: Exchange, quote: CostQuote) -> dict[str, Any]:
        """The hold this request would place now, without placing it (docs/architecture.md §6.5)."""
        assert exchange.model is not None
        key, account = exchange.principal.key, exchange.principal.account
        hold_micros = 0
        available: int | None = None
        if key is not None and account is not None:
            plan = self.wallet.plan_hold(
                account.id,
                key.id,
                estimate_micros=quote.estimate_micros,
                worst_case_micros=quote.worst_case_micros,
            )
            hold_micros = plan.hold_micros
            available = self.wallet.snapshot(account.id).available_micros
        return {
            "dry_run": True,
            "estimate": {
                "model": exchange.model.name,
                "hold_micros": hold_micros,
                "estimated_cost_micros": quote.estimate_micros,
                "worst_case_cost_micros": quote.worst_case_micros,
                "available_micros": available,
            },
        }
