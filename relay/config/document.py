"""The whole file: ``Config``, decoded from TOML with its cross-section checks.

Unknown keys, bad values and dangling references are errors that name the key
(``ConfigError``). Secrets are ``env:NAME`` references resolved by ``resolve_secret`` so
that a config file never has to hold a key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import msgspec

from relay.config.alerts import AlertConfig, AlertsSettingsConfig, EmailConfig
from relay.config.billing import BudgetsConfig, PaymentsConfig
from relay.config.cluster import ClusterConfig, StorageConfig
from relay.config.models import ModelConfig, ProviderConfig, parse_route
from relay.config.operations import MetricsConfig, RetentionConfig, TelemetryConfig
from relay.config.server import ServerConfig
from relay.errors import ConfigError

__all__ = ["Config", "load_config", "parse_config", "resolve_secret"]


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: ServerConfig = ServerConfig()
    providers: list[ProviderConfig] = []
    models: list[ModelConfig] = []
    # Absent: payments are off (manual credits through the admin API still work).
    payments: PaymentsConfig | None = None
    metrics: MetricsConfig = MetricsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    retention: RetentionConfig = RetentionConfig()
    email: EmailConfig | None = None
    alerts: list[AlertConfig] = []
    alerts_settings: AlertsSettingsConfig = AlertsSettingsConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    # Both absent: the embedded store. Both present: cluster mode. One alone is an error.
    storage: StorageConfig | None = None
    cluster: ClusterConfig | None = None
    # Where the file was read from; relative paths in it resolve against this folder.
    base_dir: str = "."
    # The file itself (empty when parsed from text): what a reload re-reads.
    source: str = ""

    def __post_init__(self) -> None:
        if self.storage is not None and self.cluster is None:
            raise ValueError(
                "a half-configured cluster: [storage] url is PostgreSQL but [cluster] redis_url "
                "is missing (cluster mode needs both; remove [storage] for the embedded store)"
            )
        if self.cluster is not None and self.storage is None:
            raise ValueError(
                "a half-configured cluster: [cluster] redis_url is set but [storage] url is "
                "missing (cluster mode needs both; remove [cluster] for the embedded store)"
            )

    @property
    def cluster_mode(self) -> bool:
        return self.storage is not None and self.cluster is not None

    @property
    def base_dir_path(self) -> Path:
        return Path(self.base_dir)

    @property
    def database_path(self) -> Path:
        return _resolve_path(self.base_dir, self.server.database)

    def provider(self, name: str) -> ProviderConfig:
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise KeyError(name)


def _resolve_path(base_dir: str, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def _key_path(message: str) -> str:
    """Rewrite msgspec's ``... - at `$.models[0].name``` into ``models[0].name: ...``."""
    match = re.search(r" - at `\$\.?(.*)`$", message)
    if not match:
        return message
    where = match.group(1) or "(top level)"
    return f"{where}: {message[: match.start()]}"


def _check_references(config: Config) -> None:
    names: set[str] = set()
    for i, provider in enumerate(config.providers):
        if provider.name in names:
            raise ConfigError(f"providers[{i}].name: duplicate provider {provider.name!r}")
        names.add(provider.name)
    for i, alert in enumerate(config.alerts):
        if alert.sink == "email" and config.email is None:
            raise ConfigError(f"alerts[{i}].sink: an email sink needs an [email] section")
    models: set[str] = set()
    for i, model in enumerate(config.models):
        if model.name in models:
            raise ConfigError(f"models[{i}].name: duplicate model {model.name!r}")
        models.add(model.name)
        for j, route in enumerate(model.routes):
            provider_name = parse_route(route).provider
            if provider_name not in names:
                raise ConfigError(
                    f"models[{i}].routes[{j}]: unknown provider {provider_name!r} "
                    f"(known: {', '.join(sorted(names)) or 'none'})"
                )


def parse_config(text: str, base_dir: str = ".") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    for internal in ("base_dir", "source"):
        if internal in raw:
            raise ConfigError(f"{internal}: unknown key")
    raw["base_dir"] = base_dir
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_key_path(str(exc))) from None
    _check_references(config)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(file)!r}: {exc.strerror}") from None
    config = parse_config(text, base_dir=str(file.resolve().parent))
    return msgspec.structs.replace(config, source=str(file.resolve()))


def resolve_secret(spec: str) -> str | None:
    """``env:NAME`` → the variable's value (None when unset or empty); else the literal."""
    if spec.startswith("env:"):
        return os.environ.get(spec[4:]) or None
    return spec
