"""The app's lifespan: what it opens before the first request and closes after the last.

It opens the state (relay.state_lifecycle), then starts the background work onto one
exit stack, in an order that unwinds in reverse: every job stops before what it uses
closes, and the database drains and closes last (in cluster mode the runtime after it,
so queued settlements commit before the lease retires). Embedded mode runs its jobs
itself; in cluster mode the elected instance runs them (relay.cluster_jobs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from relay.admin.reload import ConfigReloader
from relay.alerts.outbox import AlertOutbox
from relay.alerts.outbox_store import SqliteOutbox
from relay.alerts.pg_outbox import PgOutbox
from relay.alerts.readings import PgReadings
from relay.alerts.watch import AlertWatcher
from relay.cluster.pg_reader import PgReader
from relay.cluster.pg_upstream_toggles import UpstreamToggles
from relay.cluster_jobs import apply_invalidation, cluster_jobs
from relay.config import Config
from relay.errors import ConfigError
from relay.identity.keys import SecretHasher
from relay.jobs.periodic import PeriodicTask
from relay.metrics.traces import RequestTracer
from relay.payments.billing_mail import BILLING_MAIL_INTERVAL_S, BillingMailer
from relay.payments.mail_queue import MailQueue, SqliteMailQueue
from relay.payments.pg_mail_queue import PgMailQueue, claim_ms_of
from relay.payments.runtime import PaymentsRuntime, open_payments
from relay.state import RelayState
from relay.state_lifecycle import close_state, open_state
from relay.storage.reader import RowReader
from relay.upstream.health import HealthChecker
from relay.upstream.providers import ClientFactory
from relay.usage.retention import RetentionJob, RetentionPolicy, archive_dir_for

__all__ = ["HOUSEKEEPING_INTERVAL_S", "LifespanSeams", "relay_lifespan"]

# The lifespan's log lines keep the logger name they have always had.
log = logging.getLogger("relay.app")
HOUSEKEEPING_INTERVAL_S = 60.0


@dataclass(frozen=True)
class LifespanSeams:
    """What ``create_app`` passes in: upstream clients, argon2 cost and a fake Stripe for
    tests, the server's shutdown flag, and the wallet's clock."""

    client_factory: ClientFactory
    hasher: SecretHasher | None
    stopping: Callable[[], bool]
    stripe_transport: httpx.AsyncBaseTransport | None
    wall_clock_ms: Callable[[], int]


def _open_tracer(config: Config) -> RequestTracer:
    """OpenTelemetry is imported here, only when ``[telemetry] otlp_endpoint`` is set."""
    try:
        from relay.metrics.otlp import OtlpTracer, otlp_exporter
    except ImportError as exc:
        raise ConfigError(
            "telemetry.otlp_endpoint needs the otel extra: pip install 'relay[otel]' "
            f"({exc.name} is missing)"
        ) from None
    return OtlpTracer(config.telemetry, otlp_exporter(config.telemetry))


def _billing_mailer(
    state: RelayState, payments: PaymentsRuntime, clock_ms: Callable[[], int]
) -> BillingMailer:
    """Receipts and statements from SQLite's queue, or PostgreSQL's in cluster mode (sent
    by the elected job runner; each row claimed before its send: relay.payments.pg_mail_queue)."""
    receipts = payments.service.records.get_receipt
    if state.cluster is None:
        queue: MailQueue = SqliteMailQueue(state.db)
        reader: RowReader = state.db
    else:
        queue = PgMailQueue(state.cluster.pool, lambda: claim_ms_of(state.config))
        reader = PgReader(state.cluster.pool)
    return BillingMailer(queue, reader, receipts, lambda: state.config, clock_ms=clock_ms)


async def _housekeeping(state: RelayState) -> None:
    """Drop idle rate-limit state and persist keys' last use (once a minute)."""
    state.gate.limiter.sweep()
    await state.store.flush_last_used()


async def _flush_refusals(state: RelayState) -> None:
    """Back-pressure refusals counted since the last round: one usage row per key."""
    state.refusals.flush()


def _start_periodic(stack: contextlib.AsyncExitStack, task: PeriodicTask) -> None:
    task.start()
    stack.push_async_callback(task.stop)


def _start_chores(state: RelayState, stack: contextlib.AsyncExitStack) -> None:
    """This process's own upkeep, in either mode: housekeeping and refusals' usage rows."""
    housekeeping = PeriodicTask(
        "relay-housekeeping",
        lambda: _housekeeping(state),
        interval_s=HOUSEKEEPING_INTERVAL_S,
        log=log,
    )
    _start_periodic(stack, housekeeping)
    refusals = PeriodicTask(
        "relay-refusals",
        lambda: _flush_refusals(state),
        interval_s=state.refusals.interval_s,
        log=log,
    )
    _start_periodic(stack, refusals)


async def _start_embedded_videos(state: RelayState, stack: contextlib.AsyncExitStack) -> None:
    """Video jobs, run by this process (in cluster mode: the elected instance's)."""
    assert state.videos is not None
    await state.videos.start()  # re-places unfinished jobs' holds, resumes polling
    stack.push_async_callback(state.videos.stop)


