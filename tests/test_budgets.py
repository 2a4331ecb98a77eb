"""Budgets that reset on calendar boundaries (UTC): keys and accounts, day/week/month."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from conftest import config_text, make_config
from support_accounts import Relay, auth, chat_body, run_relay

from relay.cli.entry import main
from relay.errors import QuotaError
from relay.money.budget import BudgetCalendar
from relay.money.wallet import Wallet


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()) * 1000


class Clock:
    def __init__(self, start: str) -> None:
        self.now = ms(start)

    def __call__(self) -> int:
        return self.now

    def set(self, text: str) -> None:
        self.now = ms(text)


# ------------------------------------------------------------------------- the calendar


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-03-05T13:00:00", "2026-03-05T00:00:00", "2026-03-06T00:00:00"),
        ("week", "2026-03-05T13:00:00", "2026-03-02T00:00:00", "2026-03-09T00:00:00"),
        ("month", "2026-03-05T13:00:00", "2026-03-01T00:00:00", "2026-04-01T00:00:00"),
        ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("day", "2026-03-06T00:00:00", "2026-03-06T00:00:00", "2026-03-07T00:00:00"),
    ],
)
def test_default_calendar_periods(period: str, now: str, start: str, end: str) -> None:
    assert BudgetCalendar().bounds(period, ms(now)) == (ms(start), ms(end))  # type: ignore[arg-type]


def test_anchors_move_the_boundaries() -> None:
    calendar = BudgetCalendar(day_start_hour=6, week_start=6, month_start_day=15)
    now = ms("2026-03-05T05:00:00")  # a Thursday, before 06:00
    assert calendar.bounds("day", now) == (ms("2026-03-04T06:00:00"), ms("2026-03-05T06:00:00"))
    # Weeks start on Sunday at 06:00.
    assert calendar.bounds("week", now) == (ms("2026-03-01T06:00:00"), ms("2026-03-08T06:00:00"))
    assert calendar.bounds("month", now) == (ms("2026-02-15T06:00:00"), ms("2026-03-15T06:00:00"))


# ---------------------------------------------------------------------------- the wallet


def test_a_monthly_key_cap_resets_exactly_at_the_boundary() -> None:
    clock = Clock("2026-01-31T12:00:00")
    wallet = Wallet(lambda entry: None, wall_clock_ms=clock)
    wallet.load_account("a", mode="prepaid", credit_limit_micros=0, balance_micros=50_000_000)
    wallet.load_key("k", "a", spend_cap_micros=1_000_000, spent_micros=0)
    wallet.set_key_budget_period("k", "month")
    hold = wallet.hold("a", "k", estimate_micros=900_000, worst_case_micros=900_000)
    wallet.settle(hold, 900_000, reference="r1")
    with pytest.raises(QuotaError) as refused:
        wallet.hold("a", "k", estimate_micros=200_000, worst_case_micros=200_000)
    message = str(refused.value)
    assert "key monthly budget reached" in message
    assert "resets at 2026-02-01T00:00:00Z" in message
    clock.now = ms("2026-02-01T00:00:00") - 1  # one millisecond before: still refused
    with pytest.raises(QuotaError):
        wallet.hold("a", "k", estimate_micros=200_000, worst_case_micros=200_000)
    clock.set("2026-02-01T00:00:00")  # the boundary itself: a fresh month
    view = wallet.key_snapshot("k")
    assert view.period_spent_micros == 0 and view.spent_micros == 900_000
    assert view.resets_at_ms == ms("2026-03-01T00:00:00")
    hold = wallet.hold("a", "k", estimate_micros=200_000, worst_case_micros=200_000)
    wallet.settle(hold, 200_000, reference="r2")
    assert wallet.key_snapshot("k").period_spent_micros == 200_000


def test_a_lifetime_cap_never_resets() -> None:
    clock = Clock("2026-01-31T12:00:00")
    wallet = Wallet(lambda entry: None, wall_clock_ms=clock)
    wallet.load_account("a", mode="prepaid", credit_limit_micros=0, balance_micros=50_000_000)
    wallet.load_key("k", "a", spend_cap_micros=1_000_000, spent_micros=900_000)
    clock.set("2026-06-01T00:00:00")
    with pytest.raises(QuotaError, match="key spend cap reached"):
        wallet.hold("a", "k", estimate_micros=200_000, worst_case_micros=200_000)


def test_an_account_daily_budget_names_itself_and_its_reset() -> None:
    clock = Clock("2026-01-31T12:00:00")
    wallet = Wallet(lambda entry: None, wall_clock_ms=clock)
    wallet.load_account("a", mode="prepaid", credit_limit_micros=0, balance_micros=50_000_000)
    wallet.set_account_budget("a", 1_000_000, "day", spent_micros=5_000_000, period_spent_micros=0)
    hold = wallet.hold("a", None, estimate_micros=600_000, worst_case_micros=600_000)
    # In flight counts too: a second worst case that would cross the budget is refused.
    with pytest.raises(QuotaError) as refused:
        wallet.hold("a", None, estimate_micros=500_000, worst_case_micros=500_000)
    assert "account daily budget reached" in str(refused.value)
    assert "resets at 2026-02-01T00:00:00Z" in str(refused.value)
    wallet.settle(hold, 600_000, reference="r1")
    clock.set("2026-02-01T00:00:00")
    assert wallet.account_budget("a").spent_micros == 0
    wallet.hold("a", None, estimate_micros=900_000, worst_case_micros=900_000)


# ------------------------------------------------------------------- through the app

DEAR = """
[[models]]
name = "dear-gpt"
routes = ["mock:dear-gpt"]
input_usd_per_mtok = "20000"
output_usd_per_mtok = "20000"
max_output_tokens = 16
"""


async def _spend_until_refused(relay: Relay, secret: str) -> dict[str, object]:
    for _ in range(20):
        response = await relay.client.post(
            "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(secret)
        )
        if response.status_code == 402:
            error: dict[str, object] = response.json()["error"]
            return error
        assert response.status_code == 200, response.text
    raise AssertionError("the budget never refused")


async def test_key_budget_resets_at_the_month_boundary_and_survives_a_restart(
    tmp_path: Path, admin_token: str
) -> None:
    clock = Clock("2026-01-31T23:00:00")
    config = make_config(tmp_path, extra=DEAR)
    async with run_relay(config, wall_clock_ms=clock) as relay:
        _, key = await relay.funded_key(
            "acme", amount_usd="100", spend_cap_usd="1", budget_period="month"
        )
        assert key["budget_period"] == "month"
        assert key["budget_resets_at"] == "2026-02-01T00:00:00Z"
        error = await _spend_until_refused(relay, key["secret"])
        assert error["code"] == "insufficient_quota"
        assert "key monthly budget reached" in str(error["message"])
        assert "resets at 2026-02-01T00:00:00Z" in str(error["message"])
        shown = (await relay.client.get("/v1/key", headers=auth(key["secret"]))).json()
        assert shown["limits"]["budget_period"] == "month"
        spent_in_january = shown["period_spent_micros"]
        assert spent_in_january > 0 and shown["resets_at_ms"] == ms("2026-02-01T00:00:00")
    # A restart still in January rebuilds the month's spend from the ledger: still refused.
    async with run_relay(config, wall_clock_ms=clock) as relay:
        shown = (await relay.client.get("/v1/key", headers=auth(key["secret"]))).json()
        assert shown["period_spent_micros"] == spent_in_january
        refused = await relay.client.post(
            "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(key["secret"])
        )
        assert refused.status_code == 402
        clock.set("2026-02-01T00:00:00")
        ok = await relay.client.post(
            "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(key["secret"])
        )
        assert ok.status_code == 200, ok.text
        admin_view = (await relay.client.get(f"/admin/keys/{key['id']}")).json()
        assert admin_view["period_spent_micros"] == int(ok.headers["x-relay-cost-micros"])
        assert admin_view["spent_micros"] == spent_in_january + admin_view["period_spent_micros"]
        assert admin_view["budget_resets_at"] == "2026-03-01T00:00:00Z"


async def test_account_budget_through_the_admin_api(tmp_path: Path, admin_token: str) -> None:
    clock = Clock("2026-01-31T23:00:00")
    async with run_relay(make_config(tmp_path, extra=DEAR), wall_clock_ms=clock) as relay:
        account = await relay.create_account("acme", budget_usd="1", budget_period="week")
        assert account["budget_micros"] == 1_000_000 and account["budget_period"] == "week"
        assert account["budget_resets_at"] == "2026-02-02T00:00:00Z"  # Monday
        await relay.credit(account["id"], "100", "seed")
        key = await relay.create_key(account["id"])
        error = await _spend_until_refused(relay, key["secret"])
        assert "account weekly budget reached" in str(error["message"])
        # The key's own view names the account budget that refused it, and when it resets.
        shown = (await relay.client.get("/v1/key", headers=auth(key["secret"]))).json()
        budget = shown["account_budget"]
        assert budget["budget_micros"] == 1_000_000 and budget["budget_period"] == "week"
        assert budget["resets_at_ms"] == ms("2026-02-02T00:00:00")
        assert budget["spent_micros"] > 0
        assert budget["remaining_micros"] == 1_000_000 - budget["spent_micros"]
        # Lifting the budget binds the next request.
        changed = await relay.client.patch(
            f"/admin/accounts/{account['id']}", json={"budget_usd": "0"}
        )
        assert changed.status_code == 200 and changed.json()["budget_micros"] == 0
        shown = (await relay.client.get("/v1/key", headers=auth(key["secret"]))).json()
        assert shown["account_budget"] is None
        ok = await relay.client.post(
            "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(key["secret"])
        )
        assert ok.status_code == 200


async def test_cli_key_create_with_a_monthly_budget(
    tmp_path: Path, admin_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "relay.toml"
    config_file.write_text(config_text(tmp_path / "relay.db"))
    clock = Clock("2026-01-31T23:00:00")
    async with run_relay(make_config(tmp_path, extra=DEAR), wall_clock_ms=clock) as relay:
        account = await relay.create_account("acme")
        await relay.credit(account["id"], "100", "seed")
        argv = [
            "key", "create", "acme", "--name", "dev", "--spend-cap", "1",
            "--budget-period", "month", "--json", "-c", str(config_file), "--url", relay.base_url,
        ]  # fmt: skip
        assert await asyncio.to_thread(main, argv) == 0
        import json

        created = json.loads(capsys.readouterr().out)
        assert created["spend_cap_micros"] == 1_000_000 and created["budget_period"] == "month"
        assert created["secret"].startswith("rk_")
        # The acceptance line end to end: the CLI's key is capped for January, then the cap
        # resets at the month boundary (the injected clock crosses it).
        error = await _spend_until_refused(relay, created["secret"])
        assert "key monthly budget reached" in str(error["message"])
        clock.set("2026-02-01T00:00:00")
        ok = await relay.client.post(
            "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(created["secret"])
        )
        assert ok.status_code == 200, ok.text
        argv = ["key", "update", created["id"], "--budget-period", "lifetime", "--json"]
        argv += ["-c", str(config_file), "--url", relay.base_url]
        assert await asyncio.to_thread(main, argv) == 0
        assert json.loads(capsys.readouterr().out)["budget_period"] is None
