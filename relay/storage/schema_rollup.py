"""The daily rollup's mark and the usage horizon on PostgreSQL (``relay.cluster.pg_rollup``).

Embedded, the writer adds each usage row to ``usage_daily`` in the row's own transaction;
across instances a job rolls committed rows up behind a mark, never past the horizon.
"""

from __future__ import annotations

__all__ = ["LOCK_TIMEOUT_MS", "POSTGRESQL_ROLLUP"]

# Set on relay_usage_horizon by this entry: changing it takes a new migration.
LOCK_TIMEOUT_MS = 100

# A database that `relay migrate` filled before this migration already has its copied
# rows' totals (copied from SQLite's usage_daily): start after them. An empty rollup
# (a cluster that began on PostgreSQL) counts every row.
POSTGRESQL_ROLLUP = f"""
CREATE TABLE usage_rollup (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rolled_through_id bigint NOT NULL CHECK (rolled_through_id >= 0)
);
INSERT INTO usage_rollup (rolled_through_id)
SELECT CASE WHEN EXISTS (SELECT 1 FROM usage_daily) THEN COALESCE(max(id), 0) ELSE 0 END
  FROM usage;

-- The horizon in one round trip: called on its own (autocommit), the statement's
-- transaction holds the lock only while the server reads max(id), never across a client
-- round trip. VOLATILE: the SELECT takes its snapshot after the lock was granted.
CREATE FUNCTION relay_usage_horizon() RETURNS bigint LANGUAGE plpgsql VOLATILE
SET lock_timeout = '{LOCK_TIMEOUT_MS}ms' AS $$
BEGIN
    LOCK TABLE usage IN SHARE MODE;
    RETURN (SELECT COALESCE(max(id), 0) FROM usage);
END $$;
"""
