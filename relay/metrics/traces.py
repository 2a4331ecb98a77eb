"""What the request flow hands a tracer when a request ends: its record and phase times.

Traces are optional (``[telemetry] otlp_endpoint`` and the ``otel`` extra). This module is
the seam the flow knows; it imports nothing of OpenTelemetry, so a relay without
``[telemetry]`` never loads it (``relay.metrics.otlp`` is imported only when configured).
The flow notes two ``time.perf_counter()`` moments per request (admitted, settling) and,
once the usage record exists, calls ``RequestTracer.trace``: the spans are built after
the fact from those times, so tracing adds nothing to the request's own path.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from relay.usage.log import UsageRecord

__all__ = ["PhaseTimes", "RequestTracer"]


class PhaseTimes(NamedTuple):
    """``time.perf_counter()`` moments of one request; 0.0 when it never got there."""

    started: float
    admitted: float
    settling: float
    ended: float


class RequestTracer(Protocol):
    def trace(self, record: UsageRecord, times: PhaseTimes) -> None: ...

    async def aclose(self) -> None: ...
