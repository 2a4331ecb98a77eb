"""Jinja2 templates for the console, with the filters pages share (money, times).

Autoescaping is on for everything: user-given text (labels, ticket messages, names) is
always escaped. Money is shown exactly (integer micro-USD to a decimal string, never a
float), with at least cents.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import jinja2

from relay.identity.roles import Permission
from relay.money.pricing import micros_to_usd

__all__ = ["build_templates", "format_day", "format_time", "format_usd"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def format_usd(micros: int | None) -> str:
    """2_500_000 → "$2.50", 1234 → "$0.001234", -5_000_000 → "−$5.00"."""
    if micros is None:
        return "—"
    text = micros_to_usd(abs(micros))
    whole, _, fraction = text.partition(".")
    fraction = fraction.ljust(2, "0")
    return f"{'−' if micros < 0 else ''}${whole}.{fraction}"


def format_time(ms: int | None) -> str:
    if ms is None:
        return "—"
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_day(ms: int | None) -> str:
    if ms is None:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


def build_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = format_usd
    env.filters["time"] = format_time
    env.filters["day"] = format_day
    env.globals["perms"] = Permission
    return env
