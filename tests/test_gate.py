"""relay.admission.gate: the account × key price multiplier."""

from __future__ import annotations

from decimal import Decimal

import pytest

from relay.admission.gate import Gate
from relay.admission.limits import RateLimiter
from relay.identity.accounts import Account, ApiKey
from relay.identity.auth import ADMIN, Principal
from relay.money.pricing import ONE
from relay.money.wallet import Wallet


def _principal(account_multiplier: str, key_multiplier: str) -> Principal:
    account = Account(id="acc", name="acme", price_multiplier=account_multiplier)
    key = ApiKey(
        id="key", account_id="acc", label="k", last4="abcd", price_multiplier=key_multiplier
    )
    return Principal("key", key, account)


@pytest.fixture
def gate() -> Gate:
    return Gate(Wallet(lambda entry: None), RateLimiter())


@pytest.mark.parametrize(
    ("account", "key", "expected"),
    [("0.5", "1", Decimal("0.5")), ("0.8", "1.25", Decimal("1")), ("3", "0.5", Decimal("1.5"))],
)
def test_the_multiplier_is_the_product_of_the_account_and_key(
    gate: Gate, account: str, key: str, expected: Decimal
) -> None:
    assert gate.multiplier(_principal(account, key)) == expected
    assert gate.multiplier(_principal(account, key)) == expected  # the cached product


def test_a_product_of_one_is_pricing_s_no_multiplier(gate: Gate) -> None:
    # Pricing skips all Decimal arithmetic for ``ONE`` itself (an identity check).
    assert gate.multiplier(_principal("1", "1")) is ONE
    assert gate.multiplier(_principal("0.8", "1.25")) is ONE
    assert gate.multiplier(ADMIN) is ONE


def test_a_changed_multiplier_is_priced_at_once(gate: Gate) -> None:
    assert gate.multiplier(_principal("1", "1")) is ONE
    assert gate.multiplier(_principal("2", "1")) == Decimal(2)
