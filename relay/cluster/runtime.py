"""One instance's share of the cluster: the pools, its lease, and the heartbeat.

``ClusterRuntime.open`` connects to PostgreSQL (migrations under the advisory lock, then a
lease for this process) and Redis, and builds the admission (``ClusterAdmitter``) over the
settler. ``start`` runs the settler, the invalidation listener and the heartbeat, which
every ``min(lease_s / 3, 1 s)``:

- renews this instance's PostgreSQL lease and the Redis leases of its in-flight
  concurrency slots; a lost lease (``LeaseLost``: the instance paused past it) stops
  admission (503) until ``rejoin`` has registered a new lease under a new id;
- compares the invalidation version (``check_version``), the backstop for a lost message;
- sweeps expired instances' holds (``reap_expired``) on at most one instance at a time,
  elected per sweep by a transaction-scoped advisory lock.

``close`` (after the server stopped taking requests and drained its streams) waits for the
settler to commit what is queued, then retires the lease so nothing of this instance is
left held.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.cluster.admission import MAX_PENDING_SETTLEMENTS, ClusterAdmitter
from relay.cluster.invalidation import Invalidation, InvalidationBus
from relay.cluster.job_runner import ClusterJob, JobRunner
from relay.cluster.pg_leases import InstanceLease, LeaseLost, reap_expired
from relay.cluster.pg_money import PgMoneyStore
from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_schema import migrate
from relay.cluster.redis_limits import ClusterSlot, RedisLimiter
from relay.cluster.settler import Settler
from relay.config import Config
from relay.jobs.periodic import PeriodicTask
from relay.money.estimate import CostQuote
from relay.usage.log import UsageLog, UsageRecord
from relay.usage.refusals import RefusalSink

__all__ = ["ClusterRuntime", "ClusterUsageLog", "refusal_sink"]

log = logging.getLogger(__name__)

# Any constant shared by every instance: who sweeps expired leases this round.
_REAPER_LOCK = 0x72656C6179 + 1
# Redis connections per instance (the pub/sub listener holds one), and how long a request
# waits for one before it is refused with 503.
REDIS_MAX_CONNECTIONS = 128
REDIS_WAIT_S = 5.0
# Queued settlements are given this long to commit at shutdown; what is left is released
# by the lease sweep (recorded abandoned), never charged twice.
DRAIN_TIMEOUT_S = 10.0

InvalidationHandler = Callable[[Invalidation], Awaitable[None]]


class ClusterUsageLog(UsageLog):
    """Usage rows to the settler: written in the same transaction as the batch's charges."""

    def __init__(
        self, settler: Settler, observer: Callable[[UsageRecord], None] | None, db: Any
    ) -> None:
        super().__init__(db, observer)
        self._settler = settler
        self._observe = observer

    def record(self, record: UsageRecord, charge: object = None) -> None:
        if self._observe is not None:
            self._observe(record)
        self._settler.record(record)


def refusal_sink(settler: Settler) -> RefusalSink:
    """Back-pressure refusal rows (``relay.usage.refusals``) to PostgreSQL with the settler's
    next batch, never awaited. Refused while settlements are backlogged: that backlog is
    what made this instance refuse, and the counts wait for a later interval."""

    def queue(record: UsageRecord) -> bool:
        if settler.pending >= MAX_PENDING_SETTLEMENTS:
            return False
        settler.record(record)
        return True

    return queue


