"""Never pass a pool key on: redact provider keys from upstream bodies, vet upstream ids.

An upstream may quote the key it was sent (an error message, an id or a field built from
the request). Relay replaces every occurrence before the client sees a body, in any JSON
spelling: plain, or with some or all characters ``\\uXXXX``-escaped (which decodes to the
same key in the client's JSON parser). A 2xx body is checked as well as an error body,
and so is each chunk of a stream (a key split across two network chunks is not caught;
the id of every chunk is also vetted once decoded, below).

Upstream request ids go into usage rows, response metadata and (for video jobs) the
upstream URL relay polls, so an id is kept only when it is short, made of a safe
alphabet, and contains no pool key; otherwise it is dropped (``None``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence

from relay.upstream.client import UpstreamResponse

__all__ = ["REDACTED", "KeyRedactor", "RedactingResponse"]

REDACTED = b"[redacted]"
MAX_UPSTREAM_ID_CHARS = 128
# Starts with a letter or digit (never a CSV formula), no '/' (ids go into upstream URLs).
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=-]*")
_ESCAPES = (b"\\u", b"\\/")
# The searches below use ``bytes.find``, not ``in``: ``bytes.__contains__`` first tries
# its operand as an integer and builds and clears a TypeError for every bytes needle,
# which costs several times the search itself (about 1,800 instructions each, callgrind).


def _hex_class(digit: str) -> str:
    return f"[{digit.lower()}{digit.upper()}]" if digit.isalpha() else digit


def _any_spelling(secret: str) -> str:
    """A regex matching ``secret`` with any of its characters JSON-escaped."""
    parts = []
    for char in secret:
        escaped = "".join(_hex_class(d) for d in f"{ord(char):04x}")
        options = [re.escape(char), r"\\u" + escaped]
        if char == "/":
            options.append(r"\\/")
        parts.append("(?:" + "|".join(options) + ")")
    return "".join(parts)


class KeyRedactor:
    """One provider's pool keys, ready to be searched for in bodies and ids."""

    __slots__ = ("_plain", "_needles", "_pattern")

    def __init__(self, secrets: Sequence[str]):
        self._plain = tuple(secret.encode() for secret in secrets if secret)
        self._needles = _ESCAPES + self._plain  # what sends a body to the regex
        spellings = [_any_spelling(secret) for secret in secrets if secret]
        self._pattern = re.compile("|".join(spellings).encode()) if spellings else None

    def redact(self, body: bytes) -> bytes:
        """``body`` with every key, in any JSON spelling, replaced by ``[redacted]``."""
        if self._pattern is None:
            return body
        # The usual body holds neither a key nor an escape: quick scans, no regex. Without
        # a backslash there is no escape to look for: one memchr instead of two scans byte
        # by byte (a two-byte needle has no memchr path); the keys are long needles, which
        # the search skips through.
        needles = self._needles if body.find(b"\\") >= 0 else self._plain
        for needle in needles:
            if body.find(needle) >= 0:
                return self._pattern.sub(REDACTED, body)
        return body

    def safe_id(self, value: str | None) -> str | None:
        """The upstream's id when it is safe to store, show and put in a URL; else None."""
        if not value or len(value) > MAX_UPSTREAM_ID_CHARS or not _SAFE_ID.fullmatch(value):
            return None
        encoded = value.encode()
        for secret in self._plain:
            if encoded.find(secret) >= 0:
                return None
        return value


class RedactingResponse:
    """A 2xx upstream response whose body and chunks come out redacted."""

    __slots__ = ("_inner", "_redactor", "status", "headers")

    def __init__(self, inner: UpstreamResponse, redactor: KeyRedactor):
        self._inner = inner
        self._redactor = redactor
        self.status = inner.status
        self.headers: Mapping[str, str] = inner.headers

    async def read(self, max_bytes: int | None = None) -> bytes:
        return self._redactor.redact(await self._inner.read(max_bytes))

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner.chunks():
            yield self._redactor.redact(chunk)

    async def aclose(self) -> None:
        await self._inner.aclose()
