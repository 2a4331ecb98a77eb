"""Migrations 4 and 8: the web console's records (users, memberships, sessions, invites,
tickets, password reset links), its request-log indexes and the daily usage rollup.

SQLite's scripts are the embedded relay's, byte for byte as released; PostgreSQL's create
the same tables, columns and indexes (``WITHOUT ROWID`` is SQLite's storage choice only).
"""

from __future__ import annotations

__all__ = [
    "POSTGRESQL_CONSOLE",
    "POSTGRESQL_PASSWORD_RESETS",
    "SQLITE_CONSOLE",
    "SQLITE_PASSWORD_RESETS",
]

SQLITE_CONSOLE = """
-- The web console (relay.console): users, memberships, sessions, invites, tickets.
CREATE TABLE console_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    operator INTEGER NOT NULL DEFAULT 0 CHECK (operator IN (0, 1)),
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    -- Bumped by a password change: sessions made under an older version are dead.
    session_version INTEGER NOT NULL DEFAULT 1,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE console_memberships (
    account_id TEXT NOT NULL REFERENCES accounts (id),
    user_id TEXT NOT NULL REFERENCES console_users (id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, user_id)
) WITHOUT ROWID;
CREATE INDEX console_memberships_user ON console_memberships (user_id);

-- id_hash is the SHA-256 of the random session id the signed cookie carries.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES console_users (id),
    session_version INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX console_sessions_user ON console_sessions (user_id);

CREATE TABLE console_invites (
    id_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_by TEXT NOT NULL REFERENCES console_users (id),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER,
    used_by TEXT REFERENCES console_users (id)
) WITHOUT ROWID;
CREATE INDEX console_invites_account ON console_invites (account_id, created_at_ms);

-- Who made a key in the console: members may manage only their own keys.
CREATE TABLE console_key_creators (
    key_id TEXT PRIMARY KEY REFERENCES api_keys (id),
    user_id TEXT NOT NULL REFERENCES console_users (id)
) WITHOUT ROWID;
CREATE INDEX console_key_creators_user ON console_key_creators (user_id);

CREATE TABLE console_tickets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    opened_by TEXT NOT NULL REFERENCES console_users (id),
    subject TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered', 'closed')),
    request_id TEXT,
    payment_reference TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX console_tickets_account ON console_tickets (account_id, id);
CREATE INDEX console_tickets_status ON console_tickets (status, id);

CREATE TABLE console_ticket_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id INTEGER NOT NULL REFERENCES console_tickets (id),
    author_id TEXT NOT NULL REFERENCES console_users (id),
    from_operator INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX console_ticket_messages_ticket ON console_ticket_messages (ticket_id, id);

-- Request logs page newest first by id (keyset), per account, key, model, or errors only.
CREATE INDEX usage_account_id ON usage (account_id, id);
CREATE INDEX usage_key_id ON usage (key_id, id);
CREATE INDEX usage_account_model_id ON usage (account_id, model, id);
CREATE INDEX usage_account_errors ON usage (account_id, id) WHERE status >= 400;
CREATE INDEX usage_key_errors ON usage (key_id, id) WHERE status >= 400;
CREATE INDEX usage_account_model_errors ON usage (account_id, model, id) WHERE status >= 400;

-- Spend per account, UTC day (unix ms / 86400000) and model, so the overview's 30-day
-- charts read a few hundred rows, not every usage row. No trigger keeps it: the writer
-- runs relay.usage.rollup.add_to_daily_rollup next to each usage insert, in the same
-- transaction (that module says why). Deleting usage rows (archiving) leaves the totals
-- alone. (A comment only: editing it changes no schema.)
CREATE TABLE usage_daily (
    account_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (account_id, day, model)
) WITHOUT ROWID;
INSERT INTO usage_daily
SELECT COALESCE(account_id, ''), ts_ms / 86400000, COALESCE(model, ''), COUNT(*),
       SUM(status >= 400), SUM(cost_micros), SUM(prompt_tokens), SUM(completion_tokens)
FROM usage GROUP BY 1, 2, 3;
"""

