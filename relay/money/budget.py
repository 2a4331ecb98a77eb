"""Spend budgets that reset on calendar boundaries (UTC): day, week or month.

A key's spend cap is lifetime unless it has a ``budget_period``; then the cap applies to
what the key spent since the current period began, and that spend drops to zero at the
boundary exactly: the wallet compares the wall clock with the period's end on each
admission, so there is no cron and no drift. Accounts may carry a budget of their own in
the same way. ``BudgetCalendar`` holds the configurable anchors (``[budgets]``).

A charge counts in the period in which it settles (the ledger row's ``created_at_ms``), so
the spend rebuilt from the ledger after a restart is the spend the wallet had.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

__all__ = [
    "BUDGET_PERIODS",
    "PERIOD_ADJECTIVES",
    "BudgetCalendar",
    "BudgetPeriod",
    "PeriodSpend",
    "iso_utc",
]

BudgetPeriod = Literal["day", "week", "month"]
BUDGET_PERIODS: tuple[BudgetPeriod, ...] = ("day", "week", "month")
# "monthly budget", and "lifetime" for a cap without a period.
PERIOD_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly", None: "lifetime"}
_DAY = dt.timedelta(days=1)


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 1000


def iso_utc(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class BudgetCalendar:
    """Where periods begin, in UTC: the hour of day, the weekday, the day of the month."""

    __slots__ = ("day_start_hour", "month_start_day", "week_start")

    def __init__(self, *, day_start_hour: int = 0, week_start: int = 0, month_start_day: int = 1):
        if not 0 <= day_start_hour <= 23:
            raise ValueError("day_start_hour must be 0..23")
        if not 0 <= week_start <= 6:
            raise ValueError("week_start must be 0 (Monday) .. 6 (Sunday)")
        if not 1 <= month_start_day <= 28:
            raise ValueError("month_start_day must be 1..28 (every month has it)")
        self.day_start_hour = day_start_hour
        self.week_start = week_start
        self.month_start_day = month_start_day

    def bounds(self, period: BudgetPeriod, now_ms: int) -> tuple[int, int]:
        """[start, end) of the period containing ``now_ms``, in unix milliseconds."""
        now = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
        day_start = now.replace(hour=self.day_start_hour, minute=0, second=0, microsecond=0)
        if day_start > now:
            day_start -= _DAY
        if period == "day":
            return _ms(day_start), _ms(day_start + _DAY)
        if period == "week":
            start = day_start - _DAY * ((day_start.weekday() - self.week_start) % 7)
            return _ms(start), _ms(start + 7 * _DAY)
        start = day_start.replace(day=self.month_start_day)
        if start > now:
            start = _add_months(start, -1)
        return _ms(start), _ms(_add_months(start, 1))


def _add_months(moment: dt.datetime, months: int) -> dt.datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1)


class PeriodSpend:
    """What was spent in the current period, rolled to zero when the period ends."""

    __slots__ = ("end_ms", "period", "spent", "start_ms")

    def __init__(self, period: BudgetPeriod, start_ms: int, end_ms: int, spent: int) -> None:
        self.period: BudgetPeriod = period
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.spent = spent

    @classmethod
    def starting(
        cls, calendar: BudgetCalendar, period: BudgetPeriod, now_ms: int, spent: int = 0
    ) -> PeriodSpend:
        start, end = calendar.bounds(period, now_ms)
        return cls(period, start, end, spent)

    def roll(self, calendar: BudgetCalendar, now_ms: int) -> None:
        if now_ms >= self.end_ms or now_ms < self.start_ms:
            self.start_ms, self.end_ms = calendar.bounds(self.period, now_ms)
            self.spent = 0
