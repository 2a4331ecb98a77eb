"""The wallet's records: ledger rows, balance views, hold plans and open holds.

Plain data shared by ``relay.money.wallet`` (which decides holds and settlements) and its
callers (the ledger store, the API, the admin views); no rules live here.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from relay.money.pricing import micros_to_usd

__all__ = [
    "AccountMode",
    "BalanceView",
    "BudgetView",
    "DuplicateReference",
    "Hold",
    "HoldClosed",
    "HoldPlan",
    "KeySpendView",
    "LedgerEntry",
    "LedgerKind",
    "balance_fields",
]

AccountMode = Literal["prepaid", "postpaid"]
LedgerKind = Literal["credit", "charge", "adjustment", "refund"]


class LedgerEntry(msgspec.Struct, frozen=True):
    """One append-only ledger row; ``amount_micros`` is signed (credits +, charges −)."""

    account_id: str
    kind: LedgerKind
    amount_micros: int
    reference: str
    key_id: str | None = None
    request_id: str | None = None
    note: str | None = None
    created_at_ms: int = 0


class BalanceView(msgspec.Struct, frozen=True):
    balance_micros: int
    held_micros: int
    available_micros: int
    credit_limit_micros: int
    mode: AccountMode


def balance_fields(account_id: str, view: BalanceView) -> dict[str, Any]:
    """An account's balance as every route shows it (``/v1/balance``, the admin wallet)."""
    return {
        "account_id": account_id,
        "balance_micros": view.balance_micros,
        "held_micros": view.held_micros,
        "available_micros": view.available_micros,
        "credit_limit_micros": view.credit_limit_micros,
        "mode": view.mode,
        "balance_usd": micros_to_usd(view.balance_micros),
        "available_usd": micros_to_usd(view.available_micros),
    }


class KeySpendView(msgspec.Struct, frozen=True):
    key_id: str
    account_id: str
    spent_micros: int
    held_micros: int
    # 0 means no cap; remaining_micros is then None.
    spend_cap_micros: int
    remaining_micros: int | None
    # With a period the cap applies to period_spent_micros, reset at resets_at_ms (UTC);
    # without one period_spent_micros is the lifetime spend and the cap is lifetime.
    budget_period: str | None = None
    period_spent_micros: int = 0
    resets_at_ms: int | None = None


class BudgetView(msgspec.Struct, frozen=True):
    """An account's spend budget beside its balance (0 = none)."""

    budget_micros: int
    budget_period: str | None
    spent_micros: int
    remaining_micros: int | None
    resets_at_ms: int | None


class HoldPlan(msgspec.Struct, frozen=True):
    """What ``hold`` would place (also the dry-run answer): ``strict`` = worst case held."""

    hold_micros: int
    estimate_micros: int
    worst_case_micros: int
    strict: bool


class DuplicateReference(ValueError):
    """A credit or refund reference this account has already used."""


class HoldClosed(RuntimeError):
    """``settle`` on a hold that was already settled or released (it never charges twice)."""


class Hold:
    """An open claim on an account (and key) for one request; settle or release it once."""

    __slots__ = (
        "account_id",
        "charged_micros",
        "closed",
        "estimate_micros",
        "held_micros",
        "hold_id",
        "key_id",
        "overrun",
        "strict",
        "worst_case_micros",
    )

    def __init__(self, hold_id: int, account_id: str, key_id: str | None, plan: HoldPlan) -> None:
        self.hold_id = hold_id
        self.account_id = account_id
        self.key_id = key_id
        self.held_micros = plan.hold_micros
        self.estimate_micros = plan.estimate_micros
        self.worst_case_micros = plan.worst_case_micros
        self.strict = plan.strict
        self.closed = False
        self.charged_micros = 0
        # Set when the measured cost exceeded worst_case_micros (the only way to overdraw).
        self.overrun = False
