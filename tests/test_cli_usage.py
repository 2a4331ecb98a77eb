"""``relay usage`` and ``relay archives`` end to end: CLI → admin API → database."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import conftest
import pytest
from conftest import config_text, make_config, serve_relay

from relay.cli import entry as cli
from relay.cli.usage import Progress
from relay.usage.log import UsageRecord, insert_usage
from relay.usage.queries import DAY_MS
from relay.usage.retention import archive_dir_for, run_retention

MAY_1 = int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp() * 1000)


class Relay:
    def __init__(self, server: conftest.RelayServer, config_path: Path) -> None:
        self.server = server
        self.config_path = config_path

    async def run(self, *argv: str) -> int:
        """``relay ARGV --url ...`` in a thread: the server runs in this test's loop."""
        args = [*argv, "-c", str(self.config_path), "--url", self.server.base_url]
        return await asyncio.to_thread(cli.main, args)


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    config_path = tmp_path / "relay.toml"
    config_path.write_text(config_text(tmp_path / "relay.db"))
    async with serve_relay(make_config(tmp_path)) as server:
        created = await server.client.post("/admin/accounts", json={"name": "team-a"})
        account_id = created.json()["id"]
        records = [
            UsageRecord(
                request_id=f"req_{i}",
                ts_ms=MAY_1 + (i % 3) * DAY_MS + i,
                endpoint="chat",
                status=500 if i == 0 else 200,
                account_id=account_id if i % 2 else None,
                key_id="key_1",
                model="gpt" if i < 6 else "claude",
                prompt_tokens=10,
                completion_tokens=2,
                cost_micros=1500,
                latency_ms=100 + i,
            )
            for i in range(9)
        ]

        def seed(conn: sqlite3.Connection) -> None:
            for record in records:
                insert_usage(conn, record)

        await server.state.db.write(seed)
        yield Relay(server, config_path)


async def test_summary_by_model(relay: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    code = await relay.run(
        "usage", "summary", "--by", "model", "--since", "2024-05-01", "--until", "2024-05-31",
        "--json",
    )  # fmt: skip
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    groups = {g["group"]: g for g in answer["data"]}
    assert groups["gpt"]["requests"] == 6 and groups["claude"]["requests"] == 3
    assert groups["gpt"]["errors"] == 1 and groups["gpt"]["cost_usd"] == "0.009"
    assert (groups["claude"]["p50_latency_ms"], groups["claude"]["p95_latency_ms"]) == (107, 108)

    assert await relay.run("usage", "summary", "--account", "team-a", "--since", "2024-05-01") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["DAY", "REQUESTS", "TOKENS"]
    days = [line.split()[:2] for line in table[1:]]
    assert days == [["2024-05-01", "1"], ["2024-05-02", "2"], ["2024-05-03", "1"]]


async def test_unknown_account_is_a_one_line_error(
    relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await relay.run("usage", "summary", "--account", "nobody") == 1
    assert capsys.readouterr().err.strip() == "relay: No account 'nobody'"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_export_month_matches_the_rows(relay: Relay, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"may.{fmt}"
    code = await relay.run("usage", "export", "--month", "2024-05", "--format", fmt, "-o", str(out))
    assert code == 0
    rows = sorted(await relay.server.usage_rows(), key=lambda r: (r["ts_ms"], r["id"]))
    text = out.read_text()
    if fmt == "jsonl":
        assert [json.loads(line) for line in text.splitlines()] == rows
    else:
        lines = text.splitlines()
        assert lines[0].split(",")[:3] == ["id", "request_id", "ts_ms"]
        assert [line.split(",")[1] for line in lines[1:]] == [r["request_id"] for r in rows]
    assert not (tmp_path / f"may.{fmt}.part").exists()


async def test_export_of_one_account_to_stdout(
    relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await relay.run("usage", "export", "--month", "2024-05", "--account", "team-a",
                           "--format", "jsonl", "-o", "-") == 0  # fmt: skip
    captured = capsys.readouterr()
    exported = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["request_id"] for row in exported] == ["req_3", "req_1", "req_7", "req_5"]


async def test_archives_list_and_verified_download(
    relay: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = relay.server.state
    folder = archive_dir_for(state.config.database_path)
    report = await run_retention(state.db, folder, now_ms=MAY_1 + 200 * DAY_MS)
    assert report.usage_rows_archived == 9

    assert await relay.run("archives", "list", "--kind", "usage", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {item["account"] for item in listed} == {None, state.store.account("team-a").id}
    item = next(i for i in listed if i["account"] is not None)
    assert item["month"] == "2024-05" and item["rows"] == 4

    target = tmp_path / "copy.jsonl.gz"
    assert await relay.run("archives", "download", item["name"], "-o", str(target)) == 0
    data = target.read_bytes()
    assert hashlib.sha256(data).hexdigest() == item["sha256"] and len(data) == item["bytes"]
    assert len(gzip.decompress(data).splitlines()) == 4
    assert "SHA-256 verified" in capsys.readouterr().out

    (folder / item["name"]).write_bytes(b"tampered")
    assert await relay.run("archives", "download", item["name"], "-o", str(target) + "2") == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert not Path(str(target) + "2").exists()

    # Only names the archives table knows are served: never another file of the folder.
    for name in ("../relay.db", "relay.db"):
        assert await relay.run("archives", "download", name, "-o", str(tmp_path / "x")) == 1
        assert capsys.readouterr().err.startswith("relay: No ")
    assert not (tmp_path / "x").exists()


def test_progress_line_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown, hidden = Terminal(), io.StringIO()
    for stream in (shown, hidden):
        progress = Progress(stream, "rows", 10)
        progress.update(3, force=True)
        progress.finish(10)
    assert shown.getvalue() == "\r3 of 10 rows\r10 of 10 rows\n"
    assert hidden.getvalue() == ""
