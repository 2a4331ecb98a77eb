"""Name an upstream key by a fingerprint that does not reveal it.

An operator's enable/disable is recorded in the audit chain, which cluster instances replay
(``relay.cluster.pg_upstream_toggles``). The key's position in ``api_keys`` cannot identify
it across a reload that reorders the list, and its value must never be written down; the
fingerprint is an HMAC-SHA256 of the value under a subkey of the server secret (the file
every instance shares), so every instance computes the same one and nobody without the
secret can test a guessed key against it.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["KeyFingerprints"]

# 128 bits of the HMAC: collisions among one provider's keys are out of the question.
_HEX_CHARS = 32


class KeyFingerprints:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the fingerprint key must be at least 16 bytes")
        self._key = key

    def of(self, secret: str) -> str:
        digest = hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()
        return digest[:_HEX_CHARS]

    def __repr__(self) -> str:
        return "KeyFingerprints(…)"
