"""CSRF tokens for the console's forms: bound to the session, checked on every unsafe request.

A token is ``HMAC(csrf key, binding)`` where the binding is the session id for signed-in
users and a random pre-session value (kept in its own signed cookie) for the sign-in and
invite forms. Nothing is stored: the server recomputes the token and compares it in
constant time. A cross-site page can neither read the cookie nor compute the HMAC, so it
cannot forge the form field. The ``Origin`` check is a second, independent line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["CSRF_FIELD", "csrf_token", "origin_allowed", "valid_csrf_token"]

CSRF_FIELD = "csrf_token"


def csrf_token(key: bytes, binding: str) -> str:
    digest = hmac.new(key, b"csrf:" + binding.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def valid_csrf_token(key: bytes, binding: str | None, presented: str | None) -> bool:
    if not binding or not presented:
        return False
    return hmac.compare_digest(csrf_token(key, binding), presented)


def origin_allowed(headers: Mapping[str, str], host: str, public_origin: str | None = None) -> bool:
    """A browser's ``Origin`` (when sent) must name this host, or relay's public URL (a
    proxy may pass relay another Host); other clients send none."""
    origin = headers.get("origin")
    if origin is None:
        return True
    if public_origin is not None and origin == public_origin:
        return True
    scheme, _, rest = origin.partition("://")
    return scheme in ("http", "https") and rest == host
