"""HMAC-signed tokens: ``value.mac``, for session cookies and invite links.

The key is a ServerSecret subkey per purpose, so a token made for one purpose is
worthless for another, and the secret file (never the database) is what signs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["sign", "unsign"]


def _mac(key: bytes, value: str) -> str:
    digest = hmac.new(key, b"signed:" + value.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(key: bytes, value: str) -> str:
    """``value.mac``; ``value`` must not contain a dot."""
    if "." in value:
        raise ValueError("a signed value must not contain '.'")
    return f"{value}.{_mac(key, value)}"


def unsign(key: bytes, signed: str | None) -> str | None:
    """The value if the signature is right, else None (constant-time comparison)."""
    if not signed or signed.count(".") != 1:
        return None
    value, mac = signed.split(".")
    if not value or not hmac.compare_digest(_mac(key, value), mac):
        return None
    return value
