"""The console's stores and keys, built once per app from the lifespan's state.

The keys are subkeys of the server secret (the file beside the database), one per
purpose: session cookies, CSRF tokens, invite links, and the audit chain (the same key
the AccountStore chains with, so console actions join the one audit trail).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.console.auth.sessions import SessionStore
from relay.console.invites import InviteStore
from relay.console.tickets import TicketStore
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.identity.users import UserStore
from relay.state import RelayState

__all__ = ["ConsoleKeys", "Services", "open_services"]


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
    users: UserStore
    sessions: SessionStore
    invites: InviteStore
    tickets: TicketStore


def open_services(state: RelayState) -> Services:
    # The lifespan created the secret file before the first request could arrive.
    secret = ServerSecret.load_or_create(secret_path_for(state.config.database_path))
    keys = ConsoleKeys(
        session=secret.subkey("console-session"),
        csrf=secret.subkey("console-csrf"),
        invite=secret.subkey("console-invite"),
        audit=secret.subkey("audit"),
    )
    return Services(
        state=state,
        keys=keys,
        users=UserStore(state.db, keys.audit, state.store.hasher),
        sessions=SessionStore(state.db),
        invites=InviteStore(state.db, keys.invite, keys.audit),
        tickets=TicketStore(state.db),
    )
