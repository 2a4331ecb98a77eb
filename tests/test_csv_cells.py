"""CSV exports neutralise spreadsheet formulas (OWASP's CSV-injection rule) everywhere."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import make_config
from support_accounts import Relay, auth, chat_body, run_relay

from relay.csv_cells import csv_text, safe_cell

HOSTILE = "=cmd|' /C calc'!A0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+1+1", "'+1+1"),
        ("-1+1", "'-1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-1.25", "-1.25"),  # a negative amount stays a number
        ("-7", "-7"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        ("", ""),
        (-5, -5),
        (None, None),
    ],
)
def test_safe_cell_quotes_only_what_could_start_a_formula(value: object, expected: object) -> None:
    assert safe_cell(value) == expected


def test_csv_text_quotes_each_hostile_cell_and_keeps_csv_quoting() -> None:
    text = csv_text([["name", "note"], [HOSTILE, 'say "hi", then =2']])
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed == [["name", "note"], ["'" + HOSTILE, 'say "hi", then =2']]


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    async with run_relay(make_config(tmp_path)) as served:
        yield served


async def test_the_account_export_quotes_a_formula_key_name(relay: Relay) -> None:
    account = await relay.create_account("acme")
    assert (await relay.credit(account["id"], "5", "seed")).status_code == 201
    key = await relay.create_key(account["id"], HOSTILE)
    answer = await relay.client.post(
        "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
    )
    assert answer.status_code == 200, answer.text
    await relay.state.db.flush()
    export = await relay.client.get(f"/admin/accounts/{account['id']}/export")
    assert export.status_code == 200, export.text
    with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
        keys_csv = next(
            name for name in archive.namelist() if name.startswith("keys") and name.endswith(".csv")
        )
        cells = [
            cell for row in csv.reader(io.StringIO(archive.read(keys_csv).decode())) for cell in row
        ]
    assert "'" + HOSTILE in cells and HOSTILE not in cells
