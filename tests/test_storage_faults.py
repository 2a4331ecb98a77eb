"""Storage faults on a real `relay serve` process with a real SQLite file (issue 13).

Each test drives bounded load (~100 req/s, at most 64 at once, 127.0.0.1 only) against
a relay subprocess and the fast mock upstream, breaks the storage the way an operator's
bad day would, and then checks what must hold whatever happened:

* every request answered 200 has its usage row (and its charge when it cost anything);
* each account's balance shown by the admin API equals the sum of its ledger rows, with
  nothing held once idle;
* ``PRAGMA integrity_check`` passes;
* SIGTERM ends the process within the grace period + 5 s.

The faults: another connection holding the write lock past ``busy_timeout``; a full disk
(a small tmpfs, then space returns); a file system turned read-only under relay (an ext4
loop image whose error handling remounts it read-only); SIGTERM with requests past the
grace period; SIGKILL rounds with a fixed, printed seed. Mounting needs root (this box's
tests run as root); the whole file takes about two minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import mock_upstream
from test_durability import RelayProcess, Site, check_live_wallets, check_stored_invariants

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

GRACE_S = 3.0
STALL_S = 1.0
RATE_PER_S = 100
MAX_IN_FLIGHT = 64
SEED = 1313  # SIGKILL rounds: fixed, and printed, so a failure can be replayed

MODELS = """
[[providers]]
name = "fake"
kind = "openai"
base_url = "{upstream}"
api_keys = ["faults-upstream-key"]
timeout_s = 60
idle_timeout_s = 60

[[models]]
name = "fake-gpt"
routes = ["fake:gpt-4o-mini"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or loop needs root")


def _admin() -> dict[str, str]:
    from conftest import ADMIN_TOKEN

    return {"authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class FaultSite(Site):
    """A Site whose database may live elsewhere (a small tmpfs, a loop image)."""

    data_dir: Path | None = None
    extra_models: str = ""
    upstream: Any = None  # the mock upstream server (its ``stats``)

    @property
    def database(self) -> Path:
        return (self.data_dir or self.folder) / "relay.db"

    def write_config(self, port: int) -> Path:
        config = self.folder / "relay.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\ndatabase = "{self.database}"\n'
            f"flush_interval_ms = 50\nshutdown_grace_s = {GRACE_S}\n"
            f"storage_stall_s = {STALL_S}\n"
            + MODELS.format(upstream=self.upstream_url)
            + self.extra_models
        )
        return config


@contextlib.asynccontextmanager
async def fault_site(
    tmp_path: Path, options: Any, data_dir: Path | None = None, extra_models: str = ""
) -> AsyncIterator[FaultSite]:
    upstream = await mock_upstream.start(port=0, options=options)
    site = FaultSite(
        tmp_path,
        f"http://127.0.0.1:{upstream.port}/v1",
        data_dir=data_dir,
        extra_models=extra_models,
        upstream=upstream,
    )
    try:
        yield site
    finally:
        site.stop_all()
        await upstream.close()


# ------------------------------------------------------------------------------ accounts


async def funded(relay: RelayProcess, name: str, usd: str = "100") -> tuple[str, str]:
    async with relay.client() as client:
        account = await client.post("/admin/accounts", json={"name": name}, headers=_admin())
        assert account.status_code == 201, account.text
        account_id = account.json()["id"]
        credit = await client.post(
            f"/admin/accounts/{account_id}/credits",
            json={"amount_usd": usd, "reference": f"seed-{name}"},
            headers=_admin(),
        )
        assert credit.status_code == 201, credit.text
        key = await client.post(
            f"/admin/accounts/{account_id}/keys", json={"name": "load"}, headers=_admin()
        )
        assert key.status_code == 201, key.text
        return account_id, key.json()["secret"]


async def top_up(relay: RelayProcess, account_id: str, reference: str) -> int:
    """A $10 top-up; its HTTP status (0 when the connection failed)."""
    async with relay.client(timeout=30.0) as client:
        try:
            response = await client.post(
                f"/admin/accounts/{account_id}/credits",
                json={"amount_usd": "10", "reference": reference},
                headers=_admin(),
            )
        except httpx.HTTPError:
            return 0
        return response.status_code


# ------------------------------------------------------------------------------ the load


@dataclass
class Answer:
    status: int
    code: str | None
    request_id: str | None
    started: float
    body: bytes = b""
    finished: float = 0.0


@dataclass
class Load:
    """Paced requests (``RATE_PER_S``, at most ``MAX_IN_FLIGHT`` at once) until stopped."""

    relay: RelayProcess
    secrets: list[str]
    answers: list[Answer] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    body: dict[str, Any] = field(
        default_factory=lambda: {
            "model": "fake-gpt",
            "messages": [{"role": "user", "content": "storage faults"}],
            "max_tokens": 32,
        }
    )

    async def run(self) -> None:
        gate = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        async with self.relay.client(timeout=30.0) as client:
            n = 0
            while not self.stop.is_set():
                await gate.acquire()
                task = asyncio.create_task(self._one(client, self.secrets[n % len(self.secrets)]))
                task.add_done_callback(lambda _: gate.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                await asyncio.sleep(1 / RATE_PER_S)
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, secret: str) -> None:
        started = time.monotonic()
        try:
            response = await client.post(
                "/v1/chat/completions",
                json=self.body,
                headers={"authorization": f"Bearer {secret}"},
            )
        except httpx.HTTPError:
            self.answers.append(Answer(0, None, None, started))
            return
        code = None
        if response.status_code != 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                code = response.json()["error"]["code"]
        request_id = response.headers.get("x-relay-request-id")
        answer = Answer(response.status_code, code, request_id, started)
        answer.finished = time.monotonic()
        self.answers.append(answer)

    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]


