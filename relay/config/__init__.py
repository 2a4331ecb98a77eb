"""relay's configuration: one TOML file decoded into frozen msgspec Structs.

One module per part of the file (``server``, ``models``, ``billing``, ``alerts``,
``operations``, ``cluster``) and ``document`` for the whole; everything is importable from
here, as callers always have (``from relay.config import Config, parse_config``).
"""

from relay.config.alerts import (
    ALERT_EVENTS,
    AlertConfig,
    AlertEvent,
    AlertsSettingsConfig,
    EmailConfig,
)
from relay.config.billing import WEEKDAYS, BudgetsConfig, PaymentCurrency, PaymentsConfig, Weekday
from relay.config.cluster import ClusterConfig, StorageConfig, redact_url
from relay.config.document import Config, load_config, parse_config, resolve_secret
from relay.config.models import (
    ModelConfig,
    ModelKind,
    ProviderConfig,
    ProviderKind,
    RouteConfig,
    RouteSpec,
    parse_route,
)
from relay.config.operations import MetricsConfig, RetentionConfig, TelemetryConfig
from relay.config.server import ServerConfig

__all__ = [
    "ALERT_EVENTS",
    "WEEKDAYS",
    "AlertConfig",
    "AlertEvent",
    "AlertsSettingsConfig",
    "BudgetsConfig",
    "ClusterConfig",
    "Config",
    "EmailConfig",
    "MetricsConfig",
    "ModelConfig",
    "ModelKind",
    "PaymentCurrency",
    "PaymentsConfig",
    "ProviderConfig",
    "ProviderKind",
    "RetentionConfig",
    "RouteConfig",
    "RouteSpec",
    "ServerConfig",
    "StorageConfig",
    "TelemetryConfig",
    "Weekday",
    "load_config",
    "parse_config",
    "parse_route",
    "redact_url",
    "resolve_secret",
]
