"""Tests for relay.config: every mistake is a ConfigError that names the key at fault."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relay.config import load_config, parse_config, resolve_secret
from relay.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / ".venv" / "bin" / "relay"

MOCK_PROVIDER = '[[providers]]\nname = "mock"\nkind = "mock"\n'
MOCK_MODEL = '[[models]]\nname = "m"\nroutes = ["mock:m"]\n'


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return str(info.value)


def test_minimal_config_takes_the_documented_defaults() -> None:
    config = parse_config(MOCK_PROVIDER + MOCK_MODEL)
    assert config.server.listen == "127.0.0.1:8787"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8787)
    assert config.server.max_body_bytes == 8 * 1024 * 1024
    assert config.models[0].kind == "chat"
    assert config.provider("mock").max_attempts == 3
    with pytest.raises(KeyError):
        config.provider("nope")


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[server]\nlisten = "127.0.0.1:1"\nbogus = 1\n', ["server", "bogus"]),
        ("bogus = 1\n", ["bogus"]),
        (MOCK_PROVIDER + 'colour = "red"\n', ["providers[0]", "colour"]),
        (MOCK_PROVIDER + MOCK_MODEL + "temperature = 1\n", ["models[0]", "temperature"]),
        ("base_dir = '/etc'\n", ["base_dir"]),
    ],
)
def test_unknown_keys_are_named(text: str, names: list[str]) -> None:
    message = _error(text)
    for name in names:
        assert name in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nflush_interval_ms = 500\n", "server.flush_interval_ms"),
        ("[server]\nwriter_nice = 20\n", "server.writer_nice"),
        ("[server]\nwriter_background_nice = 20\n", "server.writer_background_nice"),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
        ('[server]\nlisten = "8787"\n', "listen"),
        ('[server]\nlisten = "127.0.0.1:99999"\n', "listen"),
        ('[server]\nlog_level = "loud"\n', "server.log_level"),
        ('[server]\ntls_cert = "cert.pem"\n', "tls_key"),
        ('[[providers]]\nname = "p"\nkind = "azure"\n', "providers[0].kind"),
        (MOCK_PROVIDER + "max_attempts = 11\n", "providers[0].max_attempts"),
        (MOCK_PROVIDER + "timeout_s = 0\n", "providers[0].timeout_s"),
        ('[[providers]]\nname = "o"\nkind = "openai"\napi_keys = ["k"]\n', "base_url"),
        ('[[providers]]\nname = "o"\nkind = "openai"\nbase_url = "http://x"\n', "api_keys"),
        (MOCK_PROVIDER + 'api_keys = [""]\n', "api_keys"),
        ('[[providers]]\nname = "a:b"\nkind = "mock"\n', "providers[0]"),
        (MOCK_PROVIDER + MOCK_MODEL + 'kind = "audio"\n', "models[0].kind"),
        (MOCK_PROVIDER + '[[models]]\nname = "m"\nroutes = ["mock"]\n', "models[0]"),
        (MOCK_PROVIDER + MOCK_MODEL + 'output_usd_per_mtok = "cheap"\n', "output_usd_per_mtok"),
        (MOCK_PROVIDER + MOCK_MODEL + 'input_usd_per_mtok = "-1"\n', "input_usd_per_mtok"),
        (MOCK_PROVIDER + MOCK_MODEL + 'input_usd_per_mtok = "NaN"\n', "input_usd_per_mtok"),
        (MOCK_PROVIDER + MOCK_MODEL + 'image_prices = { "1024x1024" = "x" }\n', "1024x1024"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(text: str, key: str) -> None:
    assert key in _error(text)


def test_a_float_price_is_refused_because_prices_are_exact_decimal_strings() -> None:
    message = _error(MOCK_PROVIDER + MOCK_MODEL + "input_usd_per_mtok = 0.15\n")
    assert "models[0].input_usd_per_mtok" in message
    assert "str" in message


def test_a_route_to_an_unknown_provider_is_a_dangling_reference() -> None:
    message = _error(MOCK_PROVIDER + '[[models]]\nname = "m"\nroutes = ["mock:a", "gone:b"]\n')
    assert message.startswith("models[0].routes[1]")
    assert "'gone'" in message and "known: mock" in message


def test_duplicate_provider_and_model_names_are_refused() -> None:
    assert "providers[1].name" in _error(MOCK_PROVIDER + MOCK_PROVIDER)
    assert "models[1].name" in _error(MOCK_PROVIDER + MOCK_MODEL + MOCK_MODEL)


def test_empty_routes_are_refused() -> None:
    message = _error(MOCK_PROVIDER + '[[models]]\nname = "m"\nroutes = []\n')
    assert "models[0]" in message and "routes" in message


def test_env_secrets_resolve_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TEST_SECRET", "sk-from-env")
    monkeypatch.setenv("RELAY_TEST_EMPTY", "")
    monkeypatch.delenv("RELAY_TEST_UNSET", raising=False)
    assert resolve_secret("env:RELAY_TEST_SECRET") == "sk-from-env"
    assert resolve_secret("env:RELAY_TEST_EMPTY") is None
    assert resolve_secret("env:RELAY_TEST_UNSET") is None
    assert resolve_secret("sk-literal") == "sk-literal"


def test_relative_database_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "relay.toml").write_text('[server]\ndatabase = "data/relay.db"\n')
    config = load_config(folder / "relay.toml")
    assert config.database_path == folder.resolve() / "data" / "relay.db"
    absolute = tmp_path / "abs.db"
    (folder / "abs.toml").write_text(f'[server]\ndatabase = "{absolute}"\n')
    assert load_config(folder / "abs.toml").database_path == absolute


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_the_shipped_example_config_validates() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert {"mock-gpt", "mock-embedding", "deepseek-chat"} <= {m.name for m in config.models}
    assert config.database_path == ROOT / "relay.db"


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RELAY), "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.subprocess
def test_check_config_fails_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MOCK_PROVIDER + '[[models]]\nname = "m"\nroutes = ["gone:m"]\n')
    result = _check_config(bad)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "models[0].routes[0]" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    result = _check_config(ROOT / "config.example.toml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
