"""X-Forwarded-For counts only when the peer is a trusted proxy, read from the right."""

from __future__ import annotations

import pytest

from relay.http.client_ip import client_ip


def scope(peer: str | None, *forwarded: str) -> dict[str, object]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"client": (peer, 5000) if peer else None, "headers": headers}


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", (), [], "203.0.113.5"),
        ("203.0.113.5", ("1.2.3.4",), [], "203.0.113.5"),  # untrusted peer: header ignored
        ("10.0.0.2", ("1.2.3.4",), ["10.0.0.0/8"], "1.2.3.4"),
        # The client may prepend anything; the entry the trusted proxy appended wins.
        ("10.0.0.2", ("6.6.6.6, 1.2.3.4",), ["10.0.0.0/8"], "1.2.3.4"),
        # Two trusted hops are skipped, split over two headers.
        ("10.0.0.2", ("6.6.6.6, 1.2.3.4", "10.0.0.9"), ["10.0.0.0/8"], "1.2.3.4"),
        ("10.0.0.2", (), ["10.0.0.0/8"], "10.0.0.2"),
        ("10.0.0.2", ("not-an-ip",), ["10.0.0.0/8"], "10.0.0.2"),
        ("::ffff:10.0.0.2", ("2001:db8::1",), ["10.0.0.2"], "2001:db8::1"),
        (None, ("1.2.3.4",), ["10.0.0.0/8"], "unknown"),
    ],
)
def test_client_ip(
    peer: str | None, forwarded: tuple[str, ...], trusted: list[str], expected: str
) -> None:
    assert client_ip(scope(peer, *forwarded), trusted) == expected
