"""THE migration list: every schema change of relay, in order, for both engines.

SQLite (the embedded relay, ``relay.storage.migrations``) and PostgreSQL (cluster mode,
``relay.cluster.pg_schema``) apply the same entries in the same order and record the same
numbers in their ``schema_migrations`` tables. The scripts live beside the concept they
belong to (``schema_core``, ``schema_console``, ...); this module only orders them.

To add a migration (docs/architecture.md §4.5): write both scripts next to their concept,
append ONE entry below with the next number, and run ``tests/test_schema_list.py`` and
``tests/test_cluster_schema.py``. A change for one engine only leaves the other script
empty and says why; whatever then exists on one engine only is named in ``sqlite_only``
or ``postgresql_only``. Never edit or renumber a released entry: a database that has
recorded a number never runs that entry again.
"""

from __future__ import annotations

from relay.storage.schema_cluster_jobs import POSTGRESQL_CLUSTER_JOBS
from relay.storage.schema_console import (
    POSTGRESQL_CONSOLE,
    POSTGRESQL_PASSWORD_RESETS,
    SQLITE_CONSOLE,
    SQLITE_PASSWORD_RESETS,
)
from relay.storage.schema_core import POSTGRESQL_CORE, SQLITE_CORE
from relay.storage.schema_entry import EngineOnly, Migration
from relay.storage.schema_holds import POSTGRESQL_HOLDS
from relay.storage.schema_ledger_check import SQLITE_LEDGER_KIND_CHECK
from relay.storage.schema_lookups import LOOKUP_INDEXES, POSTGRESQL_UPSTREAM_TOGGLES
from relay.storage.schema_payments import (
    POSTGRESQL_BUDGETS,
    POSTGRESQL_PAYMENTS,
    SQLITE_BUDGETS,
    SQLITE_PAYMENTS,
)
from relay.storage.schema_period_budgets import POSTGRESQL_PERIOD_BUDGETS
from relay.storage.schema_recent_spend import POSTGRESQL_RECENT_SPEND
from relay.storage.schema_records import (
    POSTGRESQL_ALERTS,
    POSTGRESQL_ARCHIVES,
    POSTGRESQL_BILLING_MAIL,
    POSTGRESQL_LEANER_USAGE_INDEXES,
    POSTGRESQL_VIDEO_JOBS,
    SQLITE_ALERTS,
    SQLITE_ARCHIVES,
    SQLITE_BILLING_MAIL,
    SQLITE_LEANER_USAGE_INDEXES,
    SQLITE_VIDEO_JOBS,
)
from relay.storage.schema_rollup import POSTGRESQL_ROLLUP
from relay.storage.schema_settle_note import POSTGRESQL_SETTLE_NOTE

__all__ = ["MIGRATIONS"]