class ClusterRuntime:
    """Also the app's ``Admitter`` (``state.admitter``): it admits through the admitter of
    the lease it holds now, which a rejoin replaces."""

    store: PgMoneyStore  # the current lease's (``_bind``)

    def __init__(
        self,
        pool: Any,
        redis: Any,
        lease: InstanceLease,
        *,
        lease_s: float,
        name: str = "relay",
        dsn: str = "",
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.redis = redis
        self.lease_s = lease_s
        self._name = name
        # This process on the invalidation bus: one name for its life, whatever its lease.
        self.origin = lease.instance_id
        self.lease_lost = False
        self.rejoins = 0
        store = PgMoneyStore(pool, lease.instance_id)
        # One settler for every lease of this process: each hold settles under the lease it
        # was placed with (ClusterHold.instance_id), and its usage row rides in the same
        # transaction as its settlement whichever lease is current.
        self.settler = Settler(store)
        # Admitters of earlier leases whose requests are still in flight (their slots are
        # still renewed; their settlements go through the shared settler).
        self._retired: list[ClusterAdmitter] = []
        self._bind(lease, store)
        self.bus: InvalidationBus | None = None
        self._on_invalidate: InvalidationHandler | None = None
        self._reload_pending = False
        self._settler_task: asyncio.Task[None] | None = None
        self._heartbeat = PeriodicTask(
            "relay-cluster-heartbeat", self.beat, interval_s=min(lease_s / 3, 1.0), log=log
        )
        self.reaped_holds = 0

    def _bind(self, lease: InstanceLease, store: PgMoneyStore | None = None) -> None:
        """Hold, limit and admit under ``lease`` from now on."""
        self.lease = lease
        self.instance_id = lease.instance_id
        # A rejoin's store keeps the first one's settings (its budget calendar above all).
        self.store = store or self.store.bound_to(lease.instance_id)
        self.limiter = RedisLimiter(
            self.redis, lease.instance_id, lease_ms=int(self.lease_s * 1000)
        )
        self.admitter = ClusterAdmitter(
            self.limiter, self.store, self.settler, lease_ok=self.healthy
        )

    # -- the Admitter protocol (relay.admission.admitter) ---------------------------------

    async def admit(self, exchange: Exchange, quote: CostQuote) -> Ticket:
        return await self.admitter.admit(exchange, quote)

    async def dry_run(self, exchange: Exchange, quote: CostQuote) -> dict[str, Any]:
        return await self.admitter.dry_run(exchange, quote)

    async def committed(self) -> None:
        await self.settler.committed()

    def healthy(self) -> bool:
        """May this instance admit? Not once its lease is lost or its settler has died (a
        request it admitted could then never be billed)."""
        task = self._settler_task
        return not self.lease_lost and (task is None or not task.done())

    @classmethod
    async def open(cls, config: Config, *, name: str = "relay") -> ClusterRuntime:
        assert config.storage is not None and config.cluster is not None
        import redis.asyncio as redis_asyncio  # the 'cluster' extra

        pool = await create_pool(config.storage.url, min_size=2, max_size=20)
        try:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            if applied:
                log.info("cluster: applied migrations %s", ", ".join(map(str, applied)))
            lease = await InstanceLease.register(pool, config.cluster.lease_s, name=name)
            # A blocking pool: a burst of requests waits for a free connection (up to
            # REDIS_WAIT_S) instead of failing with MaxConnectionsError past the pool's size.
            redis = redis_asyncio.Redis.from_pool(
                redis_asyncio.BlockingConnectionPool.from_url(
                    config.cluster.redis_url,
                    max_connections=REDIS_MAX_CONNECTIONS,
                    timeout=REDIS_WAIT_S,
                )
            )
        except BaseException:
            await pool.close()
            raise
        log.info("cluster: instance %s registered", lease.instance_id)
        return cls(
            pool, redis, lease, lease_s=config.cluster.lease_s, name=name, dsn=config.storage.url
        )

    async def start(self, on_invalidate: InvalidationHandler) -> None:
        self._on_invalidate = on_invalidate
        self._settler_task = asyncio.create_task(self.settler.run(), name="relay-settler")
        self.bus = InvalidationBus(self.redis, self.origin, self._apply)
        await self.bus.start()
        # Records were loaded before the listener subscribed: a change committed in between
        # was announced to nobody here, so everything is read once more now.
        await on_invalidate(Invalidation(version=self.bus.seen_version, kind="all"))
        # The lease has run since registration, before the app loaded its records: one beat
        # now renews it (or, if a slow start-up outlived it, registers a new one), so the
        # instance never serves its first requests fenced.
        await self.beat()
        self._heartbeat.start()

    async def _apply(self, change: Invalidation) -> None:
        assert self._on_invalidate is not None
        try:
            await self._on_invalidate(change)
        except Exception as exc:
            # Named reason: a reload that failed (PostgreSQL briefly unreachable) must not stop
            # the listener; the heartbeat reloads everything until one succeeds.
            self._reload_pending = True
            log.error("cluster: applying %s failed (%s); full reload pending", change.kind, exc)

    async def publish(self, kind: str, target: str = "") -> None:
        """Announce a committed change to every instance (this one included)."""
        assert self.bus is not None
        await self.bus.publish(kind, target)  # type: ignore[arg-type]

    async def beat(self) -> None:
        if not self.lease_lost:
            try:
                await self.lease.renew()
            except LeaseLost:
                # Fenced: holds of this instance may be released already; admit nothing more.
                self.lease_lost = True
                log.error("cluster: lease of %s expired; admission stopped", self.instance_id)
        if self.lease_lost:
            try:
                await self.rejoin()
            except Exception as exc:
                # Named reason: PostgreSQL refused the registration (unreachable for a
                # moment); retried next beat, and the rest of this beat (the in-flight
                # slots' Redis leases above all) still runs.
                log.error(
                    "cluster: registering a new lease failed: %s: %s", type(exc).__name__, exc
                )
        await self.limiter.renew(self._slots_in_flight())
        if self.bus is not None:
            await self.bus.check_version()
            if self._reload_pending:
                self._reload_pending = False
                await self._apply(Invalidation(version=self.bus.seen_version, kind="all"))
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _REAPER_LOCK):
                result = await reap_expired(conn)
                if result.holds_released:
                    self.reaped_holds += result.holds_released
                    log.warning(
                        "cluster: released %d holds of %d expired instances (abandoned)",
                        result.holds_released,
                        result.instances_reaped,
                    )

    def job_runner(self, jobs: Sequence[ClusterJob]) -> JobRunner:
        """This instance's candidacy to run the cluster's periodic ``jobs``: a connection
        of its own (the advisory lock lives with it), asked as often as the heartbeat."""
        import asyncpg  # the 'cluster' extra

        async def connect() -> Any:
            return await asyncpg.connect(self.dsn)

        return JobRunner(connect, jobs, round_s=min(self.lease_s / 3, 1.0))

    async def rejoin(self) -> None:
        """After a lost lease: register a NEW lease and admit under it.

        The old id is never reused: its holds are the sweep's (released, recorded abandoned)
        or their settlement's, whichever reaches the hold row first — ``relay_settle`` and
        ``relay_reap_expired`` each delete it, so a request admitted under the old lease is
        charged once or released once, never both (a charge that finds its hold reaped
        charges nothing: fencing). Requests still in flight keep their old admitter until
        they end. A failed registration (PostgreSQL unreachable) is retried next beat.
        """
        lease = await InstanceLease.register(self.pool, self.lease_s, name=self._name)
        old, old_id = self.admitter, self.instance_id
        self._retired = [a for a in self._retired if a.in_flight]
        if old.in_flight:
            self._retired.append(old)
        self._bind(lease)
        self.lease_lost = False
        self.rejoins += 1
        log.warning("cluster: lease of %s was lost; rejoined as %s", old_id, lease.instance_id)

    def _slots_in_flight(self) -> list[ClusterSlot]:
        slots = list(self.admitter.in_flight)
        for retired in self._retired:
            slots.extend(retired.in_flight)
        return slots

    async def close(self) -> None:
        await self._heartbeat.stop()
        try:
            await asyncio.wait_for(self.settler.drain(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.error("cluster: %d settlements not committed at shutdown", self.settler.pending)
        task, self._settler_task = self._settler_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # named reason: report it, then still retire and close
                log.error("cluster: the settler had stopped: %s: %s", type(exc).__name__, exc)
        for admitter in (*self._retired, self.admitter):
            await admitter.drain()
        if self.bus is not None:
            await self.bus.stop()
        try:
            if not self.lease_lost:
                # Expire now: whatever did not commit is released by the next sweep
                # (recorded abandoned) instead of waiting out the lease.
                await self.lease.retire()
        finally:
            await self.redis.aclose()
            await self.pool.close()
