"""The in-memory wallet: balances, key spend, and holds placed before and settled after a call.

The process is the only writer of the database, so balances live here and the database
follows: every ledger row the wallet creates is handed to ``on_ledger_entry`` (the app
enqueues it to the storage writer). At start-up the caller loads each account with the sum
of its ledger rows and each key with the sum of its charges; open holds die with the process.

Money rules (docs/architecture.md §3): ``available = balance + credit_limit − open holds``;
a hold is placed only if the request's worst case fits the *headroom rule* (``plan_hold``),
so every hold fits in ``available`` and no account ends below ``−credit_limit`` (and no key
above its spend cap) under any interleaving. A charge never exceeds the request's worst
case: an upstream that reports more is an *overrun*, logged for the operator and noted on
the charge row, but billed at the worst case only. The headroom rule is one check inside
the gate's admission (``relay.admission.gate``), not admission itself.

Every method is synchronous (no ``await``), so each one is atomic on the event loop and
``settle``/``release`` can run in a ``finally`` during cancellation. Not thread-safe.

Reference idempotency: the database enforces one credit/refund per ``(account, reference)``
and one charge per reference. The wallet also refuses a repeated credit/refund reference
(``DuplicateReference``) from a per-account set seeded at load, because a top-up must not
touch the in-memory balance before the database would reject it. Charges need no set: a
hold settles at most once by construction.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from relay.errors import QuotaError
from relay.money.amounts import check_adjustment, check_micros
from relay.money.budget import BudgetCalendar
from relay.money.exposure import Exposure
from relay.money.quota_messages import balance_message, cap_message, charge_note
from relay.money.records import (
    AccountMode,
    BalanceView,
    BudgetView,
    DuplicateReference,
    Hold,
    HoldClosed,
    HoldPlan,
    KeySpendView,
    LedgerEntry,
    LedgerKind,
)
from relay.money.wallet_book import WalletBook, unix_ms

log = logging.getLogger("relay.wallet")

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
    "Wallet",
]


class Wallet(WalletBook):
    """Balances, key spend and holds of every loaded account, in memory.

    ``on_ledger_entry`` receives each new ledger row; it must not block (enqueue it). A
    row that the sink refuses (it raises) is not applied, so the in-memory balance is always
    the sum of the rows handed out.

    ``fast_path_margin_micros`` and ``spend_window_s`` tune when a hold is the cheap
    estimate rather than the worst case (see ``plan_hold``); they never decide whether a
    request gets a hold (the headroom rule does).

    What it moves money on, the loaded accounts and keys with their limits, budgets and
    views, is the ``WalletBook`` it extends (relay.money.wallet_book).
    """

    def __init__(
        self,
        on_ledger_entry: Callable[[LedgerEntry], None],
        *,
        fast_path_margin_micros: int = 1_000_000,
        spend_window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = unix_ms,
        calendar: BudgetCalendar | None = None,
    ) -> None:
        check_micros("fast_path_margin_micros", fast_path_margin_micros)
        if spend_window_s <= 0:
            raise ValueError("spend_window_s must be positive")
        self._sink = on_ledger_entry
        self._margin = fast_path_margin_micros
        self._spend_window_s = spend_window_s
        super().__init__(wall_clock_ms=wall_clock_ms, calendar=calendar)
        self._clock = clock
        self._open: dict[int, Hold] = {}
        self._hold_ids = itertools.count(1)

    # -- ledger rows other than charges ---------------------------------------------------

    def credit(
        self, account_id: str, amount_micros: int, *, reference: str, note: str | None = None
    ) -> LedgerEntry:
        """A top-up. ``DuplicateReference`` if this account already used ``reference``."""
        check_micros("amount_micros", amount_micros, positive=True)
        return self._append(account_id, "credit", amount_micros, reference, note)

    def refund(
        self, account_id: str, amount_micros: int, *, reference: str, note: str | None = None
    ) -> LedgerEntry:
        """Money given back (e.g. a disputed charge). References are unique like credits."""
        check_micros("amount_micros", amount_micros, positive=True)
        return self._append(account_id, "refund", amount_micros, reference, note)

    def adjust(
        self, account_id: str, amount_micros: int, *, reference: str, note: str | None = None
    ) -> LedgerEntry:
        """An admin correction, either sign. It is not a request, so it may cross the limit."""
        check_adjustment(amount_micros)
        return self._append(account_id, "adjustment", amount_micros, reference, note)

    def _append(
        self,
        account_id: str,
        kind: LedgerKind,
        amount_micros: int,
        reference: str,
        note: str | None,
    ) -> LedgerEntry:
        entry = self._entry(account_id, kind, amount_micros, reference, note)
        self._sink(entry)
        self._apply(entry)
        return entry

    # -- credits committed first, applied after (money changes memory after the database) --

    def prepare(
        self,
        account_id: str,
        kind: LedgerKind,
        amount_micros: int,
        *,
        reference: str,
        note: str | None = None,
    ) -> LedgerEntry:
        """A credit, refund or adjustment row to commit, NOT yet applied (nor sent to the sink).

        The caller commits the row (with its payment, receipt and audit rows) and then calls
        ``apply``, or ``abandon`` if the commit failed. The reference is reserved at once,
        so a concurrent repeat gets ``DuplicateReference`` while this one is in flight.
        """
        if kind == "charge":
            raise ValueError("charges are settled from holds")
        if kind == "adjustment":
            check_adjustment(amount_micros)
        else:
            check_micros("amount_micros", amount_micros, positive=True)
        entry = self._entry(account_id, kind, amount_micros, reference, note)
        if kind in ("credit", "refund"):
            self._accounts[account_id].references.add(reference)
        return entry

    def apply(self, entry: LedgerEntry) -> None:
        """The database committed ``entry`` (from ``prepare``): now the balance moves."""
        self._apply(entry)

    def abandon(self, entry: LedgerEntry) -> None:
        """The commit of ``entry`` failed: nothing changed; its reference is free again."""
        account = self._accounts.get(entry.account_id)
        if account is not None and entry.kind in ("credit", "refund"):
            account.references.discard(entry.reference)

    def _entry(
        self,
        account_id: str,
        kind: LedgerKind,
        amount_micros: int,
        reference: str,
        note: str | None,
    ) -> LedgerEntry:
        account = self._account(account_id)
        if not reference:
            raise ValueError("a ledger row needs a reference")
        if kind in ("credit", "refund") and reference in account.references:
            raise DuplicateReference(f"reference {reference!r} was already used on this account")
        return LedgerEntry(
            account_id=account_id,
            kind=kind,
            amount_micros=amount_micros,
            reference=reference,
            note=note,
            created_at_ms=self._wall_clock_ms(),
        )

    def _apply(self, entry: LedgerEntry) -> None:
        account = self._accounts[entry.account_id]
        account.balance += entry.amount_micros
        if entry.kind in ("credit", "refund"):
            account.references.add(entry.reference)

    # -- holds ----------------------------------------------------------------------------

    def plan_hold(
        self,
        account_id: str,
        key_id: str | None,
        *,
        estimate_micros: int,
        worst_case_micros: int,
    ) -> HoldPlan:
        """Decide a request's hold, or raise ``QuotaError`` naming "balance" or "key spend cap".

        The headroom rule. Let B be the balance, L the credit limit, W_i the worst case of
        each request in flight and R = B + L − Σ W_i the *headroom*. A request with worst
        case W gets a hold iff W ≤ R (and, for a capped key, W ≤ cap − spent − Σ W_i of the
        key). docs/architecture.md §3.4 restates this proof at length.

        Proof sketch of the invariant R ≥ 0 (hence B ≥ −L + Σ W_i ≥ −L), by induction over
        any interleaving of operations, each atomic on the event loop:
          - hold:    R' = R − W ≥ 0 because W ≤ R was checked;
          - settle:  R' = R + W_i − actual ≥ R whenever actual ≤ W_i (else: an overrun);
          - release: actual = 0, so R grows;
          - credit/refund: B grows; restart: in-flight holds vanish, Σ W_i = 0, R grows.
        The same argument with R_k = cap − spent − Σ W_i keeps a key within its cap. The
        rule is also necessary: holding with W > R lets the in-flight requests, each
        costing its worst case, overdraw. So it refuses no request that is safe.

        What is held. The hold only sets the reported ``available``; the headroom rule does
        not depend on it. Far from the edge the hold is the cheap estimate E: when
        R − W ≥ T, with threshold T = max(fast_path_margin, spend of the last one to two
        ``spend_window_s``). In terms of ``available`` = B + L − Σ H_i, that is
        available ≥ T + W + Σ (W_i − H_i): the threshold rises with recent spend and with
        the under-held part of everything in flight. Either hold fits in ``available``,
        as the contract demands: available ≥ R ≥ W + T ≥ E on the fast path, and
        available ≥ R ≥ W on the strict path (H_i ≤ W_i for every hold).
        """
        check_micros("estimate_micros", estimate_micros)
        check_micros("worst_case_micros", worst_case_micros)
        if estimate_micros > worst_case_micros:
            raise ValueError("estimate_micros must not exceed worst_case_micros")
        account = self._account(account_id)
        key = self._key_of(account_id, key_id)
        if worst_case_micros > account.headroom():
            raise QuotaError(balance_message(account.headroom(), worst_case_micros))
        if account.cap:
            self._roll(account)
            budget_headroom = account.cap_headroom()
            if budget_headroom is not None and worst_case_micros > budget_headroom:
                raise QuotaError(
                    cap_message("account", account, budget_headroom, worst_case_micros)
                )
        if key is not None and key.window is not None:
            self._roll(key)
        key_headroom = None if key is None else key.headroom()
        if key is not None and key_headroom is not None and worst_case_micros > key_headroom:
            raise QuotaError(cap_message("key", key, key_headroom, worst_case_micros))
        window = self._window()
        fast = account.headroom() - worst_case_micros >= self._threshold(account, window)
        if key is not None and key_headroom is not None:
            fast = fast and key_headroom - worst_case_micros >= self._threshold(key, window)
        return HoldPlan(
            hold_micros=estimate_micros if fast else worst_case_micros,
            estimate_micros=estimate_micros,
            worst_case_micros=worst_case_micros,
            strict=not fast,
        )

    def hold(
        self,
        account_id: str,
        key_id: str | None,
        *,
        estimate_micros: int,
        worst_case_micros: int,
    ) -> Hold:
        """Place a hold (rules in ``plan_hold``); ``QuotaError`` (402) when it does not fit."""
        plan = self.plan_hold(
            account_id, key_id, estimate_micros=estimate_micros, worst_case_micros=worst_case_micros
        )
        return self.place(account_id, key_id, plan)

    def place(self, account_id: str, key_id: str | None, plan: HoldPlan) -> Hold:
        """Place the hold ``plan_hold`` just gave, with nothing awaited since (same state)."""
        hold = Hold(next(self._hold_ids), account_id, key_id, plan)
        for exposure in self._exposures(hold):
            exposure.held += hold.held_micros
            exposure.worst += hold.worst_case_micros
        self._open[hold.hold_id] = hold
        return hold

    def settle(
        self,
        hold: Hold,
        actual_cost_micros: int,
        *,
        reference: str,
        request_id: str | None = None,
        estimated: bool = False,
    ) -> LedgerEntry | None:
        """Close a hold and charge the measured cost (no row when it is 0).

        Exactly once: a second ``settle`` raises ``HoldClosed`` and charges nothing. A cost
        above the hold is charged in full up to the worst case; above the worst case it is
        an overrun (``hold.overrun``, the row's note and a warning for the operator) and
        only the worst case is charged, so admission's bound holds whatever an upstream
        reports. What was charged is ``hold.charged_micros``. The hold is released before
        the row is handed to the sink, so even a failing sink never leaks it.
        """
        check_micros("actual_cost_micros", actual_cost_micros)
        if actual_cost_micros and not reference:
            raise ValueError("a charge needs a reference")
        if not self._is_open(hold):
            raise HoldClosed(f"hold {hold.hold_id} is already settled or released")
        self._close(hold)
        hold.overrun = actual_cost_micros > hold.worst_case_micros
        if hold.overrun:
            log.warning(
                "overrun on request %s: measured %d micros, billed the worst case %d",
                request_id or reference,
                actual_cost_micros,
                hold.worst_case_micros,
            )
        note = charge_note(
            estimated=estimated,
            overrun=hold.overrun,
            measured_micros=actual_cost_micros,
            worst_case_micros=hold.worst_case_micros,
        )
        actual_cost_micros = min(actual_cost_micros, hold.worst_case_micros)
        if actual_cost_micros == 0:
            return None
        entry = LedgerEntry(
            account_id=hold.account_id,
            kind="charge",
            amount_micros=-actual_cost_micros,
            reference=reference,
            key_id=hold.key_id,
            request_id=request_id,
            note=note,
            created_at_ms=self._wall_clock_ms(),
        )
        self._sink(entry)
        hold.charged_micros = actual_cost_micros
        window = self._window()
        account = self._accounts[hold.account_id]
        account.balance -= actual_cost_micros
        account.recent.add(actual_cost_micros, window)
        self._roll(account)  # a charge counts in the period it settles in
        account.add_spend(actual_cost_micros)
        if hold.key_id is not None:
            key = self._keys[hold.key_id]
            self._roll(key)
            key.add_spend(actual_cost_micros)
            key.recent.add(actual_cost_micros, window)
        return entry

    def release(self, hold: Hold) -> None:
        """Close a hold without charging (failed call). A no-op once closed: use in ``finally``."""
        if self._is_open(hold):
            self._close(hold)

    def _is_open(self, hold: Hold) -> bool:
        return not hold.closed and self._open.get(hold.hold_id) is hold

    def _close(self, hold: Hold) -> None:
        hold.closed = True
        del self._open[hold.hold_id]
        for exposure in self._exposures(hold):
            exposure.held -= hold.held_micros
            exposure.worst -= hold.worst_case_micros

    def open_hold_count(self, account_id: str | None = None) -> int:
        if account_id is None:
            return len(self._open)
        return sum(1 for hold in self._open.values() if hold.account_id == account_id)

    def _exposures(self, hold: Hold) -> list[Exposure]:
        exposures: list[Exposure] = [self._accounts[hold.account_id]]
        if hold.key_id is not None:
            exposures.append(self._keys[hold.key_id])
        return exposures

    def _window(self) -> int:
        return int(self._clock() // self._spend_window_s)

    def _threshold(self, exposure: Exposure, window: int) -> int:
        return max(self._margin, exposure.recent.total(window))
