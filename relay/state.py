"""The app's long-lived state, built in the lifespan and reached through request state."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from relay.admission.admitter import Admitter
from relay.admission.gate import Gate
from relay.alerts.outbox import AlertOutbox
from relay.cluster.runtime import ClusterRuntime
from relay.config import Config
from relay.identity.accounts import AccountStore
from relay.identity.auth import Authenticator
from relay.jobs.video import VideoPoller
from relay.metrics.instruments import RequestMetrics
from relay.metrics.traces import RequestTracer
from relay.money.wallet import Wallet
from relay.payments.auto_topup import AutoTopUp
from relay.storage.db import Database
from relay.storage.health import StorageHealth
from relay.upstream.fingerprint import KeyFingerprints
from relay.upstream.providers import Provider
from relay.upstream.routing import Router
from relay.usage.log import UsageLog
from relay.usage.refusals import RefusalCounter

__all__ = ["RelayState", "relay_state"]


@dataclass
class RelayState:
    config: Config
    db: Database
    providers: dict[str, Provider]
    router: Router
    auth: Authenticator
    store: AccountStore
    wallet: Wallet
    gate: Gate
    usage: UsageLog
    storage: StorageHealth
    refusals: RefusalCounter
    # Names upstream keys in audit rows without their value (operator toggles).
    upstream_fingerprints: KeyFingerprints
    started_at: int = 0
    # This app's Prometheus instruments (a registry of its own: tests run many apps).
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    # Optional OpenTelemetry traces ([telemetry] otlp_endpoint); None: no tracing at all.
    tracer: RequestTracer | None = None
    videos: VideoPoller | None = None
    auto_topup: AutoTopUp | None = None
    # Operator alerts; ``alerts.notify_storage(available, reason)`` is for the storage layer.
    alerts: AlertOutbox | None = None
    # True once SIGTERM/SIGINT arrived (set by the server), to tell a cut stream's cause.
    stopping: Callable[[], bool] = lambda: False
    # Cluster mode's admission (relay.cluster.admission); None: the embedded gate admits.
    admitter: Admitter | None = None
    # Cluster mode's pools, lease and heartbeat; None: the embedded store.
    cluster: ClusterRuntime | None = None
    # Request ids: a per-boot random prefix and a counter, unique across restarts.
    _boot: str = field(default_factory=lambda: secrets.token_hex(6))
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def new_request_id(self) -> str:
        return f"req_{self._boot}{next(self._counter):08x}"


def relay_state(request: Request) -> RelayState:
    # Straight from the scope: ``request.state`` builds a State object per request.
    state: RelayState = request.scope["state"]["relay"]
    return state
