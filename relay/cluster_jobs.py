"""What the lifespan adds in cluster mode: the cluster's elected jobs and what an instance
does when another announces a change (docs/scaling.md §2, §7.1)."""

from __future__ import annotations

import logging

from relay.admin.reload import ConfigReloader, ReloadRefused
from relay.alerts.watch import AlertWatcher
from relay.cluster.invalidation import Invalidation
from relay.cluster.job_runner import ClusterJob
from relay.cluster.pg_erasure import PgErasure
from relay.cluster.pg_identity import ClusterAccountStore
from relay.cluster.pg_retention import PgRetentionJob
from relay.cluster.pg_rollup import PgRollupJob
from relay.cluster.pg_upstream_toggles import UpstreamToggles
from relay.jobs.video import POLL_INTERVAL_S
from relay.payments.billing_mail import BILLING_MAIL_INTERVAL_S, BillingMailer
from relay.payments.runtime import PaymentsRuntime
from relay.state import RelayState
from relay.usage.retention import RetentionPolicy

__all__ = ["ROLLUP_INTERVAL_S", "apply_invalidation", "cluster_jobs"]

log = logging.getLogger("relay.app")
# How often the elected instance sums new usage rows into usage_daily.
ROLLUP_INTERVAL_S = 10.0


def cluster_jobs(
    state: RelayState, payments: PaymentsRuntime, watcher: AlertWatcher, mailer: BillingMailer
) -> list[ClusterJob]:
    """The periodic jobs of the whole cluster, run by the elected instance only (one
    election for all, scaling.md §7.1); retention daily, first 5 minutes after an instance
    takes the lead (as the embedded job); due deletion requests erased daily; auto top-up and
    the money alerts from PostgreSQL every ``[alerts_settings] check_interval_s``, read afresh
    each time (a reload may change it); the daily usage rollup every ``ROLLUP_INTERVAL_S``
    (the console's charts add the rows it has not counted yet: relay.cluster.pg_charts);
    billing mail as often as embedded, from PostgreSQL's queue."""
    assert state.videos is not None and state.cluster is not None
    cluster = state.cluster
    assert state.alerts is not None
    retention = PgRetentionJob(
        cluster.pool,
        RetentionPolicy.of(state.config.retention),
        prune_outbox=state.alerts.prune,
    )
    rollup = PgRollupJob(cluster.pool)
    clock = payments.service.clock  # the payments' wall clock (injected by tests)
    erasure = PgErasure(cluster.pool, state.store.audit_key, cluster.publish, clock)

    def check_interval_s() -> float:
        return state.config.alerts_settings.check_interval_s

    return [
        ClusterJob("videos", state.videos.poll_once, interval_s=POLL_INTERVAL_S),
        ClusterJob("retention", retention.run_once, interval_s=86_400.0, first_after_s=300.0),
        ClusterJob("usage_rollup", rollup.step, interval_s=ROLLUP_INTERVAL_S),
        ClusterJob("auto_topup", payments.auto_topup.sweep, interval_s=check_interval_s),
        ClusterJob("money_alerts", watcher.check_shared, interval_s=check_interval_s),
        # Due deletion requests: daily, and at once when an instance takes the lead (as
        # the embedded job runs at start-up).
        ClusterJob("erasure", erasure.run_once, interval_s=86_400.0),
        ClusterJob("billing_mail", mailer.step, interval_s=BILLING_MAIL_INTERVAL_S),
    ]


async def apply_invalidation(
    state: RelayState, reloader: ConfigReloader, toggles: UpstreamToggles, change: Invalidation
) -> None:
    """Another instance (or this one) committed a change: drop what it names."""
    log.debug("cluster: invalidation %s %s from %s", change.kind, change.target, change.origin)
    store = state.store
    assert isinstance(store, ClusterAccountStore)
    if change.kind == "key":
        await store.reload_key(change.target)
        state.auth.forget_key(change.target)
        state.gate.limiter.forget(change.target)
    elif change.kind == "account":
        await store.reload_account(change.target)
    elif change.kind == "config":
        if state.cluster is not None and change.origin != state.cluster.origin:
            try:
                await reloader.reload()
            except ReloadRefused as exc:
                log.error("cluster: announced reload refused here: %s", exc)
    elif change.kind == "upstream":
        await toggles.catch_up(state.providers)
    else:
        await store.reload_all()
        await toggles.catch_up(state.providers)
