"""Opening the app's long-lived state, embedded or cluster, and closing it again.

Embedded mode keeps every record in the configured SQLite file. Cluster mode keeps the
shared records in PostgreSQL (and Redis) through a ``ClusterRuntime``; the local SQLite
is then this process's scratch file, removed on close (docs/scaling.md §2). Whatever fails
while opening closes what was already open; whatever fails while closing still closes the
database.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from relay.admin.reload import build_router, calendar_of
from relay.admission.gate import Gate
from relay.admission.limits import RateLimiter
from relay.cluster.pg_identity import ClusterAccountStore
from relay.cluster.pg_videos import PgVideoStore
from relay.cluster.runtime import ClusterRuntime, ClusterUsageLog, refusal_sink
from relay.config import Config
from relay.identity.accounts import AccountStore
from relay.identity.admin_token import admin_token_from_env
from relay.identity.auth import Authenticator
from relay.identity.keys import SecretHasher, VerifiedKeyCache
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.jobs.video import VideoPoller
from relay.jobs.video_store import EmbeddedVideoStore
from relay.metrics.collector import StateCollector
from relay.metrics.instruments import RequestMetrics
from relay.money.ledger import insert_entry, load_wallet
from relay.money.wallet import LedgerEntry, Wallet
from relay.state import RelayState
from relay.storage.db import Database
from relay.storage.health import StorageHealth
from relay.upstream.fingerprint import KeyFingerprints
from relay.upstream.providers import ClientFactory, build_provider
from relay.usage.log import UsageLog
from relay.usage.refusals import RefusalCounter, database_sink

__all__ = ["close_state", "open_state"]

# The lifespan's log lines keep the logger name they have always had.
log = logging.getLogger("relay.app")


def _ledger_sink(db: Database) -> Callable[[LedgerEntry], None]:
    """Credits and adjustments are queued at once; a charge is written with its usage row."""

    def sink(entry: LedgerEntry) -> None:
        if entry.kind != "charge":
            db.enqueue(lambda conn: insert_entry(conn, entry))

    return sink


async def _open_storage(config: Config) -> tuple[ClusterRuntime | None, Database]:
    """The cluster's runtime (cluster mode only) and the SQLite database."""
    if not config.cluster_mode:
        return None, await _open_database(config, config.database_path)
    # Shared records live in PostgreSQL; the local SQLite is this process's scratch file
    # (routes that would read it answer 501: relay.admin.cluster), in a folder of its own
    # that every failure from here on removes (an unreachable Redis, a bad secret file...).
    cluster = await ClusterRuntime.open(config)
    scratch: Path | None = None
    try:
        scratch = Path(tempfile.mkdtemp(prefix="relay-cluster-"))
        return cluster, await _open_database(config, scratch / "scratch.db")
    except BaseException:
        try:
            await cluster.close()
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        raise


async def _open_database(config: Config, path: Path) -> Database:
    return await Database.open(
        path,
        flush_interval_s=config.server.flush_interval_ms / 1000,
        writer_nice=config.server.writer_nice,
        background_nice=config.server.writer_background_nice,
    )


async def _close_storage(cluster: ClusterRuntime | None, db: Database) -> None:
    """Undo ``_open_storage`` after a later start-up step failed: each part is closed even
    if the one before it fails, and the scratch folder goes last."""
    try:
        await db.close()
    finally:
        if cluster is not None:
            try:
                await cluster.close()
            finally:
                shutil.rmtree(db.path.parent, ignore_errors=True)


async def _load_accounts(
    config: Config,
    db: Database,
    cluster: ClusterRuntime | None,
    hasher: SecretHasher | None,
    wall_clock_ms: Callable[[], int],
) -> tuple[ServerSecret, Wallet, AccountStore]:
    """The server secret, the wallet rebuilt from the ledger, and the accounts and keys."""
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
    return secret, wallet, store


async def open_state(
    config: Config,
    client_factory: ClientFactory,
    hasher: SecretHasher | None,
    stopping: Callable[[], bool],
    wall_clock_ms: Callable[[], int],
) -> RelayState:
    admin_token = admin_token_from_env(config.server.admin_token_env)
    if admin_token is None:
        log.warning("admin API disabled: %s is not set", config.server.admin_token_env)
    cluster, db = await _open_storage(config)
    try:
        return await _build_state(
            config, cluster, db, admin_token, client_factory, hasher, stopping, wall_clock_ms
        )
    except BaseException:
        await _close_storage(cluster, db)
        raise


async def _build_state(
    config: Config,
    cluster: ClusterRuntime | None,
    db: Database,
    admin_token: str | None,
    client_factory: ClientFactory,
    hasher: SecretHasher | None,
    stopping: Callable[[], bool],
    wall_clock_ms: Callable[[], int],
) -> RelayState:
    """The state over opened storage: accounts and the wallet loaded, providers built."""
    secret, wallet, store = await _load_accounts(config, db, cluster, hasher, wall_clock_ms)
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


async def close_state(state: RelayState) -> None:
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
