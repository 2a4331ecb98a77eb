"""The ticket: what an admitted request holds, and ending it exactly once.

``Ticket`` is what the gate's admission (``relay.admission.gate``) hands a request: its
rate-limit slot and its wallet hold, taken before the upstream call. ``Ticket.settle``
(measured cost) or ``Ticket.release`` (nothing billable happened) ends it; both are
synchronous, so they can run in a ``finally`` during cancellation, and only the first that
succeeds counts. Which path calls which is in docs/architecture.md §2.2.

Settlement is structural: a ticket is a context manager, and leaving its block
without a settlement (whatever raised: the upstream, pricing, the wallet, a cancelled
task) releases the hold and the concurrency slot. A block that passes the ticket on to
something that outlives it (a stream, a video job) says so with ``hand_over``; the new
owner must then end it, and gets the same guarantee from ``Ticket.owned``.

A ticket counts as finished only once the wallet accepted the settlement: if pricing or
the wallet raises inside ``settle``, the ticket stays open so that the block's exit (or
a later ``release``) still gives the hold and the slot back.
"""

from __future__ import annotations

from types import TracebackType

from relay.admission.limits import LimitSlot
from relay.money.wallet import Hold, LedgerEntry, Wallet

__all__ = ["Ticket"]


class Ticket:
    __slots__ = (
        "_slot",
        "_hold",
        "_wallet",
        "_finished",
        "_settled",
        "_handed_over",
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
        self._settled = False
        self._handed_over = False
        self.charged_micros = 0
        self.overrun = False
        # The charge row, persisted together with the request's usage row.
        self.charge: LedgerEntry | None = None

    # -- the structural guarantee ---------------------------------------------------------

    # A plain context manager, not an async one: its exit only releases (synchronous), and
    # ``async with`` cost every request two coroutines that never wait.
    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._handed_over:
            self.release()

    def hand_over(self) -> Ticket:
        """The block ends but the request does not (a stream): the caller's new owner settles.

        Only the current block's exit is affected; the new owner ends the ticket inside
        ``owned()`` (or calls ``settle``/``release`` itself in a ``finally``).
        """
        self._handed_over = True
        return self

    def owned(self) -> _Owned:
        """A (sync) block for the new owner after ``hand_over``: released on any way out."""
        return _Owned(self)

    # -- ending it ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def settled(self) -> bool:
        """Ended by ``settle`` (its usage row went with the charge), not by ``release``."""
        return self._settled

    @property
    def held_micros(self) -> int:
        return self._hold.held_micros if self._hold is not None else 0

    @property
    def worst_case_micros(self) -> int | None:
        """The most this request may be charged (None: not metered, e.g. the operator)."""
        return self._hold.worst_case_micros if self._hold is not None else None

    def settle(
        self,
        cost_micros: int,
        measured_tokens: int | None,
        *,
        request_id: str,
        estimated: bool,
    ) -> int:
        """Charge the measured cost (the wallet caps it at the worst case), release the rest.

        Returns what was charged. If the wallet refuses (it raises), nothing is marked
        finished: the exception propagates and the block's exit releases the hold.
        """
        if self._finished:
            return self.charged_micros
        charged = cost_micros
        if self._hold is not None and self._wallet is not None:
            self.charge = self._wallet.settle(
                self._hold,
                cost_micros,
                reference=request_id,
                request_id=request_id,
                estimated=estimated,
            )
            self.overrun = self._hold.overrun
            charged = self._hold.charged_micros
        self._finished = self._settled = True
        self.charged_micros = charged
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


class _Owned:
    __slots__ = ("_ticket",)

    def __init__(self, ticket: Ticket) -> None:
        self._ticket = ticket

    def __enter__(self) -> Ticket:
        return self._ticket

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._ticket.release()
