"""Build the ASGI app: routes, error handlers and the lifespan that owns resources.

``create_app`` does no I/O; the lifespan opens the database and upstream clients
and closes them (draining queued writes) on shutdown. The app is plain ASGI, so any
server can run it; ``relay serve`` runs it under hypercorn or uvicorn (``relay.server``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from relay.admin import admin_routes
from relay.admin.cluster import ClusterRouteGuard, cluster_routes
from relay.admin.payments import payment_routes
from relay.admin.reload import ConfigReloader, build_router, calendar_of
from relay.admission.gate import Gate
from relay.admission.limits import RateLimiter
from relay.alerts.outbox import AlertOutbox
from relay.alerts.outbox_store import SqliteOutbox
from relay.alerts.pg_outbox import PgOutbox
from relay.alerts.readings import PgReadings
from relay.alerts.watch import AlertWatcher
from relay.api import data_plane_routes
from relay.cluster.pg_identity import ClusterAccountStore
from relay.cluster.pg_reader import PgReader
from relay.cluster.pg_upstream_toggles import UpstreamToggles
from relay.cluster.pg_videos import PgVideoStore
from relay.cluster.runtime import ClusterRuntime, ClusterUsageLog, refusal_sink
from relay.cluster_jobs import apply_invalidation, cluster_jobs
from relay.config import Config
from relay.console import console_routes
from relay.errors import ConfigError, InvalidRequest, NotFound, RelayError
from relay.http.admin_throttle import AdminTokenThrottle
from relay.http.framing import RefuseAmbiguousFraming
from relay.http.front import ExceptionHandler, Front, FrontedStarlette, hot_routes
from relay.http.responses import error_response, unexpected_error_response
from relay.identity.accounts import AccountStore
from relay.identity.admin_token import admin_token_from_env
from relay.identity.auth import Authenticator
from relay.identity.keys import SecretHasher, VerifiedKeyCache
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.jobs.periodic import PeriodicTask
from relay.jobs.video import VideoPoller
from relay.jobs.video_store import EmbeddedVideoStore
from relay.metrics.collector import StateCollector
from relay.metrics.instruments import RequestMetrics
from relay.metrics.route import metrics_routes
from relay.metrics.traces import RequestTracer
from relay.money.ledger import insert_entry, load_wallet
from relay.money.wallet import LedgerEntry, Wallet
from relay.payments.billing_mail import BILLING_MAIL_INTERVAL_S, BillingMailer
from relay.payments.mail_queue import MailQueue, SqliteMailQueue
from relay.payments.pg_mail_queue import PgMailQueue, claim_ms_of
from relay.payments.runtime import PaymentsRuntime, open_payments
from relay.state import RelayState
from relay.storage.db import Database
from relay.storage.health import StorageHealth
from relay.storage.reader import RowReader
from relay.upstream.fingerprint import KeyFingerprints
from relay.upstream.health import HealthChecker
from relay.upstream.providers import ClientFactory, build_provider, default_client_factory
from relay.usage.log import UsageLog
from relay.usage.refusals import RefusalCounter, database_sink
from relay.usage.retention import RetentionJob, RetentionPolicy, archive_dir_for

__all__ = ["create_app"]

log = logging.getLogger("relay.app")
HOUSEKEEPING_INTERVAL_S = 60.0


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


def _ledger_sink(db: Database) -> Callable[[LedgerEntry], None]:
    """Credits and adjustments are queued at once; a charge is written with its usage row."""

    def sink(entry: LedgerEntry) -> None:
        if entry.kind != "charge":
            db.enqueue(lambda conn: insert_entry(conn, entry))

    return sink


async def _open_state(
    config: Config,
    client_factory: ClientFactory,
    hasher: SecretHasher | None,
    stopping: Callable[[], bool],
    wall_clock_ms: Callable[[], int],
) -> RelayState:
    admin_token = admin_token_from_env(config.server.admin_token_env)
    if admin_token is None:
        log.warning("admin API disabled: %s is not set", config.server.admin_token_env)
    cluster: ClusterRuntime | None = None
    database_path = config.database_path
    if config.cluster_mode:
        # Shared records live in PostgreSQL; the local SQLite is this process's scratch
        # file (routes that would read it answer 501: relay.admin.cluster).
        cluster = await ClusterRuntime.open(config)
        database_path = Path(tempfile.mkdtemp(prefix="relay-cluster-")) / "scratch.db"
    try:
        db = await Database.open(
            database_path,
            flush_interval_s=config.server.flush_interval_ms / 1000,
            writer_nice=config.server.writer_nice,
        )
    except BaseException:
        if cluster is not None:
            await cluster.close()
        raise
    try:
        # In cluster mode the secret is the configured database's, never the scratch file's:
        # every instance must key the shared audit chain alike (docs/scaling.md §2).
        secret = ServerSecret.load_or_create(secret_path_for(config.database_path))
        calendar = calendar_of(config)
        wallet = Wallet(_ledger_sink(db), calendar=calendar, wall_clock_ms=wall_clock_ms)
        if cluster is not None:  # budget periods by the same calendar and clock
            cluster.store.use_periods(lambda: wallet.calendar, wall_clock_ms)
        await load_wallet(db, wallet)
        store: AccountStore
        if cluster is None:
            store = AccountStore(db, wallet, secret.subkey("audit"), hasher=hasher)
        else:
            store = ClusterAccountStore(
                cluster.pool, cluster.publish, db, wallet, secret.subkey("audit"), hasher=hasher
            )
        await store.load()
    except BaseException:
        await db.close()
        if cluster is not None:
            await cluster.close()
        raise
    metrics = RequestMetrics()
    db.commit_observer = metrics.observe_commit
    providers = {p.name: build_provider(p, client_factory) for p in config.providers}
    for provider in providers.values():
        if not provider.enabled:
            log.warning("%s; its models answer 503 until it is set", provider.why_disabled())
    storage = StorageHealth(db, stall_s=config.server.storage_stall_s)
    state = RelayState(
        config=config,
        db=db,
        providers=providers,
        router=build_router(config, providers),
        auth=Authenticator(
            admin_token,
            store,
            VerifiedKeyCache(secret.subkey("key-cache")),
            max_key_failures_per_minute=config.server.max_key_failures_per_minute,
        ),
        store=store,
        wallet=wallet,
        gate=Gate(wallet, RateLimiter(), check_storage=storage.check),
        usage=(
            UsageLog(db, metrics.observe)
            if cluster is None
            else ClusterUsageLog(cluster.settler, metrics.observe, db)
        ),
        storage=storage,
        refusals=RefusalCounter(
            database_sink(db) if cluster is None else refusal_sink(cluster.settler)
        ),
        upstream_fingerprints=KeyFingerprints(secret.subkey("upstream-key")),
        started_at=int(time.time()),
        metrics=metrics,
        videos=VideoPoller(
            (
                EmbeddedVideoStore(db, wallet)
                if cluster is None
                else PgVideoStore(cluster.pool, lambda: cluster.store)
            ),
            providers,
        ),
        stopping=stopping,
        admitter=cluster,  # None: the embedded gate admits
        cluster=cluster,
    )
    if cluster is None:  # its wallet totals are the local wallet's: not cluster-wide
        metrics.registry.register(StateCollector(state))
    return state


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


async def _close_state(state: RelayState) -> None:
    """Close everything, whatever fails: the database is always closed (and its threads
    stopped), and a storage failure is logged and re-raised so the process exits non-zero."""
    try:
        for provider in state.providers.values():
            await provider.aclose()
        state.refusals.flush()
        problem = state.storage.problem()
        if problem is None:
            await state.store.flush_last_used()
        else:  # keys' last-use times are not worth a stalled shutdown
            log.error("shutdown: keys' last use not saved: storage: %s", problem)
    except Exception as exc:  # named reason: the database must still be drained and closed
        log.error("shutdown: %s: %s", type(exc).__name__, exc)
        await _close_database(state)
        raise
    await _close_database(state)


async def _close_database(state: RelayState) -> None:
    try:
        await state.db.close()
    except Exception as exc:
        log.error("shutdown: the database did not close cleanly: %s: %s", type(exc).__name__, exc)
        raise
    finally:
        if state.cluster is not None:
            shutil.rmtree(state.db.path.parent, ignore_errors=True)


def _handle_relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return error_response(exc)


def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"No route for {request.method} {request.url.path}"))
    if exc.status_code == 405:
        error = InvalidRequest(f"Method {request.method} is not allowed here")
        error.status = 405
        return error_response(error)
    return error_response(InvalidRequest(str(exc.detail)))


def _handle_unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_error_response(exc)


def create_app(
    config: Config,
    *,
    client_factory: ClientFactory | None = None,
    hasher: SecretHasher | None = None,
    stopping: Callable[[], bool] = lambda: False,
    stripe_transport: httpx.AsyncBaseTransport | None = None,
    wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> Starlette:
    """The relay ASGI app; ``client_factory``, ``hasher`` and ``stripe_transport`` are
    seams for tests (upstreams, argon2 cost, a fake Stripe).

    ``stopping`` tells whether the server is shutting down (streams it cuts are then
    recorded as ``server_shutdown``, not as the client's leaving).

    ``wall_clock_ms`` is the wallet's clock (ledger times, budget periods): tests inject one
    to cross a period boundary.
    """
    factory = client_factory or default_client_factory

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        state = await _open_state(config, factory, hasher, stopping, wall_clock_ms)
        # Unwound in reverse: background jobs stop before the database drains and closes.
        async with contextlib.AsyncExitStack() as stack:
            cluster = state.cluster
            if cluster is not None:
                # Closed last, after the server drained and the state's own writes (keys'
                # last use): queued settlements commit, then the lease retires.
                stack.push_async_callback(cluster.close)
            stack.push_async_callback(_close_state, state)
            if config.telemetry.otlp_endpoint is not None:
                tracer = _open_tracer(config)
                state.tracer = tracer
                stack.push_async_callback(tracer.aclose)  # after the requests drained
            if cluster is None:  # in cluster mode: the elected instance's jobs (below)
                assert state.videos is not None
                await state.videos.start()  # re-places unfinished jobs' holds, resumes polling
                stack.push_async_callback(state.videos.stop)
                policy = RetentionPolicy.of(config.retention)
                retention = RetentionJob(state.db, archive_dir_for(config.database_path), policy)
                retention.start()
                stack.push_async_callback(retention.stop)
            payments = await open_payments(state, stripe_transport=stripe_transport)
            payments.start()
            stack.push_async_callback(payments.aclose)
            if cluster is None:
                state.auto_topup = payments.auto_topup
            housekeeping = PeriodicTask(
                "relay-housekeeping",
                lambda: _housekeeping(state),
                interval_s=HOUSEKEEPING_INTERVAL_S,
                log=log,
            )
            housekeeping.start()
            stack.push_async_callback(housekeeping.stop)
            refusals = PeriodicTask(
                "relay-refusals",
                lambda: _flush_refusals(state),
                interval_s=state.refusals.interval_s,
                log=log,
            )
            refusals.start()
            stack.push_async_callback(refusals.stop)
            # Cluster mode: one outbox in PostgreSQL for every instance (never the scratch file).
            outbox_store = SqliteOutbox(state.db) if cluster is None else PgOutbox(cluster.pool)
            alerts = AlertOutbox(outbox_store, lambda: state.config)
            await alerts.start()
            stack.push_async_callback(alerts.aclose)
            state.alerts = alerts
            watcher = (
                AlertWatcher(state, alerts)
                if cluster is None
                else AlertWatcher(
                    state,
                    alerts,
                    readings=PgReadings(cluster.pool, state.wallet.period_bounds),
                    shared=False,  # money: the elected instance's job (below)
                )
            )
            await watcher.start()
            stack.push_async_callback(watcher.aclose)
            billing_mail = _billing_mailer(state, payments, wall_clock_ms)
            if cluster is not None:
                # Videos, retention, auto top-up, money alerts and billing mail: one instance
                # at a time (one advisory lock); stopped before what its jobs use closes.
                runner = cluster.job_runner(cluster_jobs(state, payments, watcher, billing_mail))
                runner.start()
                stack.push_async_callback(runner.stop)
            else:
                mailer = PeriodicTask(
                    "relay-billing-mail",
                    billing_mail.step,
                    interval_s=BILLING_MAIL_INTERVAL_S,
                    first_after_s=1.0,
                    log=log,
                )
                mailer.start()
                stack.push_async_callback(mailer.stop)
            health = HealthChecker(lambda: state.providers)
            health.start()
            stack.push_async_callback(health.aclose)
            source = Path(config.source) if config.source else None
            reloader = ConfigReloader(state, source, factory)
            stack.push_async_callback(reloader.aclose)
            if cluster is not None:
                toggles = UpstreamToggles(cluster.pool, state.upstream_fingerprints)
                await cluster.start(
                    lambda change: apply_invalidation(state, reloader, toggles, change)
                )
            yield {
                "relay": state,
                "payments": payments,
                "reloader": reloader,
                "alert_watcher": watcher,
                "billing_mail": billing_mail,
            }

    data_plane = data_plane_routes()
    handlers: dict[type[Exception], ExceptionHandler] = {
        RelayError: _handle_relay_error,
        HTTPException: _handle_http_exception,
        Exception: _handle_unexpected,
    }

    def middleware(app: ASGIApp) -> ASGIApp:
        """The request middleware, outermost first, on every route (relay.http.front)."""
        if config.cluster_mode:
            app = ClusterRouteGuard(app)
        return RefuseAmbiguousFraming(AdminTokenThrottle(app))

    def front(stack: ASGIApp) -> ASGIApp:
        return Front(stack, hot_routes(data_plane), middleware, handlers)

    return FrontedStarlette(
        front=front,
        routes=(cluster_routes() if config.cluster_mode else [])
        + data_plane
        + metrics_routes()
        + admin_routes()
        + payment_routes()
        + console_routes(),
        lifespan=lifespan,
        exception_handlers=dict(handlers),
    )
