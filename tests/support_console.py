"""Helpers for the console's tests: relay with the console mounted, users, signed-in clients.

``console_relay`` serves relay (``support_accounts.run_relay``: cheap argon2, admin client)
with the console and the ``/admin/users`` routes added when the app does not mount them
yet. ``Browser`` is an httpx client with a cookie jar that signs in through the real form
and sends each form's CSRF token back, like a browser would.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_config
from support_accounts import Relay, run_relay

from relay.config import Config

__all__ = ["PASSWORD", "Browser", "console_relay", "csrf_of", "serve_console"]

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextlib.asynccontextmanager
async def serve_console(monkeypatch: pytest.MonkeyPatch, config: Config) -> AsyncIterator[Relay]:
    async with run_relay(config) as relay:
        yield relay


@contextlib.asynccontextmanager
async def console_relay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Relay]:
    async with serve_console(monkeypatch, make_config(tmp_path)) as relay:
        yield relay


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "no CSRF token in the page"
    return found.group(1)


async def create_user(
    relay: Relay,
    email: str,
    *,
    account: str | None = None,
    role: str | None = None,
    operator: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {"email": email, "password": PASSWORD, "operator": operator}
    if account is not None:
        body |= {"account": account, "role": role or "owner"}
    response = await relay.client.post("/admin/users", json=body)
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


class Browser:
    """A signed-in (or not) console visitor with its own cookies."""

    def __init__(self, relay: Relay) -> None:
        self.client = httpx.AsyncClient(base_url=relay.base_url, timeout=10.0)

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, **kwargs)

    async def submit(
        self, page: str, action: str, data: dict[str, Any] | None = None
    ) -> httpx.Response:
        """GET ``page``, then POST ``data`` to ``action`` with the page's CSRF token."""
        token = csrf_of((await self.client.get(page)).text)
        return await self.client.post(action, data={"csrf_token": token, **(data or {})})

    async def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        response = await self.submit(
            "/console/login", "/console/login", {"email": email, "password": password}
        )
        return response
