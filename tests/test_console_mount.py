"""The console's mount: its pages load at the first console request, not at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support_console import Browser, console_relay

# Builds the app as ``relay serve`` does (the server module and everything it imports).
_BUILD_APP = """
import sys
from relay.app import create_app
from relay.config import parse_config
import relay.server
create_app(parse_config(sys.argv[1], base_dir=sys.argv[2]))
print(" ".join(m for m in ("jinja2", "relay.console.routes", "relay.console.web")
               if m in sys.modules))
"""


def test_building_the_app_loads_no_console_page(tmp_path: Path) -> None:
    config = f'[server]\ndatabase = "{tmp_path / "relay.db"}"\n'
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_APP, config, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


async def test_the_first_console_request_loads_the_pages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, admin_token: str
) -> None:
    async with console_relay(monkeypatch, tmp_path) as relay, Browser(relay) as browser:
        bare = await browser.get("/console")
        assert bare.status_code == 308 and bare.headers["location"] == "/console/"
        login = await browser.get("/console/login")
        assert login.status_code == 200 and 'name="csrf_token"' in login.text
        style = await browser.get("/console/static/console.css")
        assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
        missing = await browser.get("/console/no-such-page")
        assert missing.status_code == 404 and "There is no such page." in missing.text
