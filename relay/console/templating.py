"""Jinja2 templates for the console, with the filters pages share (money, times).

Autoescaping is on for everything: user-given text (labels, ticket messages, names) is
always escaped. Money goes through ``relay.money.display``: ``usd`` for balances and totals
(cents, thousands separators), ``usd_exact`` for per-request amounts.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import jinja2

from relay.identity.roles import Permission
from relay.money.display import format_usd, format_usd_exact

__all__ = ["build_templates", "format_day", "format_time", "format_usd", "format_usd_exact"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def format_time(ms: int | None) -> str:
    if ms is None:
        return "—"
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_day(ms: int | None) -> str:
    if ms is None:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


def format_day_number(day: int) -> str:
    """A UTC day number (days since 1970-01-01) as YYYY-MM-DD."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def build_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = format_usd
    env.filters["usd_exact"] = format_usd_exact
    env.filters["time"] = format_time
    env.filters["day"] = format_day
    env.filters["day_number"] = format_day_number
    env.globals["perms"] = Permission
    return env
