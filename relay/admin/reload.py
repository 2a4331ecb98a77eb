"""Live reload: re-read the TOML, validate it fully, swap models, prices and providers.

``SIGHUP``, ``relay reload`` and ``POST /admin/reload`` all land in
``ConfigReloader.reload``. The new config is parsed and checked like at start-up, and the
new providers and router are built completely before anything changes; only then are they
swapped in, in one synchronous step (atomic on the event loop). An invalid file is
refused with the key at fault and the running config stays.

Requests in flight keep the ``Route`` (and so the provider, its client and key pool) they
started with: a replaced provider is closed only once none of its keys has a request in
flight. A provider whose config and resolved keys did not change is kept as is, with its
connections and its keys' health. A rebuilt provider takes over the state of each key it
still holds (matched by value, never logged): an operator's ``relay upstream disable``, an
upstream rejection, a cool-down; a removed key's state goes with it.

What a running process cannot change (the listen address, the database, TLS, payments,
the metrics port, telemetry) keeps its old value and is reported as ``restart_required``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import msgspec

from relay.config import Config, load_config, resolve_secret
from relay.errors import ConfigError
from relay.money.budget import BudgetCalendar
from relay.state import RelayState
from relay.upstream.providers import ClientFactory, Provider, build_provider
from relay.upstream.routing import Model, Router

__all__ = ["ConfigReloader", "ReloadRefused", "build_router", "calendar_of"]

log = logging.getLogger("relay.reload")
_RETIRE_POLL_S = 0.5
_RETIRE_MAX_S = 3600.0


class ReloadRefused(ConfigError):
    """The new file is invalid; the running config stays."""


def build_router(config: Config, providers: dict[str, Provider]) -> Router:
    return Router({model.name: Model(model, providers) for model in config.models})


def calendar_of(config: Config) -> BudgetCalendar:
    budgets = config.budgets
    return BudgetCalendar(
        day_start_hour=budgets.day_start_hour,
        week_start=budgets.week_start_index,
        month_start_day=budgets.month_start_day,
    )


def _secrets(provider: Provider) -> list[str]:
    return [key.secret for key in provider.pool.keys]


def _unchanged(old: Provider, new_config: Any) -> bool:
    if old.config != new_config:
        return False
    if new_config.kind == "mock":
        return True
    resolved = [resolve_secret(spec) for spec in new_config.api_keys]
    return _secrets(old) == [secret for secret in resolved if secret]


def _keep_running_values(old: Config, new: Config) -> tuple[Config, list[str]]:
    """Sections a live process cannot change keep their old values (named in the answer)."""
    restart: list[str] = []
    if new.server != old.server:
        restart.append("server")
    if new.payments != old.payments:
        restart.append("payments")
    if new.metrics.listen != old.metrics.listen:
        restart.append("metrics.listen")
    if new.telemetry != old.telemetry:
        restart.append("telemetry")
    metrics = msgspec.structs.replace(new.metrics, listen=old.metrics.listen)
    kept = msgspec.structs.replace(
        new,
        server=old.server,
        payments=old.payments,
        metrics=metrics,
        telemetry=old.telemetry,
        base_dir=old.base_dir,
    )
    return kept, restart


class ConfigReloader:
    """Owns reloads of one app: the file, the client factory, and providers being retired."""

    def __init__(self, state: RelayState, path: Path | None, client_factory: ClientFactory):
        self._state = state
        self._path = path
        self._factory = client_factory
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def reload(self) -> dict[str, Any]:
        """Re-read the file and swap; ``ReloadRefused`` (naming the key) leaves all as is."""
        if self._path is None:
            raise ReloadRefused("this relay was not started from a config file: nothing to reload")
        async with self._lock:  # one reload at a time; requests are never blocked by it
            try:
                new = load_config(self._path)
            except ConfigError as exc:
                log.error("reload refused, the running config stays: %s", exc)
                raise ReloadRefused(str(exc)) from None
            return self.apply(new)

    def apply(self, new: Config) -> dict[str, Any]:
        state = self._state
        old = state.config
        new, restart = _keep_running_values(old, new)
        kept: dict[str, Provider] = {}
        built: dict[str, Provider] = {}
        for provider_config in new.providers:
            current = state.providers.get(provider_config.name)
            if current is not None and _unchanged(current, provider_config):
                kept[current.name] = current
            else:
                fresh = build_provider(provider_config, self._factory)
                if current is not None:  # an operator's disable survives a rebuild
                    fresh.pool.adopt_state(current.pool)
                built[provider_config.name] = fresh
        providers = {**kept, **built}
        try:
            router = build_router(new, providers)
            calendar = calendar_of(new)
        except Exception as exc:  # a check the config parser missed: refuse, build nothing
            self._retire(list(built.values()))
            log.error("reload refused, the running config stays: %s", exc)
            raise ReloadRefused(str(exc)) from None
        retired = [p for name, p in state.providers.items() if providers.get(name) is not p]
        # The swap: synchronous, so no request sees half of it.
        before = set(state.router.models)
        state.providers.clear()
        state.providers.update(providers)  # in place: the video poller holds this dict
        state.router = router
        state.config = new
        state.wallet.calendar = calendar
        self._retire(retired)
        after = set(router.models)
        added, removed = sorted(after - before), sorted(before - after)
        log.info(
            "config reloaded: %d models (+%d, -%d), providers rebuilt: %s%s",
            len(after),
            len(added),
            len(removed),
            ", ".join(sorted(built)) or "none",
            f"; restart to apply {', '.join(restart)}" if restart else "",
        )
        return {
            "reloaded": True,
            "models": sorted(after),
            "added_models": added,
            "removed_models": removed,
            "providers_rebuilt": sorted(built),
            "restart_required": restart,
        }

    def _retire(self, providers: list[Provider]) -> None:
        for provider in providers:
            task = asyncio.get_running_loop().create_task(_close_when_idle(provider))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """At shutdown: close the retiring providers now (their requests were drained)."""
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _close_when_idle(provider: Provider) -> None:
    """Close a replaced provider once no request is using any of its keys."""
    waited = 0.0
    try:
        while any(key.in_flight for key in provider.pool.keys) and waited < _RETIRE_MAX_S:
            await asyncio.sleep(_RETIRE_POLL_S)
            waited += _RETIRE_POLL_S
    finally:
        await provider.aclose()
