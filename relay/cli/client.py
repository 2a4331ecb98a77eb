"""``AdminClient``: the one HTTP client of the running server's admin API, and ``CommandError``.

Management commands never open the database: the running server owns the state, so every
change goes through ``/admin/...`` (docs/admin-api.md) with the bearer admin token read
from the environment variable the config names. Every failure here — no token, server
unreachable or slow, an error answer, a broken stream — becomes a one-line
``CommandError``, and no message ever carries the token.

The network is injectable like httpx's own seam: ``AdminClient(..., transport=...)``, or
``relay.cli.main(argv, transport=...)``, which leaves it on the parsed arguments as
``args.transport`` for ``AdminClient.from_args``; tests pass an ``httpx.MockTransport``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from relay.config import ServerConfig, load_config

__all__ = ["TIMEOUT_S", "AdminClient", "CommandError", "admin_token", "admin_url"]

TIMEOUT_S = 10.0


class CommandError(Exception):
    """A command failed; ``relay`` prints the message as is, on one line, and exits 1."""


def admin_url(server: ServerConfig) -> str:
    """The base URL of the server the config describes; a wildcard listen means this host."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(server.host, server.host)
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert else "http"
    return f"{scheme}://{host}:{server.port}"


def admin_token(server: ServerConfig) -> str:
    """The admin token from the environment variable the config names."""
    token = os.environ.get(server.admin_token_env, "")
    if not token:
        raise CommandError(
            f"set {server.admin_token_env} to the admin token "
            "(the variable the config's [server] admin_token_env names)"
        )
    return token


class AdminClient:
    """Calls to one relay's admin API: JSON answers, and streamed downloads."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            # Explicit even by default: the admin API is reached directly, never via HTTP(S)_PROXY.
            transport=transport or httpx.HTTPTransport(),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, timeout: float = TIMEOUT_S) -> AdminClient:
        """The server the command's ``-c`` config (or ``--url``) names, with its admin token."""
        server = load_config(args.config).server
        token = admin_token(server)
        url = getattr(args, "url", None) or admin_url(server)
        transport = getattr(args, "transport", None)
        return cls(url, token, transport=transport, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- calls -----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """One JSON call; the decoded answer, or a CommandError with the server's message."""
        try:
            response = self._client.request(method, path, json=body, params=params)
        except httpx.ConnectError:
            raise self._unreachable() from None
        except httpx.TimeoutException:
            raise self._error(
                f"relay at {self.base_url} did not answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise self._error(f"request to relay at {self.base_url} failed: {exc}") from None
        return self._answer(response)

    def items(self, path: str, *, params: Mapping[str, str | int] | None = None) -> list[Any]:
        """The ``data`` array of a list answer."""
        payload = self.call("GET", path, params=params)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise CommandError("unexpected answer from relay: no data list")
        return data

    @contextlib.contextmanager
    def stream(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A streamed GET, open while the ``with`` body reads it; a broken stream fails too."""
        try:
            with self._client.stream("GET", path, params=params) as response:
                if not response.is_success:
                    response.read()
                    self._answer(response)  # raises the server's error message
                yield response
        except httpx.ConnectError:
            raise self._unreachable() from None
        except httpx.HTTPError as exc:
            raise self._error(f"download from relay at {self.base_url} failed: {exc}") from None

    # --- failures ----------------------------------------------------------------------------

    def _answer(self, response: httpx.Response) -> Any:
        try:
            payload = response.json()
        except ValueError:  # not JSON at all: a proxy's error page, or not a relay
            payload = None
        if response.is_success:
            if payload is None:
                raise CommandError(f"unexpected answer from relay (HTTP {response.status_code})")
            return payload
        raise self._error(_error_message(response.status_code, payload))

    def _unreachable(self) -> CommandError:
        return self._error(f"cannot reach relay at {self.base_url}: is `relay serve` running?")

    def _error(self, message: str) -> CommandError:
        # An exception's text or a server's message could echo a header: never the token.
        return CommandError(message.replace(self._token, "[admin token]"))


def _error_message(status: int, payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message.strip():
        return " ".join(message.split())  # the contract is one line on stderr
    return f"relay answered HTTP {status}"