def _start_embedded_retention(state: RelayState, stack: contextlib.AsyncExitStack) -> None:
    """Retention, run by this process (in cluster mode: the elected instance's). Started
    after the alert outbox it prunes, so it stops before the outbox closes."""
    assert state.alerts is not None
    retention = RetentionJob(
        state.db,
        archive_dir_for(state.config.database_path),
        RetentionPolicy.of(state.config.retention),
        prune_outbox=state.alerts.prune,
    )
    retention.start()
    stack.push_async_callback(retention.stop)


async def _start_alerts(state: RelayState, stack: contextlib.AsyncExitStack) -> AlertWatcher:
    """The alert outbox (on the state) and the watcher that fills it."""
    cluster = state.cluster
    # Cluster mode: one outbox in PostgreSQL for every instance (never the scratch file).
    outbox_store = SqliteOutbox(state.db) if cluster is None else PgOutbox(cluster.pool)
    alerts = AlertOutbox(outbox_store, lambda: state.config)
    await alerts.start()
    if cluster is None:
        # The outbox is the SQLite file: on a failing disk, shutdown skips waiting for it
        # (as for the keys' last use in close_state). PostgreSQL's outbox does not use it.
        stack.push_async_callback(
            alerts.aclose, store_failing=lambda: state.storage.problem() is not None
        )
    else:
        stack.push_async_callback(alerts.aclose)
    state.alerts = alerts
    watcher = (
        AlertWatcher(state, alerts)
        if cluster is None
        else AlertWatcher(
            state,
            alerts,
            readings=PgReadings(cluster.pool, state.wallet.period_bounds),
            shared=False,  # money: the elected instance's job (relay.cluster_jobs)
        )
    )
    await watcher.start()
    stack.push_async_callback(watcher.aclose)
    return watcher


def _start_cluster_jobs_or_billing_mail(
    state: RelayState,
    stack: contextlib.AsyncExitStack,
    payments: PaymentsRuntime,
    watcher: AlertWatcher,
    billing_mail: BillingMailer,
) -> None:
    """Billing mail embedded; in cluster mode videos, retention, auto top-up, money alerts
    and billing mail, run by one instance at a time (one advisory lock), stopped before
    what its jobs use closes."""
    if state.cluster is not None:
        runner = state.cluster.job_runner(cluster_jobs(state, payments, watcher, billing_mail))
        runner.start()
        stack.push_async_callback(runner.stop)
        return
    mailer = PeriodicTask(
        "relay-billing-mail",
        billing_mail.step,
        interval_s=BILLING_MAIL_INTERVAL_S,
        first_after_s=1.0,
        log=log,
    )
    _start_periodic(stack, mailer)


@asynccontextmanager
async def relay_lifespan(config: Config, seams: LifespanSeams) -> AsyncIterator[dict[str, Any]]:
    """The lifespan state handlers reach (``relay`` is the ``RelayState``)."""
    state = await open_state(
        config, seams.client_factory, seams.hasher, seams.stopping, seams.wall_clock_ms
    )
    # Unwound in reverse: background jobs stop before the database drains and closes.
    async with contextlib.AsyncExitStack() as stack:
        cluster = state.cluster
        if cluster is not None:
            # Closed last, after the server drained and the state's own writes (keys'
            # last use): queued settlements commit, then the lease retires.
            stack.push_async_callback(cluster.close)
        stack.push_async_callback(close_state, state)
        if config.telemetry.otlp_endpoint is not None:
            tracer = _open_tracer(config)
            state.tracer = tracer
            stack.push_async_callback(tracer.aclose)  # after the requests drained
        if cluster is None:  # in cluster mode: the elected instance's jobs (below)
            await _start_embedded_videos(state, stack)
        payments = await open_payments(state, stripe_transport=seams.stripe_transport)
        payments.start()
        stack.push_async_callback(payments.aclose)
        if cluster is None:
            state.auto_topup = payments.auto_topup
        _start_chores(state, stack)
        watcher = await _start_alerts(state, stack)
        if cluster is None:
            _start_embedded_retention(state, stack)
        billing_mail = _billing_mailer(state, payments, seams.wall_clock_ms)
        _start_cluster_jobs_or_billing_mail(state, stack, payments, watcher, billing_mail)
        health = HealthChecker(lambda: state.providers)
        health.start()
        stack.push_async_callback(health.aclose)
        source = Path(config.source) if config.source else None
        reloader = ConfigReloader(state, source, seams.client_factory)
        stack.push_async_callback(reloader.aclose)
        if cluster is not None:
            toggles = UpstreamToggles(cluster.pool, state.upstream_fingerprints)
            await cluster.start(lambda change: apply_invalidation(state, reloader, toggles, change))
        yield {
            "relay": state,
            "payments": payments,
            "reloader": reloader,
            "alert_watcher": watcher,
            "billing_mail": billing_mail,
        }
