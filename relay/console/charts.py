"""Server-rendered SVG charts: spend per day, and spend split by model or by key.

No script, no library. The SVG scales with its container (``viewBox``); colours and
fonts come from the stylesheet through classes, so the Content-Security-Policy needs no
inline styles. Every bar carries a ``<title>`` (a tooltip, and what screen readers
announce), the chart as a whole is an image labelled with its summary, and the pages
put the same figures in a table below it, which a keyboard reaches.

Day labels count back from the last day ("Today", then a week earlier, …), so the
newest bar always has its own label, centred under it. A period without spend shows a
sentence, not an axis of "$0.00".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from relay.money.display import format_usd as _format_usd

__all__ = [
    "bar_list_chart",
    "daily_spend_chart",
    "day_label",
    "format_usd",
    "model_spend_chart",
    "nice_ceiling",
]

_WIDTH = 720
_HEIGHT = 260
_LEFT = 96
_BOTTOM = 30
_TOP = 26  # room above the top axis label at phone type sizes
_DAY_MS = 86_400_000
_CENT = 10_000


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k that is at least ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def format_usd(micros: int) -> str:
    """The money formatter, escaped: "<$0.01" must not open a tag inside the SVG."""
    return escape(_format_usd(micros))


def day_label(day: int, fmt: str = "%b %d") -> str:
    return dt.datetime.fromtimestamp(day * _DAY_MS / 1000, tz=dt.UTC).strftime(fmt)


def _requests(count: int) -> str:
    return f"{count:,} request" + ("" if count == 1 else "s")


def _empty(text: str) -> Markup:
    return Markup(f'<p class="chart-empty">{escape(text)}</p>')


def daily_spend_chart(
    days: Sequence[tuple[int, int, int]], *, label: str, today: int | None = None
) -> Markup:
    """Vertical bars, one per ``(day number, cost_micros, requests)``, oldest first."""
    total = sum(cost for _, cost, _ in days)
    if not days or total == 0:
        return _empty("No spend in this period.")
    # The axis counts whole cents, so its labels never read "$0.00 / $0.00".
    top = nice_ceiling(-(-max(cost for _, cost, _ in days) // _CENT)) * _CENT
    plot_w, plot_h = _WIDTH - _LEFT - 8, _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(days)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="{escape(label)}: {format_usd(total)} in total">'
    ]
    ticks = (0, 0.5, 1) if (top // _CENT) % 2 == 0 else (0, 1)
    for fraction in ticks:
        y = _TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{_LEFT - 8}" y="{y + 5:.1f}" text-anchor="end">'
            f"{format_usd(int(top * fraction))}</text>"
        )
    last = len(days) - 1
    step = 7 if len(days) > 14 else (2 if len(days) > 7 else 1)
    for i, (day, cost, requests) in enumerate(days):
        height = plot_h * cost / top
        if cost and height < 1.5:
            height = 1.5  # a tiny spend stays visible
        centre = _LEFT + (i + 0.5) * slot
        tip = f"{day_label(day, '%Y-%m-%d')}: {format_usd(cost)}, {_requests(requests)}"
        parts.append(
            f'<rect class="bar" x="{centre - slot * 0.35:.1f}" y="{_TOP + plot_h - height:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{height:.1f}"><title>{tip}</title></rect>'
        )
        if (last - i) % step == 0:
            text = "Today" if day == today else day_label(day)
            # The newest label ends at the chart's edge (never clipped, however large the
            # phone's type); the others are centred under their bar.
            x, anchor = (_WIDTH - 2, "end") if i == last else (centre, "middle")
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{_HEIGHT - 8}" '
                f'text-anchor="{anchor}">{text}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_list_chart(rows: Sequence[tuple[str, int, int]], *, label: str) -> Markup:
    """Horizontal bars, one per ``(name, cost_micros, requests)``, costliest first.

    Each name sits above its bar, so long names never collide with the bars however
    narrow the screen.
    """
    rows = [row for row in rows if row[1] > 0]
    if not rows:
        return _empty("No spend in this period.")
    # Narrower than the day chart: it often sits in half a card, and its type must stay
    # readable when the SVG is scaled down.
    chart_w, row_h, value_w = 480, 70, 150
    height = len(rows) * row_h + 4
    top = max(cost for _, cost, _ in rows)
    bar_w = chart_w - value_w
    parts = [
        f'<svg class="chart" viewBox="0 0 {chart_w} {height}" role="img" '
        f'aria-label="{escape(label)}">'
    ]
    for i, (name, cost, requests) in enumerate(rows):
        y = i * row_h
        width = max(bar_w * cost / top, 2.0)
        parts.append(f'<text class="label" x="0" y="{y + 28}">{escape(name)}</text>')
        parts.append(
            f'<rect class="bar" x="0" y="{y + 38}" width="{width:.1f}" height="18">'
            f"<title>{escape(name)}: {format_usd(cost)}, {_requests(requests)}</title></rect>"
        )
        parts.append(
            f'<text class="value" x="{width + 8:.1f}" y="{y + 53}">{format_usd(cost)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def model_spend_chart(models: Sequence[tuple[str, int, int]], *, label: str) -> Markup:
    return bar_list_chart(models, label=label)
