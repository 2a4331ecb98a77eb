"""The server secret: a random value kept in a file beside (never inside) the database.

It keys the verified-key cache's digests and the audit chain's HMAC. Keeping it out
of the SQLite file means a copy of the database alone can neither forge audit rows
nor test key guesses against cached digests. Subkeys are derived per purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from relay.storage.files import make_private_dir, open_private, secure_existing

__all__ = ["ServerSecret", "secret_path_for"]

_SECRET_BYTES = 32


def secret_path_for(database: Path) -> Path:
    return database.with_name(database.name + ".secret")


class ServerSecret:
    def __init__(self, value: bytes):
        if len(value) < _SECRET_BYTES:
            raise ValueError("server secret is too short")
        self._value = value

    @classmethod
    def load_or_create(cls, path: Path) -> ServerSecret:
        """Read the secret file, creating it (mode 0600) on first start."""
        secure_existing(path)
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except FileNotFoundError:
            pass
        make_private_dir(path.parent)
        value = secrets.token_bytes(_SECRET_BYTES)
        # Written whole under a temporary name, then linked into place (which fails if the
        # file exists): cluster instances starting together on one folder agree on one
        # secret, and none ever reads a half-written file.
        partial = path.with_name(f"{path.name}.{secrets.token_hex(4)}.new")
        fd = open_private(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(value.hex() + "\n")
            os.link(partial, path)
        except FileExistsError:
            return cls(bytes.fromhex(path.read_text().strip()))
        finally:
            partial.unlink(missing_ok=True)
        return cls(value)

    def subkey(self, purpose: str) -> bytes:
        return hmac.new(self._value, purpose.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "ServerSecret(…)"
