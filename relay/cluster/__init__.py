"""Cluster mode: N relay instances sharing PostgreSQL (money) and Redis (limits).

``pg_schema`` (the one migration list, ``relay.storage.schema_list``, applied to
PostgreSQL), ``pg_money`` (holds, settlements, credits and lease expiry, each one atomic
round trip), ``redis_limits`` (token buckets and
concurrency leases as Lua scripts), ``invalidation`` (key revocation and config reload
across instances), ``pg_copy``
and ``pg_verify`` (``relay migrate``: an embedded database copied and verified),
``pg_budgets`` (period budgets: counters checked by the hold), ``job_runner`` (the one
instance that runs the cluster's periodic jobs: videos, retention, the usage rollup, auto
top-up, alerts), ``pg_rollup`` (usage rows summed into ``usage_daily``, exactly once),
``pg_charts`` (the console's charts: that rollup plus the rows it has not counted yet).
docs/scaling.md describes the seam by which the request flow will use them.
"""
