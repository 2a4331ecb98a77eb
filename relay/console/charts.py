"""Server-rendered SVG charts: spend per day and spend by model. No script, no library.

The SVG scales with its container (``viewBox``); colours and fonts come from the
stylesheet through classes, so the Content-Security-Policy needs no inline styles.
Every bar carries a ``<title>`` (a tooltip, and what screen readers announce), and the
chart as a whole is an image labelled with its summary.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from relay.console.templating import format_usd

__all__ = ["daily_spend_chart", "model_spend_chart", "nice_ceiling"]

_WIDTH = 720
_HEIGHT = 220
_LEFT = 100
_BOTTOM = 26
_TOP = 10
_DAY_MS = 86_400_000


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k that is at least ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _day_label(day: int, fmt: str) -> str:
    return dt.datetime.fromtimestamp(day * _DAY_MS / 1000, tz=dt.UTC).strftime(fmt)


def daily_spend_chart(days: Sequence[tuple[int, int, int]], *, label: str) -> Markup:
    """Vertical bars, one per ``(day number, cost_micros, requests)``."""
    top = nice_ceiling(max((cost for _, cost, _ in days), default=0))
    plot_w, plot_h = _WIDTH - _LEFT - 8, _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(1, len(days))
    total = sum(cost for _, cost, _ in days)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="{escape(label)}: {format_usd(total)} in total">'
    ]
    for fraction in (0, 0.5, 1):
        y = _TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{format_usd(int(top * fraction))}</text>"
        )
    for i, (day, cost, requests) in enumerate(days):
        height = plot_h * cost / top
        x = _LEFT + i * slot + slot * 0.15
        tip = f"{_day_label(day, '%Y-%m-%d')}: {format_usd(cost)}, {requests} requests"
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{_TOP + plot_h - height:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{max(height, 0.0):.1f}"><title>{tip}</title></rect>'
        )
        # A label every week, and on the last day unless it would touch the week's label.
        if i % 7 == 0 or (i == len(days) - 1 and i % 7 >= 4):
            parts.append(
                f'<text class="axis" x="{x + slot * 0.35:.1f}" y="{_HEIGHT - 8}" '
                f'text-anchor="middle">{_day_label(day, "%b %d")}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def model_spend_chart(models: Sequence[tuple[str, int, int]], *, label: str) -> Markup:
    """Horizontal bars, one per ``(model, cost_micros, requests)``, costliest first.

    Each model's name sits above its bar, so long names never collide with the bars
    however narrow the screen.
    """
    row_h, value_w = 58, 170
    height = max(1, len(models)) * row_h + 4
    top = max((cost for _, cost, _ in models), default=0) or 1
    bar_w = _WIDTH - value_w
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="{escape(label)}">'
    ]
    if not models:
        parts.append('<text class="axis" x="0" y="20">No spend in this period</text>')
    for i, (model, cost, requests) in enumerate(models):
        y = i * row_h
        width = max(bar_w * cost / top, 1.0)
        parts.append(f'<text class="label" x="0" y="{y + 24}">{escape(model)}</text>')
        parts.append(
            f'<rect class="bar" x="0" y="{y + 32}" width="{width:.1f}" height="16">'
            f"<title>{escape(model)}: {format_usd(cost)}, {requests} requests</title></rect>"
        )
        parts.append(
            f'<text class="value" x="{width + 8:.1f}" y="{y + 45}">{format_usd(cost)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
