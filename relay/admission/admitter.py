"""The admission seam: how the request flow asks for a ticket when admission must await.

The embedded gate (``relay.admission.gate.Gate``) admits synchronously, from memory, and
the flow calls it directly: ``state.admitter`` is None and the hot path pays no extra await
or allocation. In cluster mode ``state.admitter`` is set, and the flow awaits it instead
(``relay.cluster.admission``: Redis limits, then a PostgreSQL hold). Either way the answer
is a ``Ticket`` whose ``settle``/``release`` stay synchronous (docs/scaling.md §2).
"""

from __future__ import annotations

from typing import Any, Protocol

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.money.estimate import CostQuote

__all__ = ["Admitter"]


class Admitter(Protocol):
    async def admit(self, exchange: Exchange, quote: CostQuote) -> Ticket:
        """Take the limits' slot and the hold, or refuse (429/402) having consumed nothing."""
        ...

    async def dry_run(self, exchange: Exchange, quote: CostQuote) -> dict[str, Any]:
        """The hold this request would place now, without placing it (as ``Gate.dry_run``)."""
        ...

    async def committed(self) -> None:
        """Wait until every settlement and usage row queued so far is committed."""
        ...
