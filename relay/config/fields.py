"""What several ``[sections]`` of the configuration check the same way: bounded numbers,
names, decimal USD strings and public URLs."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated
from urllib.parse import urlsplit

from msgspec import Meta

__all__ = [
    "NAME",
    "NonNegativeFloat",
    "PositiveFloat",
    "PositiveInt",
    "check_public_url",
    "check_usd",
]

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:@]*$")


def check_usd(value: str, key: str) -> None:
    """A price or amount: a non-negative, finite decimal string (never a float)."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError(f'{key} must be a decimal string such as "0.15"') from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{key} must be a non-negative decimal string")


def check_public_url(url: str) -> None:
    """An origin (scheme, host, optional port) with no path: relay serves from the root."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError('public_url must be an http(s) URL such as "https://relay.example.com"')
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("public_url must name only the scheme, host and port, with no path")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("public_url has an invalid port") from None