async def wait_healthy(relay: RelayProcess, timeout_s: float) -> float:
    """Seconds until /healthz answered 200."""
    started = time.monotonic()
    async with relay.client(timeout=2.0) as client:
        while time.monotonic() - started < timeout_s:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.02)
    raise AssertionError(f"relay did not recover within {timeout_s} s")


async def healthz(relay: RelayProcess) -> httpx.Response:
    async with relay.client(timeout=2.0) as client:
        return await client.get("/healthz")


# ------------------------------------------------------------------------------ the checks


def stored(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [tuple(row) for row in conn.execute(sql, params)]


async def committed(path: Path, request_ids: list[str | None], timeout_s: float) -> None:
    """Wait until every one of ``request_ids`` has its usage row committed in the file."""
    wanted = set(request_ids)
    assert None not in wanted
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await asyncio.to_thread(stored, path, "SELECT request_id FROM usage")
        if wanted <= {row[0] for row in rows}:
            return
        assert time.monotonic() < deadline, "answered requests not committed"
        await asyncio.sleep(0.02)


def check_answered_are_recorded(path: Path, answers: list[Answer]) -> None:
    ok = {a.request_id for a in answers if a.status == 200}
    assert None not in ok
    rows = {r[0]: r[1:] for r in stored(path, "SELECT request_id, status, cost_micros FROM usage")}
    missing = sorted(str(r) for r in ok - set(rows))
    assert missing == [], f"{len(missing)} answered requests have no usage row"
    charged = {r[0] for r in stored(path, "SELECT request_id FROM ledger WHERE kind = 'charge'")}
    assert {r for r in ok if rows[r][1] > 0} <= charged


async def check_idle(relay: RelayProcess, path: Path) -> None:
    """Idle and drained: API balance = ledger sum, nothing held, for every account."""
    await asyncio.sleep(0.3)  # past one flush interval: the file has caught up
    await check_live_wallets(relay, path, SEED)


async def sigterm(relay: RelayProcess) -> tuple[int, float]:
    relay.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = await relay.exit_code(GRACE_S + 5)
    return code, time.monotonic() - started


class OutsideLock:
    """Another connection (as another process would) holding BEGIN IMMEDIATE."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.locked = threading.Event()
        self.released_at = 0.0
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        conn.execute("BEGIN IMMEDIATE")
        self.locked.set()
        time.sleep(self.seconds)
        conn.execute("ROLLBACK")
        self.released_at = time.monotonic()
        conn.close()


# ------------------------------------------------------------------------------ the faults


async def test_outside_write_lock_past_busy_timeout(tmp_path: Path) -> None:
    options = mock_upstream.MockOptions(latency_ms=5)
    async with fault_site(tmp_path, options) as site:
        relay = await site.start()
        accounts = [await funded(relay, f"lock-{i}") for i in range(2)]
        load = Load(relay, [secret for _, secret in accounts])
        running = asyncio.create_task(load.run())
        await asyncio.sleep(1.0)
        lock = OutsideLock(site.database, 8.0)  # past the writer's 5 s busy_timeout
        lock.thread.start()
        await asyncio.to_thread(lock.locked.wait, 5)
        locked_at = time.monotonic()
        await asyncio.sleep(0.5)
        topup = asyncio.create_task(top_up(relay, accounts[0][0], "during-lock"))
        await asyncio.sleep(STALL_S + 1.0)
        during = await healthz(relay)
        await asyncio.to_thread(lock.thread.join)
        recovered_in = await wait_healthy(relay, 10)
        await asyncio.sleep(1.0)
        load.stop.set()
        await running
        topup_status = await topup

        assert during.status_code == 503 and "storage" in during.json()["reason"]
        statuses = {(a.status, a.code) for a in load.answers}
        assert statuses <= {(200, None), (503, "storage_unavailable")}, statuses
        refused = [a for a in load.answers if a.status == 503]
        assert refused and len(load.ok()) > 20
        # No request admitted while the lock was known: every 503 came during the stall.
        assert all(locked_at < a.started < lock.released_at + 1.0 for a in refused)
        assert recovered_in < 1.5, recovered_in
        await check_idle(relay, site.database)
        credited = stored(site.database, "SELECT 1 FROM ledger WHERE reference = 'during-lock'")
        # A top-up during the lock either committed (and counts) or changed nothing.
        assert (topup_status, len(credited)) in {(201, 1), (503, 0)}, topup_status
        code, took = await sigterm(relay)
    assert code == 0 and took < GRACE_S + 5, (code, took)
    check_answered_are_recorded(site.database, load.answers)
    check_stored_invariants(site.database, SEED)
    print(
        f"lock: {len(load.ok())} answered 200, {len(refused)} refused 503, "
        f"recovered {recovered_in:.2f} s after release, top-up {topup_status}"
    )


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Take every free byte of the file system holding ``path`` (unbuffered writes)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


@needs_root
async def test_disk_full_fails_closed_and_recovers_when_space_returns(tmp_path: Path) -> None:
    options = mock_upstream.MockOptions(latency_ms=5)
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        async with fault_site(tmp_path, options, data_dir=disk) as site:
            relay = await site.start()
            accounts = [await funded(relay, f"full-{i}") for i in range(2)]
            filler = fill(disk)
            load = Load(relay, [secret for _, secret in accounts])
            running = asyncio.create_task(load.run())
            await asyncio.sleep(3.0)
            during = await healthz(relay)
            filler.unlink()  # space returns
            freed_at = time.monotonic()
            recovered_in = await wait_healthy(relay, 10)
            await asyncio.sleep(1.0)
            load.stop.set()
            await running

            assert during.status_code == 503, during.text
            assert "SQLITE_FULL" in during.json()["reason"]
            statuses = {(a.status, a.code) for a in load.answers}
            assert statuses <= {(200, None), (503, "storage_unavailable")}, statuses
            assert any(a.status == 503 for a in load.answers)
            assert any(a.status == 200 and a.started > freed_at for a in load.answers)
            assert recovered_in < 1.5, recovered_in
            await check_idle(relay, site.database)
            code, took = await sigterm(relay)
        assert code == 0 and took < GRACE_S + 5, (code, took)
        check_answered_are_recorded(site.database, load.answers)
        check_stored_invariants(site.database, SEED)
    refused = sum(a.status == 503 for a in load.answers)
    print(f"disk full: {len(load.ok())} answered 200 (all recorded), {refused} refused 503")


@contextlib.contextmanager
def ext4_loop(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An ext4 image that turns itself read-only on error (``errors=remount-ro``)."""
    image, mountpoint = tmp_path / "ext4.img", tmp_path / "ro"
    mountpoint.mkdir()
    with image.open("wb") as out:
        out.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", "-o", "errors=remount-ro", device, str(mountpoint)], check=True)
        yield mountpoint, device
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def turn_read_only(device: str) -> None:
    # The kernel's own "this file system has an error" path: ext4 remounts it read-only.
    Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("relay fault test")


def repair_and_remount(device: str, mountpoint: Path) -> None:
    subprocess.run(["umount", str(mountpoint)], check=True)
    subprocess.run(["e2fsck", "-f", "-y", device], check=False, capture_output=True)
    subprocess.run(["mount", device, str(mountpoint)], check=True)


@needs_root
async def test_read_only_filesystem_fails_closed_and_shutdown_finishes(tmp_path: Path) -> None:
    options = mock_upstream.MockOptions(latency_ms=5)
    with ext4_loop(tmp_path) as (mountpoint, device):
        async with fault_site(tmp_path, options, data_dir=mountpoint) as site:
            relay = await site.start()
            accounts = [await funded(relay, f"ro-{i}") for i in range(2)]
            load = Load(relay, [secret for _, secret in accounts])
            running = asyncio.create_task(load.run())
            await asyncio.sleep(2.0)
            # What was committed up to now reaches the disk (as it would long before a real
            # failure); what was committed after is in the page cache a broken fs drops.
            # A 200's usage row commits with a later group commit (flush_interval_ms plus
            # the commit, longer on a loaded box): wait until the file shows every 200
            # answered so far, rather than assume how long that takes.
            before = [a.request_id for a in load.ok()]
            await committed(site.database, before, timeout_s=10.0)
            os.sync()
            turn_read_only(device)
            broke_at = time.monotonic()
            await asyncio.sleep(2.0)
            during = await healthz(relay)
            load.stop.set()
            await running
            code, took = await sigterm(relay)

            assert during.status_code == 503 and "storage" in during.json()["reason"]
            statuses = {(a.status, a.code) for a in load.answers}
            assert statuses <= {(200, None), (503, "storage_unavailable")}, statuses
            first_refusal = min(a.finished for a in load.answers if a.status == 503)
            # Once relay knew, it admitted nothing more: no 200 sent after the first 503.
            assert not [a for a in load.ok() if a.started > first_refusal]
            detected_in = min(a.started for a in load.answers if a.status == 503) - broke_at
            # Shutdown finishes, non-zero: what could not be written is reported, not hung on.
            assert code != 0 and took < GRACE_S + 5, (code, took)
            assert "could not commit" in site.log.read_text()

            repair_and_remount(device, mountpoint)
            restarted = await site.start()
            await check_idle(restarted, site.database)
            code, _ = await sigterm(restarted)
            assert code == 0
        check_stored_invariants(site.database, SEED)
        recorded = {r[0] for r in stored(site.database, "SELECT request_id FROM usage")}
        # Answered, and committed, before the sync: on disk whatever broke after.
        assert before
        assert all(request_id in recorded for request_id in before)
        lost = [a for a in load.ok() if a.request_id not in recorded]
    print(
        f"read-only: detected {detected_in:.3f} s after the fs broke, stopped {took:.2f} s"
        f" after SIGTERM; {len(load.ok())} "
        f"answered 200, {len(lost)} of them (committed after the last sync, or in flight when "
        "it broke) not recorded"
    )


SLOW_MODELS = """
[[providers]]
name = "slow"
kind = "openai"
base_url = "{slow}"
api_keys = ["slow-upstream-key"]
timeout_s = 60

[[models]]
name = "slow-gpt"
routes = ["slow:gpt-4o-mini"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"
"""


async def test_sigterm_cuts_requests_past_the_grace_with_answers_and_rows(
    tmp_path: Path,
) -> None:
    # "fake" streams slowly (200 chunks, 50 ms apart); "slow" answers after 30 s.
    streams = mock_upstream.MockOptions(stream_chunks=200, chunk_delay_ms=50)
    slow = await mock_upstream.start(port=0, options=mock_upstream.MockOptions(latency_ms=30_000))
    extra = SLOW_MODELS.format(slow=f"http://127.0.0.1:{slow.port}/v1")
    try:
        async with fault_site(tmp_path, streams, extra_models=extra) as site:
            relay = await site.start()
            account_id, secret = await funded(relay, "cut")
            headers = {"authorization": f"Bearer {secret}"}

            async def call(model: str, stream: bool) -> Answer:
                body = {"model": model, "messages": [{"role": "user", "content": "x"}]}
                if stream:
                    body["stream"] = True
                async with relay.client(timeout=30.0) as client:
                    response = await client.post("/v1/chat/completions", json=body, headers=headers)
                return Answer(
                    response.status_code,
                    None,
                    response.headers.get("x-relay-request-id"),
                    0.0,
                    response.content,
                )

            calls = [asyncio.create_task(call("slow-gpt", False)) for _ in range(5)]
            calls += [asyncio.create_task(call("fake-gpt", True)) for _ in range(5)]
            deadline = time.monotonic() + 10
            while (slow.stats.in_flight, site.upstream.stats.in_flight) != (5, 5):
                assert time.monotonic() < deadline, "the requests reached the upstreams"
                await asyncio.sleep(0.02)
            code, took = await sigterm(relay)
            answers = await asyncio.gather(*calls)
        assert code == 0 and GRACE_S <= took < GRACE_S + 5, (code, took)
        plain, streamed = answers[:5], answers[5:]
        for answer in plain:
            assert answer.status == 503
            assert b'"code":"server_shutdown"' in answer.body
        for answer in streamed:
            assert answer.status == 200
            events = [e for e in answer.body.split(b"\n\n") if e.strip()]
            assert events[-1] == b"data: [DONE]"
            assert b'"code":"server_shutdown"' in events[-2]
        rows = stored(
            site.database, "SELECT status, error_code, stream FROM usage WHERE key_id IS NOT NULL"
        )
        assert sorted(rows) == [(503, "server_shutdown", 0)] * 5 + [(503, "server_shutdown", 1)] * 5
        check_stored_invariants(site.database, SEED)
        async with fault_site(tmp_path, streams) as again:
            restarted = await again.start()
            await check_idle(restarted, again.database)
            assert (await sigterm(restarted))[0] == 0
    finally:
        await slow.close()


async def test_sigkill_rounds_with_a_fixed_seed(tmp_path: Path) -> None:
    print(f"SIGKILL rounds: seed {SEED}")
    rng = random.Random(SEED)
    options = mock_upstream.MockOptions(latency_ms=5, stream_chunks=5, chunk_delay_ms=5)
    acknowledged: list[str] = []
    async with fault_site(tmp_path, options) as site:
        relay = await site.start()
        accounts = [await funded(relay, f"kill-{i}") for i in range(2)]
        for round_ in range(4):
            if round_:
                relay = await site.start()
                await check_idle(relay, site.database)
            load = Load(relay, [secret for _, secret in accounts])
            running = asyncio.create_task(load.run())
            reference = f"kill-{round_}"
            credit = asyncio.create_task(top_up(relay, rng.choice(accounts)[0], reference))
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            relay.process.kill()
            load.stop.set()
            await running
            assert await relay.exit_code(5) == -signal.SIGKILL
            if await credit == 201:
                acknowledged.append(reference)
            check_stored_invariants(site.database, SEED)
            credits = {r[0] for r in stored(site.database, "SELECT reference FROM ledger")}
            assert set(acknowledged) <= credits, SEED
        relay = await site.start()
        await check_idle(relay, site.database)
        code, took = await sigterm(relay)
    assert code == 0 and took < GRACE_S + 5
