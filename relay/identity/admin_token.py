"""The operator's admin token: read from the environment, refused when too short.

The token is the whole of the admin API's authentication, so a short one (``x``,
``admin``) is guessable however slowly guesses are let through. ``relay serve`` refuses to
start with a token under ``MIN_ADMIN_TOKEN_CHARS`` characters and names the variable;
an unset variable still only disables the admin API (with a warning).
"""

from __future__ import annotations

import os

from relay.errors import ConfigError

__all__ = ["MIN_ADMIN_TOKEN_CHARS", "admin_token_from_env"]

MIN_ADMIN_TOKEN_CHARS = 16


def admin_token_from_env(env_name: str) -> str | None:
    """The token in ``env_name`` (None when unset or empty); ConfigError when too short."""
    token = os.environ.get(env_name) or None
    if token is not None and len(token.strip()) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(
            f"{env_name} is too short: the admin token needs at least "
            f"{MIN_ADMIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 24`)"
        )
    return token
