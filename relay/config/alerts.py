"""``[email]``, ``[[alerts]]`` and ``[alerts_settings]``: who hears about what, and how."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from relay.config.fields import PositiveFloat, check_usd

__all__ = [
    "ALERT_EVENTS",
    "AlertConfig",
    "AlertEvent",
    "AlertsSettingsConfig",
    "EmailConfig",
]


class EmailConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[email]``: the SMTP server relay sends alerts and people's mail through."""

    host: str
    from_: str = msgspec.field(name="from")
    port: Annotated[int, Meta(ge=1, le=65535)] = 587
    # STARTTLS after connecting (port 587); false only for a local relay such as 127.0.0.1:25.
    starttls: bool = True
    user: str | None = None
    # The name of the environment variable holding the SMTP password, never the password.
    password_env: str | None = None
    timeout_s: PositiveFloat = 30.0
    # Billing mail to each account's owners: a receipt when credit lands (payment, manual
    # credit, auto top-up), and a statement once a calendar month (UTC) has closed. Off by
    # default: configuring SMTP for alerts must not start mailing customers.
    receipts: bool = False
    statements: bool = False

    def __post_init__(self) -> None:
        if "@" not in self.from_:
            raise ValueError("from must be an email address")
        if (self.user is None) != (self.password_env is None):
            raise ValueError("user and password_env must be set together")


AlertEvent = Literal[
    "balance_low",
    "budget_80",
    "budget_100",
    "upstream_key_disabled",
    "provider_cooling",
    "auto_topup_failed",
    "storage_unavailable",
    "storage_recovered",
]
ALERT_EVENTS: tuple[AlertEvent, ...] = (
    "balance_low",
    "budget_80",
    "budget_100",
    "upstream_key_disabled",
    "provider_cooling",
    "auto_topup_failed",
    "storage_unavailable",
    "storage_recovered",
)


class AlertConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``[[alerts]]`` sink: where alerts go, which ones, and how often at most."""

    sink: Literal["webhook", "slack", "email"]
    name: str = ""
    # webhook and slack: where to POST. email: the recipients (needs [email]).
    url: str | None = None
    to: list[str] = []
    # webhook: env var holding the HMAC-SHA256 key; the body's signature is sent in
    # x-relay-signature: sha256=<hex>.
    secret_env: str | None = None
    events: list[AlertEvent] = msgspec.field(default_factory=lambda: list(ALERT_EVENTS))
    # An account's available balance below this (USD) raises balance_low.
    balance_below_usd: str = "5"
    # The same alert (event and subject) is sent again at most once per re-arm interval
    # (at most 30 days: a longer silence is a sink that should be removed).
    rearm_s: Annotated[float, Meta(ge=0, le=2_592_000)] = 3600.0

    def __post_init__(self) -> None:
        if self.sink in ("webhook", "slack"):
            if self.url is None or not self.url.startswith(("http://", "https://")):
                raise ValueError(f'a {self.sink} sink needs url = "https://..."')
        elif not self.to or any("@" not in address for address in self.to):
            raise ValueError('an email sink needs to = ["someone@example.com"]')
        check_usd(self.balance_below_usd, "balance_below_usd")


class AlertsSettingsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[alerts_settings]``: what applies to every ``[[alerts]]`` sink."""

    # How often the watcher looks for alert conditions (balances, budgets, upstream keys,
    # auto top-ups, storage). Bounded: under a second is busy work on the event loop, over
    # an hour is an alert nobody gets in time. A reload applies it from the next round.
    # In cluster mode the elected instance's auto top-up sweep runs at the same pace.
    check_interval_s: Annotated[float, Meta(ge=1, le=3600)] = 10.0
