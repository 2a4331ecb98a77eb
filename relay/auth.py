"""Who is calling: the bearer credential of a request, checked in constant time.

Until client keys exist, the data plane accepts only the admin token, so relay is
never open by default. Messages say what is wrong without echoing the credential.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from relay.errors import AuthError

__all__ = ["ADMIN", "ANONYMOUS", "Authenticator", "Principal", "bearer_token"]


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "admin" (the operator's token) or "key" (a client key)
    account_id: str | None = None
    key_id: str | None = None


ADMIN = Principal("admin")
# Who a request is until authentication has run (for the usage row of a refused one).
ANONYMOUS = Principal("anonymous")


def bearer_token(headers: Mapping[str, str], *, allow_x_api_key: bool = False) -> str | None:
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthError("Malformed Authorization header: expected 'Bearer <key>'")
    if allow_x_api_key:
        return headers.get("x-api-key") or None
    return None


class Authenticator:
    def __init__(self, admin_token: str | None):
        self._admin_token = admin_token.encode() if admin_token else None

    @property
    def admin_enabled(self) -> bool:
        return self._admin_token is not None

    def is_admin_token(self, token: str) -> bool:
        return self._admin_token is not None and hmac.compare_digest(
            token.encode(), self._admin_token
        )

    def authenticate(
        self, headers: Mapping[str, str], *, allow_x_api_key: bool = False
    ) -> Principal:
        token = bearer_token(headers, allow_x_api_key=allow_x_api_key)
        if token is None:
            raise AuthError("Missing API key: send 'Authorization: Bearer <key>'")
        if self.is_admin_token(token):
            return ADMIN
        raise AuthError("Invalid API key: it is unknown, revoked or expired")
