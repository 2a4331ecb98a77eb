"""Detecting alert conditions from relay's state, off the request path.

A background loop looks every ``[alerts_settings] check_interval_s`` at what the hot path
already keeps in memory (available balances, budget spend, upstream key health) and at the
notices table (failed auto top-ups), and raises alerts through the outbox, which
deduplicates them. A request never waits for any of it. In cluster mode the money is read
from PostgreSQL (``relay.alerts.readings``) by the one elected instance.

Budget alerts carry the period's end in their subject, so a new period re-arms them; a
key rejected by its upstream is named by provider and position, never by value.
"""

from __future__ import annotations

import logging
import time

from relay.alerts.outbox import AlertOutbox
from relay.alerts.readings import MoneyReadings, WalletReadings
from relay.jobs.periodic import PeriodicTask
from relay.money.budget import PERIOD_ADJECTIVES
from relay.money.pricing import micros_to_usd, usd_to_micros
from relay.state import RelayState

__all__ = ["AlertWatcher"]

log = logging.getLogger("relay.alerts")
_OPERATOR_PREFIX = "disabled by the operator"


class AlertWatcher:
    """``readings``: where money is read (embedded: the wallet). ``shared=False`` (cluster
    mode): the watcher's own loop looks only at this instance (storage, upstream keys); the
    elected instance runs ``check_shared`` (money, cluster-wide) for the whole cluster."""

    def __init__(
        self,
        state: RelayState,
        outbox: AlertOutbox,
        *,
        interval_s: float | None = None,
        readings: MoneyReadings | None = None,
        shared: bool = True,
    ):
        self._state = state
        self._readings: MoneyReadings = readings or WalletReadings(state)
        self._shared = shared
        # A fixed interval (tests) wins over the config's, which a reload may change.
        self._fixed_interval_s = interval_s
        interval_s = interval_s or state.config.alerts_settings.check_interval_s
        self._outbox = outbox
        self._last_notice_id = 0
        self._storage_problem: str | None = None
        self._periodic = PeriodicTask("relay-watch", self.check, interval_s=interval_s, log=log)

    @property
    def interval_s(self) -> float:
        return self._periodic.interval_s

    async def start(self) -> None:
        # Older failures were seen before.
        self._last_notice_id = await self._readings.last_notice_id()
        self._periodic.start()

    async def aclose(self) -> None:
        await self._periodic.stop()

    async def check(self) -> None:
        """One look at everything (the loop's step; tests call it directly)."""
        if self._fixed_interval_s is None:  # the next round follows a reloaded interval
            self._periodic.interval_s = self._state.config.alerts_settings.check_interval_s
        self.check_storage()
        self.check_upstreams()
        if self._shared:
            await self.check_shared()

    async def check_shared(self) -> None:
        """What is the same seen from any instance: balances, budgets, failed top-ups."""
        await self.check_balances()
        await self.check_budgets()
        await self.check_auto_topups()

    def check_storage(self) -> None:
        """Storage going unavailable, and coming back: one alert per change."""
        problem = self._state.storage.problem()
        if (problem is None) != (self._storage_problem is None):
            self._outbox.notify_storage(problem is None, problem or "")
        self._storage_problem = problem

    async def check_balances(self) -> None:
        thresholds = [
            usd_to_micros(s.balance_below_usd)
            for s in self._state.config.alerts
            if "balance_low" in s.events
        ]
        if not thresholds:
            return
        threshold = max(thresholds)
        every = await self._readings.available()
        for account in self._state.store.accounts.values():
            available = every.get(account.id)
            if account.status != "active" or available is None:
                continue
            if available < threshold:
                self._outbox.raise_alert(
                    "balance_low",
                    f"account:{account.id}",
                    f"account {account.name} has ${micros_to_usd(available)} available",
                    {"account_id": account.id, "available_micros": available},
                )

    async def check_budgets(self) -> None:
        spends = await self._readings.key_spends()
        for key in self._state.store.keys.values():
            spend = spends.get(key.id)
            if key.status != "active" or not key.spend_cap_micros or spend is None:
                continue
            period = PERIOD_ADJECTIVES[spend.budget_period]
            self._budget(
                f"key:{key.id}:{spend.resets_at_ms or 0}",
                f"key {key.label} ({key.id}) {period} cap",
                spend.period_spent_micros,
                spend.spend_cap_micros,
            )
        budgets = await self._readings.account_budgets()
        for account in self._state.store.accounts.values():
            budget = budgets.get(account.id)
            if not account.budget_micros or budget is None:
                continue
            self._budget(
                f"account:{account.id}:{budget.resets_at_ms or 0}",
                f"account {account.name} {PERIOD_ADJECTIVES[budget.budget_period]} budget",
                budget.spent_micros,
                budget.budget_micros,
            )

    def _budget(self, subject: str, what: str, spent: int, cap: int) -> None:
        detail = {"spent_micros": spent, "cap_micros": cap}
        if spent >= cap:
            self._outbox.raise_alert(
                "budget_100", subject, f"{what} is spent (${micros_to_usd(spent)})", detail
            )
        elif spent * 5 >= cap * 4:  # 80%, in integers
            message = f"{what} is 80% spent (${micros_to_usd(spent)} of ${micros_to_usd(cap)})"
            self._outbox.raise_alert("budget_80", subject, message, detail)

    def check_upstreams(self) -> None:
        now = time.monotonic()
        for name, provider in self._state.providers.items():
            keys = provider.pool.keys
            for key in keys:
                reason = key.disabled_reason
                if reason is not None and not reason.startswith(_OPERATOR_PREFIX):
                    self._outbox.raise_alert(
                        "upstream_key_disabled",
                        f"{name}#{key.index}",
                        f"provider {name} key #{key.index} left the rotation: {reason}",
                        {"provider": name, "position": key.index},
                    )
            usable = [k for k in keys if k.disabled_reason is None]
            if usable and all(k.cooldown_until > now for k in usable):
                self._outbox.raise_alert(
                    "provider_cooling",
                    name,
                    f"every key of provider {name} is cooling down (rate-limited upstream)",
                    {"provider": name, "keys": len(usable)},
                )

    async def check_auto_topups(self) -> None:
        if not any("auto_topup_failed" in s.events for s in self._state.config.alerts):
            return
        for notice_id, account_id, message in await self._readings.failed_top_ups(
            self._last_notice_id
        ):
            self._last_notice_id = notice_id
            self._outbox.raise_alert(
                "auto_topup_failed",
                f"notice:{notice_id}",
                f"auto top-up failed for account {account_id}: {message}",
                {"account_id": account_id},
            )
