"""Admission in cluster mode: a Redis slot, then a PostgreSQL hold; a ticket that settles
through the settler.

``ClusterAdmitter.admit`` takes every rate limit and concurrency place in one Redis script
(``RedisLimiter.take``: all or nothing), then places the hold in one PostgreSQL call
(``PgMoneyStore.hold``: the headroom rule, atomically across instances). A refused hold
gives the slot and its tokens back, so a refused request consumes nothing anywhere, as in
the embedded gate.

``ClusterTicket`` keeps the embedded ticket's contract (``relay.admission.ticket``): its
``settle`` and ``release`` are synchronous, because a stream's generator ends it from a
``finally`` during cancellation. They hand the settlement to the ``Settler`` (group
commit) and the slot's release to a background task; the charge the ticket reports is the
one the database will write (the measured cost, capped at the hold's worst case).

A call cancelled while a hold or a slot is being placed (the client left) is shielded: when
the call completes anyway, what it placed is given back at once rather than left until the
instance's lease ends (which, for a live instance, is never).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.cluster.pg_leases import LeaseLost
from relay.cluster.pg_money import ClusterHold, PgMoneyStore
from relay.cluster.redis_limits import Bucket, ClusterSlot, Concurrency, RedisLimiter
from relay.cluster.settler import Settler
from relay.errors import StorageUnavailable
from relay.identity.accounts import Account, ApiKey
from relay.money.estimate import CostQuote

__all__ = ["ClusterAdmitter", "ClusterTicket"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Settlements queued but not yet committed beyond which admission stops (fail closed, as the
# embedded gate stops while its writer cannot keep up).
MAX_PENDING_SETTLEMENTS = 20_000


def limits_for(
    key: ApiKey, account: Account, estimated_tokens: int
) -> tuple[list[Bucket], list[Concurrency]]:
    """The embedded limiter's limits as Redis buckets and sets (0 = unlimited)."""
    buckets: list[Bucket] = []
    for scope, owner in (("key", key), ("account", account)):
        if owner.rpm > 0:
            buckets.append(Bucket(f"{scope}:{owner.id}:rpm", owner.rpm, 1))
        if owner.tpm > 0:
            buckets.append(Bucket(f"{scope}:{owner.id}:tpm", owner.tpm, estimated_tokens))
    concurrency = [
        Concurrency(f"key:{key.id}", key.concurrency),
        Concurrency(f"account:{account.id}", account.concurrency),
    ]
    return buckets, concurrency


