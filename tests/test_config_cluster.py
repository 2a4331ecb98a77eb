"""``[storage] url`` and ``[cluster] redis_url``: cluster mode is both or neither."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.cli.entry import main
from relay.config import parse_config, redact_url
from relay.errors import ConfigError

CLUSTER = """
[storage]
url = "postgresql://relay:s3cret@db.internal:5432/relay"

[cluster]
redis_url = "redis://:hunter2@cache.internal:6379/0"
"""


def test_absent_sections_mean_the_embedded_store() -> None:
    config = parse_config("")
    assert (config.storage, config.cluster, config.cluster_mode) == (None, None, False)


def test_both_sections_select_cluster_mode_with_the_default_lease() -> None:
    config = parse_config(CLUSTER)
    assert config.cluster_mode
    assert config.storage is not None and config.storage.url.startswith("postgresql://")
    assert config.cluster is not None and config.cluster.lease_s == 30.0


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[storage]\nurl = "postgresql://db/relay"\n', "[cluster] redis_url is missing"),
        ('[cluster]\nredis_url = "redis://cache"\n', "[storage] url is missing"),
    ],
)
def test_a_half_configured_cluster_is_an_error_that_says_what_is_missing(
    text: str, names: str
) -> None:
    with pytest.raises(ConfigError, match="half-configured cluster") as error:
        parse_config(text)
    assert names in str(error.value)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            '[storage]\nurl = "sqlite:///relay.db"\n[cluster]\nredis_url = "redis://c"\n',
            ["storage", "url must be a PostgreSQL URL"],
        ),
        (
            '[storage]\nurl = "postgresql://db"\n[cluster]\nredis_url = "http://c"\n',
            ["cluster", "redis_url must be a Redis URL"],
        ),
        (CLUSTER + "lease_s = 0.1\n", ["cluster.lease_s"]),
        (CLUSTER.replace("[cluster]", "[cluster]\nredis = 1"), ["cluster", "redis"]),
    ],
)
def test_bad_cluster_values_name_the_key(text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    for name in names:
        assert name in str(error.value)


def test_urls_are_redacted_for_display() -> None:
    assert redact_url("postgresql://relay:s3cret@db:5432/x") == "postgresql://relay:***@db:5432/x"
    assert redact_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("postgresql://relay@db/x") == "postgresql://relay@db/x"


def test_check_config_validates_both_and_never_prints_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(CLUSTER)
    assert main(["check-config", "-c", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert summary["store"] == "cluster"
    assert summary["storage_url"] == "postgresql://relay:***@db.internal:5432/relay"
    assert "s3cret" not in out and "hunter2" not in out
    path.write_text('[cluster]\nredis_url = "redis://cache"\n')
    assert main(["check-config", "-c", str(path)]) == 1
    assert "half-configured cluster" in capsys.readouterr().err


def test_serve_refuses_a_half_configured_cluster_before_binding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A full cluster config now serves (tests/test_cluster_serve.py); half of one never does.
    path = tmp_path / "relay.toml"
    path.write_text('[storage]\nurl = "postgresql://relay:s3cret@db.internal/relay"\n')
    assert main(["serve", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "half-configured cluster" in err and "s3cret" not in err


def test_serve_listen_override_is_checked_like_the_config_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(CLUSTER)
    assert main(["serve", "-c", str(path), "--listen", "no-port"]) == 1
    assert "--listen" in capsys.readouterr().err