_CORE = Migration(
    1,
    "core schema",
    SQLITE_CORE,
    POSTGRESQL_CORE,
    sqlite_only=EngineOnly(indexes=("usage_ts",)),
    postgresql_only=EngineOnly(
        columns=(
            "accounts.balance_micros",
            "accounts.worst_micros",
            "accounts.held_micros",
            "api_keys.spent_micros",
            "api_keys.worst_micros",
            "api_keys.held_micros",
            "ledger.created_at",
        ),
        indexes=("usage_ts_brin",),
    ),
    why_engines_differ=(
        "PostgreSQL enforces the money rules itself: balances and key spend are the "
        "ledger's sums kept by its triggers, worst/held are the open holds (embedded: in "
        "the wallet's memory), and the ledger keeps a timestamptz beside created_at_ms. "
        "usage's time index is BRIN there (rows arrive in time order; cheaper to write)."
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    _CORE,
    Migration(2, "usage and audit archives", SQLITE_ARCHIVES, POSTGRESQL_ARCHIVES),
    Migration(3, "video jobs", SQLITE_VIDEO_JOBS, POSTGRESQL_VIDEO_JOBS),
    Migration(
        4,
        "console users, sessions, tickets; usage rollup",
        SQLITE_CONSOLE,
        POSTGRESQL_CONSOLE,
    ),
    Migration(
        5,
        "payments, receipts, auto top-up, notices, deletion requests",
        SQLITE_PAYMENTS,
        POSTGRESQL_PAYMENTS,
    ),
    Migration(6, "budget periods on keys, budgets on accounts", SQLITE_BUDGETS, POSTGRESQL_BUDGETS),
    Migration(7, "alert outbox", SQLITE_ALERTS, POSTGRESQL_ALERTS),
    Migration(
        8, "console password reset links", SQLITE_PASSWORD_RESETS, POSTGRESQL_PASSWORD_RESETS
    ),
    Migration(
        9,
        "billing mail: receipts and monthly statements",
        SQLITE_BILLING_MAIL,
        POSTGRESQL_BILLING_MAIL,
    ),
    Migration(
        10,
        "drop usage indexes no reader needs",
        SQLITE_LEANER_USAGE_INDEXES,
        POSTGRESQL_LEANER_USAGE_INDEXES,
    ),
    Migration(
        11,
        "cluster: instances, holds, and the hold, settle and reap functions",
        "",
        POSTGRESQL_HOLDS,
        postgresql_only=EngineOnly(tables=("instances", "holds", "abandoned_holds")),
        why_engines_differ=(
            "Embedded holds live in the wallet's memory; in cluster mode they are rows "
            "every instance sees, released when their instance's lease runs out."
        ),
    ),
    Migration(
        12,
        "cluster: holds owned by video jobs, archive files in the database",
        "",
        POSTGRESQL_CLUSTER_JOBS,
        postgresql_only=EngineOnly(tables=("archive_chunks",)),
        why_engines_differ=(
            "Embedded archives are files beside the database; cluster mode keeps their bytes "
            "in PostgreSQL so that every instance serves them. Job holds exist only where "
            "holds are rows."
        ),
    ),
    Migration(
        13,
        "cluster: period budget counters checked by holds",
        "",
        POSTGRESQL_PERIOD_BUDGETS,
        postgresql_only=EngineOnly(tables=("budget_spend",), indexes=("ledger_charges_key_time",)),
        why_engines_differ=(
            "Embedded, the wallet counts a period's spend in memory; across instances the "
            "count is a row that relay_hold checks and relay_settle increments."
        ),
    ),
    Migration(
        14,
        "indexes for a stored response's owner and an alert's re-arm check",
        LOOKUP_INDEXES,
        LOOKUP_INDEXES,
    ),
    Migration(
        15,
        "cluster: the daily rollup's mark and the usage horizon",
        "",
        POSTGRESQL_ROLLUP,
        postgresql_only=EngineOnly(tables=("usage_rollup",)),
        why_engines_differ=(
            "Embedded, the writer adds each usage row to usage_daily in the row's own "
            "transaction; across instances a job rolls committed rows up behind a mark."
        ),
    ),
    Migration(
        16,
        "cluster: the upstream key toggles' rows of the audit chain",
        "",
        POSTGRESQL_UPSTREAM_TOGGLES,
        postgresql_only=EngineOnly(indexes=("audit_upstream_toggles",)),
        why_engines_differ=(
            "Embedded, one process holds the upstream pool; across instances each replays "
            "the operator's toggles from the shared audit chain."
        ),
    ),
    Migration(
        17,
        "cluster: recent spend per account and key for the hold's threshold",
        "",
        POSTGRESQL_RECENT_SPEND,
        postgresql_only=EngineOnly(
            columns=(
                "accounts.recent_window",
                "accounts.recent_current_micros",
                "accounts.recent_previous_micros",
                "api_keys.recent_window",
                "api_keys.recent_current_micros",
                "api_keys.recent_previous_micros",
            )
        ),
        why_engines_differ=(
            "Embedded, the wallet counts recent spend in memory (relay.money.exposure); "
            "across instances it is two window buckets on the account's and the key's rows, "
            "rolled by relay_settle and read by relay_hold."
        ),
    ),
    Migration(
        18,
        "ledger: the kind check as comparisons, cheaper per charge",
        SQLITE_LEDGER_KIND_CHECK,
        "",
        why_engines_differ=(
            "SQLite builds a temporary B-tree for an IN list in a CHECK on every insert; "
            "PostgreSQL compares an array, at no such cost, and keeps its own check."
        ),
    ),
    Migration(
        19,
        "cluster: a charge's overrun note in the embedded wallet's words",
        "",
        POSTGRESQL_SETTLE_NOTE,
        why_engines_differ=(
            "Embedded, the wallet writes the note in Python (charge_note); across "
            "instances relay_settle writes it, and entry 17's words differed."
        ),
    ),
)
