"""The ticket: what an admitted request holds, and ending it exactly once.

``Ticket`` is what the gate's admission (``relay.admission.gate``) hands a request: its
rate-limit slot and its wallet hold, taken before the upstream call. ``Ticket.settle``
(measured cost) or ``Ticket.release`` (nothing billable happened) ends it; both are
synchronous, so a stream's generator can call them from its ``finally`` during
cancellation, and only the first call counts. Which path calls which is in
docs/architecture.md §2.2.
"""

from __future__ import annotations

from relay.admission.limits import LimitSlot
from relay.money.wallet import Hold, LedgerEntry, Wallet

__all__ = ["Ticket"]


class Ticket:
    __slots__ = (
        "_slot",
        "_hold",
        "_wallet",
        "_finished",
        "charged_micros",
        "overrun",
        "charge",
    )

    def __init__(
        self,
        slot: LimitSlot | None = None,
        hold: Hold | None = None,
        wallet: Wallet | None = None,
    ):
        self._slot = slot
        self._hold = hold
        self._wallet = wallet
        self._finished = False
        self.charged_micros = 0
        self.overrun = False
        # The charge row, persisted together with the request's usage row.
        self.charge: LedgerEntry | None = None

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def held_micros(self) -> int:
        return self._hold.held_micros if self._hold is not None else 0

    def settle(
        self,
        cost_micros: int,
        measured_tokens: int | None,
        *,
        request_id: str,
        estimated: bool,
    ) -> int:
        """Charge the measured cost, release the rest; returns what was charged."""
        if self._finished:
            return self.charged_micros
        self._finished = True
        try:
            if self._hold is not None and self._wallet is not None:
                self.charge = self._wallet.settle(
                    self._hold,
                    cost_micros,
                    reference=request_id,
                    request_id=request_id,
                    estimated=estimated,
                )
                self.overrun = self._hold.overrun
            self.charged_micros = cost_micros
        finally:
            if self._slot is not None:
                self._slot.release(measured_tokens)
        return self.charged_micros

    def release(self) -> None:
        """Nothing billable happened (the upstream was never reached or refused)."""
        if self._finished:
            return
        self._finished = True
        try:
            if self._hold is not None and self._wallet is not None:
                self._wallet.release(self._hold)
        finally:
            if self._slot is not None:
                self._slot.release(0)
