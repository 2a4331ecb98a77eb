"""Migration 18 (SQLite only): the ledger's ``kind`` CHECK written as comparisons.

SQLite 3.40 compiles ``kind IN ('credit', 'charge', 'adjustment', 'refund')`` in a CHECK
into an ephemeral B-tree that every INSERT creates, fills with the four words, probes and
frees: for the charge the writer inserts with each usage row, that was about 38,000 of the
roughly 206,000 instructions of the whole write (charge, usage row, daily count; measured
with callgrind, batches of 20). ``kind = 'credit' OR ...`` accepts and refuses exactly
the same values (NULL is refused by NOT NULL either way) and compiles to four compares.

SQLite cannot change a CHECK in place, so the table is rebuilt by the procedure of
SQLite's "ALTER TABLE" page: a new table, every row copied with its id, the old one
dropped, the new one renamed, and the indexes and triggers the ledger had (migrations 1
and 6) created again with the same names and definitions. ``AUTOINCREMENT``'s counter
moves with the rows, so no id is ever handed out twice. The copy takes time in proportion
to the ledger (once, at the first start of this version, in one transaction: a crash
leaves the old table as it was). Foreign keys stay enforced during the copy: every row
was checked when it was written, and a row that somehow was not stops the migration with
nothing changed, rather than entering the new table unchecked.

PostgreSQL's ``IN`` over constants is an array compare, with no such cost: nothing to do
there.
"""

from __future__ import annotations

__all__ = ["SQLITE_LEDGER_KIND_CHECK"]

SQLITE_LEDGER_KIND_CHECK = """
CREATE TABLE ledger_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    kind TEXT NOT NULL CHECK (
        kind = 'credit' OR kind = 'charge' OR kind = 'adjustment' OR kind = 'refund'
    ),
    amount_micros INTEGER NOT NULL,
    reference TEXT NOT NULL,
    key_id TEXT,
    request_id TEXT,
    note TEXT,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO ledger_new (
    id, account_id, kind, amount_micros, reference, key_id, request_id, note, created_at_ms
)
SELECT id, account_id, kind, amount_micros, reference, key_id, request_id, note, created_at_ms
FROM ledger ORDER BY id;
-- The counter, not the largest id copied: the two are equal while rows are never deleted,
-- and this stays right even if they were not.
DELETE FROM sqlite_sequence WHERE name = 'ledger_new';
UPDATE sqlite_sequence SET name = 'ledger_new' WHERE name = 'ledger';
-- Dropping a table drops its triggers first: the append-only guard does not fire here.
DROP TABLE ledger;
ALTER TABLE ledger_new RENAME TO ledger;
CREATE INDEX ledger_account_id ON ledger (account_id, id);
CREATE INDEX ledger_key_id ON ledger (key_id);
CREATE UNIQUE INDEX ledger_credit_reference ON ledger (account_id, reference)
    WHERE kind IN ('credit', 'refund');
CREATE UNIQUE INDEX ledger_charge_reference ON ledger (reference) WHERE kind = 'charge';
CREATE INDEX ledger_charges_account_time ON ledger (account_id, created_at_ms)
    WHERE kind = 'charge';
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;
"""