class ClusterTicket(Ticket):
    __slots__ = ("_admitter", "_cluster_slot", "_cluster_hold", "_estimated_tokens")

    def __init__(
        self,
        admitter: ClusterAdmitter,
        slot: ClusterSlot,
        hold: ClusterHold,
        estimated_tokens: int,
    ) -> None:
        super().__init__()
        self._admitter = admitter
        self._cluster_slot = slot
        self._cluster_hold = hold
        self._estimated_tokens = estimated_tokens

    @property
    def held_micros(self) -> int:
        return self._cluster_hold.held_micros

    @property
    def worst_case_micros(self) -> int | None:
        return self._cluster_hold.worst_case_micros

    def settle(
        self,
        cost_micros: int,
        measured_tokens: int | None,
        *,
        request_id: str,
        estimated: bool,
    ) -> int:
        if self._finished:
            return self.charged_micros
        hold = self._cluster_hold
        # Queued, not yet committed: the database charges min(cost, worst case), as here.
        self._admitter.settler.submit(hold, cost_micros, reference=request_id, estimated=estimated)
        self._finished = self._settled = True
        self.overrun = cost_micros > hold.worst_case_micros
        self.charged_micros = min(cost_micros, hold.worst_case_micros)
        delta = 0 if measured_tokens is None else measured_tokens - self._estimated_tokens
        self._admitter.give_back(self._cluster_slot, delta)
        return self.charged_micros

    @property
    def cluster_hold(self) -> ClusterHold:
        return self._cluster_hold

    def handed_over(self) -> None:
        """The hold now belongs to something that outlives the request (a video job:
        ``relay.cluster.pg_videos`` moved it in PostgreSQL): finish without settling it,
        and give the slot back as ``release`` does."""
        if self._finished:
            return
        self._finished = True
        self._admitter.give_back(self._cluster_slot, -self._estimated_tokens)

    def release(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._admitter.settler.submit(self._cluster_hold, 0, reference="")
        finally:
            self._admitter.give_back(self._cluster_slot, -self._estimated_tokens)


class ClusterAdmitter:
    """One instance's admission over the shared Redis and PostgreSQL."""

    def __init__(
        self,
        limiter: RedisLimiter,
        store: PgMoneyStore,
        settler: Settler,
        *,
        lease_ok: Callable[[], bool] = lambda: True,  # False: lease lost or settler dead
    ) -> None:
        self.limiter = limiter
        self.store = store
        self.settler = settler
        self._lease_ok = lease_ok
        # Slots taken and not yet given back: the heartbeat renews their leases.
        self.in_flight: set[ClusterSlot] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _check(self) -> None:
        if not self._lease_ok():
            raise StorageUnavailable(
                "this instance cannot record requests (its cluster lease or settler stopped);"
                " retry on another instance"
            )
        if self.settler.pending > MAX_PENDING_SETTLEMENTS:
            raise StorageUnavailable("settlements are not being committed; retry shortly")

    async def admit(self, exchange: Exchange, quote: CostQuote) -> Ticket:
        key, account = exchange.principal.key, exchange.principal.account
        if key is None or account is None:
            return Ticket()
        self._check()
        buckets, concurrency = limits_for(key, account, quote.prompt_tokens)
        slot = await self._shielded(
            self.limiter.take(buckets, concurrency), lambda s: self.give_back(s, None, buckets)
        )
        self.in_flight.add(slot)
        try:
            hold = await self._shielded(
                self.store.hold(
                    account.id,
                    key.id,
                    estimate_micros=quote.estimate_micros,
                    worst_case_micros=quote.worst_case_micros,
                    request_id=exchange.request_id,
                ),
                lambda h: self.settler.submit(h, 0, reference=""),
            )
        except LeaseLost as exc:
            self.give_back(slot, None, buckets)
            raise StorageUnavailable(str(exc)) from None
        except BaseException:
            # Refused (402) or cancelled: the slot and every token it took go back.
            self.give_back(slot, None, buckets)
            raise
        return ClusterTicket(self, slot, hold, quote.prompt_tokens)

    async def _shielded(self, call: Awaitable[T], undo: Callable[[T], None]) -> T:
        """Await ``call``; if the caller is cancelled meanwhile, ``undo`` what it placed."""
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:

            def completed(done: asyncio.Future[T]) -> None:
                if not done.cancelled() and done.exception() is None:
                    undo(done.result())

            task.add_done_callback(completed)
            raise

    def give_back(
        self, slot: ClusterSlot, tpm_delta: int | None, refund: list[Bucket] | None = None
    ) -> None:
        """Release the slot in the background (synchronous callers): correct TPM by
        ``tpm_delta`` tokens, or give back everything taken when ``refund`` names buckets."""
        self.in_flight.discard(slot)
        if refund is not None:
            corrections = [(bucket, -bucket.amount) for bucket in refund]
        else:
            corrections = [
                (bucket, tpm_delta)
                for bucket in slot.buckets
                if tpm_delta and bucket.name.endswith(":tpm")
            ]
        task = asyncio.get_running_loop().create_task(self.limiter.release(slot, corrections))
        self._tasks.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The slot's lease is no longer renewed: it frees itself after lease_s.
            log.warning("cluster: releasing a slot failed: %s", task.exception())

    async def dry_run(self, exchange: Exchange, quote: CostQuote) -> dict[str, Any]:
        assert exchange.model is not None
        key, account = exchange.principal.key, exchange.principal.account
        hold_micros = 0
        available: int | None = None
        if key is not None and account is not None:
            available = (await self.store.snapshot(account.id)).available_micros
            # relay_hold's own choice (margin and recent spend), read without holding.
            held = await self.store.preview_hold(
                account.id,
                key.id,
                estimate_micros=quote.estimate_micros,
                worst_case_micros=quote.worst_case_micros,
            )
            hold_micros = quote.worst_case_micros if held is None else held
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

    async def committed(self) -> None:
        await self.settler.committed()

    async def drain(self) -> None:
        """Wait for slot releases in flight (shutdown, after the settler drained)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