POSTGRESQL_CONSOLE = """
-- The web console (relay.console): users, memberships, sessions, invites, tickets.
CREATE TABLE console_users (
    id text PRIMARY KEY,
    email text NOT NULL UNIQUE,
    display_name text NOT NULL,
    password_hash text NOT NULL,
    operator bigint NOT NULL DEFAULT 0 CHECK (operator IN (0, 1)),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    session_version bigint NOT NULL DEFAULT 1,
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL
);

CREATE TABLE console_memberships (
    account_id text NOT NULL REFERENCES accounts (id),
    user_id text NOT NULL REFERENCES console_users (id),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at_ms bigint NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
CREATE INDEX console_memberships_user ON console_memberships (user_id);

CREATE TABLE console_sessions (
    id_hash text PRIMARY KEY,
    user_id text NOT NULL REFERENCES console_users (id),
    session_version bigint NOT NULL,
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);

CREATE TABLE console_invites (
    id_hash text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_by text NOT NULL REFERENCES console_users (id),
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    used_at_ms bigint,
    used_by text REFERENCES console_users (id)
);
CREATE INDEX console_invites_account ON console_invites (account_id, created_at_ms);

CREATE TABLE console_key_creators (
    key_id text PRIMARY KEY REFERENCES api_keys (id),
    user_id text NOT NULL REFERENCES console_users (id)
);
CREATE INDEX console_key_creators_user ON console_key_creators (user_id);

CREATE TABLE console_tickets (
    id bigserial PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    opened_by text NOT NULL REFERENCES console_users (id),
    subject text NOT NULL,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered', 'closed')),
    request_id text,
    payment_reference text,
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL
);
CREATE INDEX console_tickets_account ON console_tickets (account_id, id);
CREATE INDEX console_tickets_status ON console_tickets (status, id);

CREATE TABLE console_ticket_messages (
    id bigserial PRIMARY KEY,
    ticket_id bigint NOT NULL REFERENCES console_tickets (id),
    author_id text NOT NULL REFERENCES console_users (id),
    from_operator bigint NOT NULL DEFAULT 0,
    body text NOT NULL,
    created_at_ms bigint NOT NULL
);
CREATE INDEX console_ticket_messages_ticket ON console_ticket_messages (ticket_id, id);

-- Request logs page newest first by id (keyset), per account, key, model, or errors only.
CREATE INDEX usage_account_id ON usage (account_id, id);
CREATE INDEX usage_key_id ON usage (key_id, id);
CREATE INDEX usage_account_model_id ON usage (account_id, model, id);
CREATE INDEX usage_account_errors ON usage (account_id, id) WHERE status >= 400;
CREATE INDEX usage_key_errors ON usage (key_id, id) WHERE status >= 400;
CREATE INDEX usage_account_model_errors ON usage (account_id, model, id) WHERE status >= 400;

-- Spend per account, UTC day and model (SQLite's migration 4 says how it is kept).
CREATE TABLE usage_daily (
    account_id text NOT NULL,
    day bigint NOT NULL,
    model text NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    cost_micros bigint NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    PRIMARY KEY (account_id, day, model)
);
INSERT INTO usage_daily
SELECT COALESCE(account_id, ''), ts_ms / 86400000, COALESCE(model, ''), COUNT(*),
       COUNT(*) FILTER (WHERE status >= 400), SUM(cost_micros), SUM(prompt_tokens),
       SUM(completion_tokens)
FROM usage GROUP BY 1, 2, 3;
"""

# Password reset links emailed to console users (relay.console.password_resets).
SQLITE_PASSWORD_RESETS = """
CREATE TABLE console_password_resets (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES console_users (id),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER
) WITHOUT ROWID;
"""

POSTGRESQL_PASSWORD_RESETS = """
CREATE TABLE console_password_resets (
    id_hash text PRIMARY KEY,
    user_id text NOT NULL REFERENCES console_users (id),
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    used_at_ms bigint
);
"""
