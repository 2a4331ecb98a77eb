"""The console's stores and keys, built once per app from the lifespan's state.

The keys are subkeys of the server secret (the file beside the configured database, in
cluster mode too: every instance reads the same file), one per purpose: session cookies,
CSRF tokens, invite links, and the audit chain (the same key the AccountStore chains with,
so console actions join the one audit trail). The stores are SQLite's, or in cluster mode
PostgreSQL's (``relay.console.records``). The one-time flashes and the sign-in throttle
live in this process, or in cluster mode in the cluster's Redis (every instance reads the
same flash and counts the same guesses).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.cluster.pg_account_records import PgAccountRecords
from relay.cluster.pg_charts import PgExactCharts
from relay.cluster.pg_money_views import PgMoneyViews
from relay.cluster.pg_reader import PgReader
from relay.cluster.pg_users import PgUserStore
from relay.console.auth.sessions import SessionStore
from relay.console.auth.throttle import LoginThrottle
from relay.console.flash import FlashRecords, FlashStore
from relay.console.invites import InviteStore
from relay.console.money_views import MoneyViews, WalletViews
from relay.console.password_resets import PasswordResets
from relay.console.pg_console import PgInviteStore, PgPasswordResets, PgSessionStore
from relay.console.pg_tickets import PgTicketStore
from relay.console.records import InviteRecords, ResetRecords, SessionRecords, TicketRecords
from relay.console.redis_flash import RedisFlashStore
from relay.console.spend_charts import RollupCharts, SpendCharts
from relay.console.tickets import TicketStore
from relay.identity.account_records import AccountRecords, SqliteAccountRecords
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.identity.user_records import UserRecords
from relay.identity.users import UserStore
from relay.state import RelayState
from relay.storage.reader import RowReader
from relay.usage.retention import archive_dir_for

__all__ = ["ConsoleKeys", "Services", "open_services", "user_records"]


@dataclass(frozen=True)
class ConsoleKeys:
    session: bytes
    csrf: bytes
    invite: bytes
    audit: bytes

    def __repr__(self) -> str:
        return "ConsoleKeys(…)"


@dataclass(frozen=True)
class Services:
    state: RelayState
    keys: ConsoleKeys
    users: UserRecords
    sessions: SessionRecords
    invites: InviteRecords
    tickets: TicketRecords
    resets: ResetRecords
    # Reads of usage, the ledger, payments and keys' last use (the console's portable SQL).
    reader: RowReader
    money: MoneyViews
    charts: SpendCharts
    flashes: FlashRecords
    throttle: LoginThrottle
    # An account's export, deletion request and usage archives (relay.identity.account_records).
    records: AccountRecords


def user_records(state: RelayState, audit_key: bytes) -> UserRecords:
    """The console users of this relay: SQLite's, or in cluster mode PostgreSQL's."""
    if state.cluster is None:
        return UserStore(state.db, audit_key, state.store.hasher)
    return PgUserStore(state.cluster.pool, audit_key, state.store.hasher)


def open_services(state: RelayState) -> Services:
    # The lifespan created the secret file before the first request could arrive.
    secret = ServerSecret.load_or_create(secret_path_for(state.config.database_path))
    keys = ConsoleKeys(
        session=secret.subkey("console-session"),
        csrf=secret.subkey("console-csrf"),
        invite=secret.subkey("console-invite"),
        audit=secret.subkey("audit"),
    )
    reset_key = secret.subkey("console-reset")
    users = user_records(state, keys.audit)
    if state.cluster is None:
        return Services(
            state=state,
            keys=keys,
            users=users,
            sessions=SessionStore(state.db),
            invites=InviteStore(state.db, keys.invite, keys.audit),
            tickets=TicketStore(state.db),
            resets=PasswordResets(state.db, reset_key, keys.audit),
            reader=state.db,
            money=WalletViews(state.wallet),
            charts=RollupCharts(state.db),
            flashes=FlashStore(),
            throttle=LoginThrottle.in_memory(),
            records=SqliteAccountRecords(
                state.db, state.store.audit_key, archive_dir_for(state.config.database_path)
            ),
        )
    # Cluster mode: rows every instance shares; the keys are the same on every instance
    # because they derive from the one secret file beside the configured database path.
    pool = state.cluster.pool
    return Services(
        state=state,
        keys=keys,
        users=users,
        sessions=PgSessionStore(pool),
        invites=PgInviteStore(pool, keys.invite, keys.audit),
        tickets=PgTicketStore(pool),
        resets=PgPasswordResets(pool, reset_key, keys.audit),
        reader=PgReader(pool),
        money=PgMoneyViews(state.cluster),
        charts=PgExactCharts(pool),
        flashes=RedisFlashStore(state.cluster.redis),
        throttle=LoginThrottle.in_redis(state.cluster.redis),
        records=PgAccountRecords(pool, state.store.audit_key),
    )
