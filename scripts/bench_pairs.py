"""relay against relay-baseline, interleaved, for scripts/bench's "unchanged, ±5%" check.

Measured one after the other (every shape of relay, then minutes later every shape of the
baseline), the two would be compared at different moments of a shared, noisy machine: a
5% difference is within what the box itself drifts. So both run at once (idle but for the
shape under load) and each shape alternates between them, A B A B ... (``--rounds``
times each): a disturbance then lands on both, and the spread of each target's runs says
how far the verdict can be trusted.

``combine`` turns one target's runs of a shape into the row the tables print: the mean of
each figure, and the spread of req/s and of CPU per request, ``(max − min) / mean`` in %.
"""

from __future__ import annotations

from statistics import fmean
from typing import Any

__all__ = ["NOISE_PCT", "combine", "spread_pct", "verdict"]

# The comparison's own tolerance: a spread above it makes a "within 5%" verdict moot.
NOISE_PCT = 5.0
_MEANS = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "cpu_us_per_request",
    "cpu_pct",
    "core_rps",
    "others_on_cpu_pct",
    "rss_mb",
)


def spread_pct(values: list[float]) -> float | None:
    """(max − min) / mean in %, None for fewer than two values."""
    if len(values) < 2 or not fmean(values):
        return None
    return 100 * (max(values) - min(values)) / fmean(values)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of a target and shape from its interleaved runs (``measure``'s rows)."""
    row = dict(runs[0])
    for key in _MEANS:
        values = [run[key] for run in runs if run.get(key) is not None]
        row[key] = fmean(values) if values else None
    row["requests"] = sum(run["requests"] for run in runs)
    row["errors"] = sum(run["errors"] for run in runs)
    row["attempts"] = len(runs)
    row["rps_spread_pct"] = spread_pct([run["rps"] for run in runs])
    costs = [run["cpu_us_per_request"] for run in runs if run.get("cpu_us_per_request")]
    row["cpu_spread_pct"] = spread_pct(costs) if len(costs) == len(runs) else None
    row["runs"] = [
        {"rps": run["rps"], "cpu_us_per_request": run.get("cpu_us_per_request")} for run in runs
    ]
    row["wrk"] = [run["wrk"] for run in runs]
    return row


def verdict(speed: float | None, cost: float | None, spreads: list[float | None]) -> str:
    """Within ±5% (or better) of the baseline, and whether the runs' spread allows saying so."""
    kept = (speed is None or speed >= 0.95) and (cost is None or cost <= 1.05)
    noisy = [s for s in spreads if s is not None and s > NOISE_PCT]
    if noisy:
        # The box moved more than the margin: the ratio alone settles nothing.
        leaning = "yes" if kept else "no"
        return f"unsure: a spread of {max(noisy):.0f}% > {NOISE_PCT:.0f}% (the means say {leaning})"
    return "yes" if kept else "NO  <-- REGRESSED"
