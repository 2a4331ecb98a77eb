"""One request's bookkeeping, from admission to its usage record."""

from __future__ import annotations

import time
from typing import Any

from relay.identity.auth import Principal
from relay.money.pricing import micros_to_usd
from relay.upstream.routing import Model, Route
from relay.usage.log import UsageRecord

__all__ = ["Exchange"]


class Exchange:
    """What relay learns about a request as it flows through; metadata only."""

    __slots__ = (
        "request_id",
        "endpoint",
        "principal",
        "model",
        "route",
        "stream",
        "started",
        "admitted_at",
        "settling_at",
        "ts_ms",
        "ttfb_ms",
        "status",
        "error_code",
        "upstream_id",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "units",
        "cost_micros",
        "usage_estimated",
        "_vetted",
    )

    def __init__(self, request_id: str, endpoint: str, principal: Principal):
        self.request_id = request_id
        self.endpoint = endpoint
        self.principal = principal
        self.model: Model | None = None
        self.route: Route | None = None
        self.stream = False
        self.started = time.perf_counter()
        # perf_counter() moments for the optional trace's phases (0.0: not reached).
        self.admitted_at = 0.0
        self.settling_at = 0.0
        self.ts_ms = int(time.time() * 1000)
        self.ttfb_ms: int | None = None
        self.status = 200
        self.error_code: str | None = None
        self.upstream_id: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.units = 0
        self.cost_micros = 0
        self.usage_estimated = False
        # (upstream_id, route, its vetted form): the answer's metadata and the usage row
        # both ask, and the vetting (a regex, a search for each pool key) need run once.
        self._vetted: tuple[str, Route, str | None] | None = None

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)

    def mark_first_byte(self) -> None:
        if self.ttfb_ms is None:
            self.ttfb_ms = self.elapsed_ms()

    def safe_upstream_id(self) -> str | None:
        """The upstream's id if it is safe to show and store (never one holding a pool key)."""
        upstream_id, route = self.upstream_id, self.route
        if upstream_id is None or route is None:
            return None
        vetted = self._vetted
        if vetted is None or vetted[0] is not upstream_id or vetted[1] is not route:
            vetted = (upstream_id, route, route.provider.pool.redactor.safe_id(upstream_id))
            self._vetted = vetted
        return vetted[2]

    def metadata(self) -> dict[str, str]:
        """relay's ``metadata``: every value a string (the SDKs type it ``Dict[str, str]``)."""
        route = self.route
        provider = route.provider.name if route else ""
        return {
            "request_id": self.request_id,
            "cost": micros_to_usd(self.cost_micros),
            "cost_micros": str(self.cost_micros),
            "provider": provider,
            "provider_name": provider,
            "executed_model": route.upstream_model if route else "",
            "upstream_id": self.safe_upstream_id() or "",
        }

    def usage_view(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def headers(self) -> dict[str, str]:
        return {**self.id_headers(), "x-relay-cost-micros": str(self.cost_micros)}

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """``headers()`` as an ASGI header list, built directly for a billed answer."""
        request_id = self.request_id.encode("latin-1")
        raw = [(b"x-relay-request-id", request_id), (b"x-request-id", request_id)]
        if self.endpoint == "messages":
            raw.append((b"request-id", request_id))
        raw.append((b"x-relay-cost-micros", str(self.cost_micros).encode()))
        return raw

    def id_headers(self) -> dict[str, str]:
        """The request id under relay's name and the SDKs' (``_request_id`` reads these)."""
        headers = {"x-relay-request-id": self.request_id, "x-request-id": self.request_id}
        if self.endpoint == "messages":  # the anthropic SDK reads ``request-id``
            headers["request-id"] = self.request_id
        return headers

    def usage_record(self) -> UsageRecord:
        route = self.route
        return UsageRecord(
            request_id=self.request_id,
            ts_ms=self.ts_ms,
            endpoint=self.endpoint,
            status=self.status,
            account_id=self.principal.account_id,
            key_id=self.principal.key_id,
            model=self.model.name if self.model else None,
            provider=route.provider.name if route else None,
            upstream_model=route.upstream_model if route else None,
            upstream_request_id=self.safe_upstream_id(),
            error_code=self.error_code,
            stream=self.stream,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            cache_write_tokens=self.cache_write_tokens,
            units=self.units,
            cost_micros=self.cost_micros,
            usage_estimated=self.usage_estimated,
            latency_ms=self.elapsed_ms(),
            ttfb_ms=self.ttfb_ms,
        )
