"""Owners download their monthly usage archives; the export zip includes archived rows."""

from __future__ import annotations

import gzip
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from support_console import Browser, console_relay, create_user

from relay.usage.log import UsageRecord, insert_usage
from relay.usage.queries import DAY_MS
from relay.usage.retention import archive_dir_for, run_retention


async def test_an_owner_downloads_archives_and_the_export_includes_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, admin_token: str
) -> None:
    async with console_relay(monkeypatch, tmp_path) as relay:
        acme = await relay.create_account("acme")
        other = await relay.create_account("other")
        await create_user(relay, "owner@acme.test", account=acme["id"], role="owner")
        await create_user(relay, "owner@other.test", account=other["id"], role="owner")
        now = int(time.time() * 1000)
        old = [
            UsageRecord(f"req_old_{i}", now - 200 * DAY_MS + i, "chat", 200, account_id=acme["id"])
            for i in range(3)
        ]

        def seed(conn: object) -> None:
            for record in old:
                insert_usage(conn, record)  # type: ignore[arg-type]

        await relay.state.db.write(seed)
        folder = archive_dir_for(relay.state.config.database_path)
        report = await run_retention(relay.state.db, folder, now_ms=now)
        [name] = [n for n in report.archives_written if n.startswith("usage-")]
        async with Browser(relay) as owner:
            await owner.login("owner@acme.test")
            page = await owner.get(f"/console/a/{acme['id']}/archives")
            assert page.status_code == 200 and name in page.text
            download = await owner.get(f"/console/a/{acme['id']}/archives/{name}")
            assert download.status_code == 200
            rows = [json.loads(line) for line in gzip.decompress(download.content).splitlines()]
            assert sorted(r["request_id"] for r in rows) == ["req_old_0", "req_old_1", "req_old_2"]
            assert (
                await owner.get(f"/console/a/{acme['id']}/archives/../relay.db")
            ).status_code == 404
            exported = await owner.submit(
                f"/console/a/{acme['id']}/billing", f"/console/a/{acme['id']}/export"
            )
            assert exported.status_code == 200
            with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
                assert f"archives/{name}" in archive.namelist()
                packed = archive.read(f"archives/{name}")
            assert gzip.decompress(packed) == gzip.decompress(download.content)
        async with Browser(relay) as stranger:
            await stranger.login("owner@other.test")
            refused = await stranger.get(f"/console/a/{acme['id']}/archives/{name}")
            assert refused.status_code in (403, 404)
            own = await stranger.get(f"/console/a/{other['id']}/archives/{name}")
            assert own.status_code == 404  # not this account's file
