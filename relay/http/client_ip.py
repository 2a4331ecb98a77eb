"""Who is on the other end: the socket's peer, or the client a trusted proxy names.

Behind a reverse proxy every request comes from the proxy's address, so per-IP limits
(sign-in lockout, admin-token throttling) would lock everyone out together. A proxy
listed in ``[server] trusted_proxies`` names the client in ``X-Forwarded-For``; relay
believes that header only when the peer itself is trusted, and then walks it from the
right (the entry the trusted proxy appended), skipping further trusted hops, so a client
cannot choose its own address by sending the header itself.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import Scope

__all__ = ["UNKNOWN_CLIENT", "client_ip", "parse_networks"]

UNKNOWN_CLIENT = "unknown"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def parse_networks(specs: tuple[str, ...]) -> tuple[Network, ...]:
    """``"10.0.0.1"`` or ``"10.0.0.0/8"`` entries as networks (config has validated them)."""
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every ``X-Forwarded-For`` entry, in order (several headers are one list)."""
    entries: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            entries.extend(part.strip() for part in value.decode("latin-1").split(","))
    return [entry for entry in entries if entry]


def client_ip(scope: Scope, trusted_proxies: Sequence[str]) -> str:
    """The client's address for per-IP limits (``"unknown"`` when the server gave none)."""
    client = scope.get("client")
    peer = client[0] if client else UNKNOWN_CLIENT
    networks = parse_networks(tuple(trusted_proxies))
    if not _trusted(peer, networks):
        return str(peer)
    hops = _forwarded_for(scope.get("headers", ()))
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a garbled entry: fall back to the proxy, never trust text
    return hops[0] if hops else peer
