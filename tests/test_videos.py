"""System tests of ``/v1/videos`` jobs and ``relay.jobs.video.VideoPoller``.

Jobs run on the ``mock`` provider (progress simulated from the clock, so they survive a
restart) or on a scripted OpenAI-compatible fake (``FakeUpstream``). Checked: the hold a
job keeps while it runs, exactly one settlement at the right cost, failures releasing
the hold, owner-only visibility, content streaming, and a restart in the middle of a job.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from conftest import FakeUpstream, SeenRequest, error_reply, json_reply, make_config
from support_accounts import Relay, auth, run_relay

from relay.api.videos import video_poller
from relay.config import Config, ProviderConfig
from relay.errors import NoUpstreamAvailable
from relay.jobs.video import VideoPoller
from relay.jobs.video_store import EmbeddedVideoStore
from relay.money.pricing import micros_to_usd
from relay.money.wallet import Wallet
from relay.storage.db import Database
from relay.upstream.client import UpstreamClient
from relay.upstream.providers import ClientFactory
from relay.upstream.providers.mock import MockUpstream

POLL_INTERVAL_S = 0.05
PRICE_PER_SECOND_MICROS = 100_000
MP4_START = b"\x00\x00\x00\x18ftypmp42"
VIDEOS = """
[[models]]
name = "mock-video"
kind = "video"
routes = ["mock:mock-video"]
usd_per_video_second = "0.10"

[[providers]]
name = "vids"
kind = "openai"
base_url = "http://vids.test/v1"
api_keys = ["vids-key"]
max_attempts = 1

[[models]]
name = "sora"
kind = "video"
routes = ["vids:sora-2"]
usd_per_video_second = "0.10"
"""


def queued_video(seen: SeenRequest) -> httpx.Response:
    """The fake upstream: creates job "vid_1"; later handlers script its status."""
    return json_reply(
        200, json.dumps({"id": "vid_1", "object": "video", "status": "queued"}).encode()
    )


def client_factory(upstream: FakeUpstream, render_s: float) -> ClientFactory:
    def build(config: ProviderConfig) -> UpstreamClient:
        if config.kind == "mock":
            return MockUpstream(config, video_render_s=render_s)
        return upstream.client()

    return build


@dataclass
class Setup:
    relay: Relay
    upstream: FakeUpstream
    account_id: str
    secret: str

    def poller(self) -> VideoPoller:
        poller = getattr(self.relay.state, "videos", None)
        assert isinstance(poller, VideoPoller)
        return poller

    async def create(self, secret: str | None = None, **fields: Any) -> httpx.Response:
        body = {"model": "mock-video", "prompt": "a cat surfing", "seconds": "4", **fields}
        return await self.relay.client.post(
            "/v1/videos", json=body, headers=auth(secret or self.secret)
        )

    async def show(self, video_id: str, secret: str | None = None) -> httpx.Response:
        return await self.relay.client.get(
            f"/v1/videos/{video_id}", headers=auth(secret or self.secret)
        )

    async def wait_for(self, video_id: str, *statuses: str, timeout_s: float = 10) -> Any:
        """Poll (as the background poller would, but without waiting for it) until done."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = (await self.show(video_id)).json()
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"job still {job['status']}"
            await self.poller().poll_once()
            await asyncio.sleep(0.02)

    def held(self) -> int:
        return self.relay.state.wallet.snapshot(self.account_id).held_micros

    async def charges(self) -> list[tuple[str, int]]:
        rows = await self.relay.charges(self.account_id)
        return [(row["reference"], -int(row["amount_micros"])) for row in rows]


@dataclass
class Served:
    """A config and fake upstream that can be served (again) on the same database."""

    config: Config
    upstream: FakeUpstream
    render_s: float

    def run(self) -> Any:
        return run_relay(self.config, client_factory=client_factory(self.upstream, self.render_s))


@pytest.fixture
def served(tmp_path: Path, admin_token: str) -> Served:
    return Served(make_config(tmp_path, extra=VIDEOS), FakeUpstream(queued_video), 0.3)


@pytest.fixture
async def setup(served: Served) -> AsyncIterator[Setup]:
    async with served.run() as relay:
        account, key = await relay.funded_key("director", amount_usd="10")
        yield Setup(relay, served.upstream, account["id"], key["secret"])


async def test_a_job_holds_its_quote_then_is_charged_once(setup: Setup) -> None:
    created = await setup.create(size="720x1280")
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["id"].startswith("video_") and job["object"] == "video"
    assert job["status"] == "queued" and job["progress"] == 0
    assert job["model"] == "mock-video" and job["seconds"] == "4" and job["size"] == "720x1280"
    estimate = 4 * PRICE_PER_SECOND_MICROS
    assert job["metadata"]["cost_estimate_micros"] == str(estimate)
    assert job["metadata"]["cost_estimate"] == micros_to_usd(estimate)
    assert "cost_micros" not in job["metadata"] and "cost" not in job["metadata"]
    assert setup.held() == estimate
    done = await setup.wait_for(job["id"], "completed", "failed")
    assert done["status"] == "completed" and done["progress"] == 100
    assert done["metadata"]["cost_micros"] == str(estimate)
    assert done["content_url"].endswith(f"/v1/videos/{job['id']}/content")
    assert await setup.charges() == [(job["id"], estimate)]
    assert setup.held() == 0
    usage = await setup.relay.usage(job["id"])
    assert (usage["endpoint"], usage["units"], usage["cost_micros"]) == ("videos", 4, estimate)
    assert usage["provider"] == "mock" and usage["status"] == 200
    content = await setup.relay.client.get(done["content_url"], headers=auth(setup.secret))
    assert content.status_code == 200
    assert content.headers["content-type"] == "video/mp4"
    assert content.content.startswith(MP4_START) and len(content.content) > 60_000
    await setup.poller().poll_once()
    assert await setup.charges() == [(job["id"], estimate)]


async def test_only_the_owning_account_sees_a_job(setup: Setup) -> None:
    job = (await setup.create()).json()
    _, other = await setup.relay.funded_key("neighbour")
    assert (await setup.show(job["id"], other["secret"])).status_code == 404
    content = await setup.relay.client.get(
        f"/v1/videos/{job['id']}/content", headers=auth(other["secret"])
    )
    assert content.status_code == 404
    assert (await setup.show("video_doesnotexist")).status_code == 404
    assert (await setup.show(job["id"])).status_code == 200


async def test_content_is_refused_until_the_job_completed(setup: Setup) -> None:
    job = (await setup.create()).json()
    content = await setup.relay.client.get(
        f"/v1/videos/{job['id']}/content", headers=auth(setup.secret)
    )
    assert content.status_code == 400
    assert content.json()["error"]["code"] == "video_not_ready"


async def test_bad_requests_place_no_hold(setup: Setup) -> None:
    assert (await setup.create(seconds="soon")).status_code == 400
    assert (await setup.create(seconds=0)).status_code == 400
    assert (await setup.create(model="mock-gpt")).status_code == 400
    dry = await setup.relay.client.post(
        "/v1/videos?dryRun=true",
        json={"model": "mock-video", "prompt": "x", "seconds": 8},
        headers=auth(setup.secret),
    )
    assert dry.json()["estimate"]["hold_micros"] == 8 * PRICE_PER_SECOND_MICROS
    assert setup.held() == 0 and setup.poller().running == 0


async def test_a_failed_job_releases_its_hold(setup: Setup) -> None:
    blocked = False

    def failing(seen: SeenRequest) -> httpx.Response:
        if seen.url.endswith("/videos"):
            return queued_video(seen)
        status: dict[str, Any] = {"id": "vid_1", "status": "queued"}
        if blocked:
            status = {"id": "vid_1", "status": "failed", "error": {"code": "moderation_blocked"}}
        return json_reply(200, json.dumps(status).encode())

    setup.upstream.handler = failing
    job = (await setup.create(model="sora")).json()
    assert setup.held() == 4 * PRICE_PER_SECOND_MICROS
    blocked = True
    done = await setup.wait_for(job["id"], "completed", "failed")
    assert done["status"] == "failed" and done["error"] == {"code": "moderation_blocked"}
    assert done["metadata"]["cost_micros"] == "0" and done["metadata"]["cost"] == "0"
    assert setup.held() == 0 and await setup.charges() == []
    usage = await setup.relay.usage(job["id"])
    assert (usage["status"], usage["error_code"], usage["cost_micros"]) == (
        502,
        "moderation_blocked",
        0,
    )


async def test_upstream_reported_seconds_are_billed(setup: Setup) -> None:
    polls: list[str] = []
    rendered = False

    def shorter(seen: SeenRequest) -> httpx.Response:
        if seen.url.endswith("/videos"):
            return queued_video(seen)
        polls.append(seen.url)
        status = {"id": "vid_1", "status": "in_progress", "progress": 40}
        if rendered:
            status = {"id": "vid_1", "status": "completed", "progress": 100, "seconds": "5"}
        return json_reply(200, json.dumps(status).encode())

    setup.upstream.handler = shorter
    job = (await setup.create(model="sora", seconds=8)).json()
    sent = setup.upstream.seen[0]
    assert sent.url == "http://vids.test/v1/videos" and sent.key == "vids-key"
    assert sent.body == {"model": "sora-2", "prompt": "a cat surfing", "seconds": "8"}
    running = await setup.wait_for(job["id"], "in_progress")
    assert running["progress"] == 40 and "cost_micros" not in running["metadata"]
    rendered = True
    await setup.wait_for(job["id"], "completed")
    assert polls[0] == "http://vids.test/v1/videos/vid_1"
    assert await setup.charges() == [(job["id"], 5 * PRICE_PER_SECOND_MICROS)]
    assert setup.held() == 0


async def test_a_refused_creation_charges_nothing(setup: Setup) -> None:
    setup.upstream.handler = lambda seen: error_reply(500)
    response = await setup.create(model="sora")
    assert response.status_code == 502
    assert setup.held() == 0 and setup.poller().running == 0
    assert await setup.relay.rows("SELECT * FROM video_jobs") == []


async def test_a_restart_mid_job_resumes_it_and_settles_once(served: Served) -> None:
    served.render_s = 2.0
    async with served.run() as relay:
        account, key = await relay.funded_key("director", amount_usd="10")
        setup = Setup(relay, served.upstream, account["id"], key["secret"])
        job = (await setup.create(seconds=8)).json()
        estimate = 8 * PRICE_PER_SECOND_MICROS
        assert setup.held() == estimate
    async with served.run() as relay:
        setup = Setup(relay, served.upstream, account["id"], key["secret"])
        # The hold died with the process and was placed again from video_jobs.
        assert setup.held() == estimate
        assert (await setup.show(job["id"])).json()["status"] in ("queued", "in_progress")
        done = await setup.wait_for(job["id"], "completed", "failed")
        assert done["status"] == "completed" and done["metadata"]["cost_micros"] == str(estimate)
        assert await setup.charges() == [(job["id"], estimate)]
        assert setup.held() == 0
        balance = relay.state.wallet.snapshot(account["id"]).balance_micros
        assert balance == 10_000_000 - estimate == await relay.ledger_sum(account["id"])
    async with served.run() as relay:
        setup = Setup(relay, served.upstream, account["id"], key["secret"])
        assert setup.poller().running == 0 and setup.held() == 0
        assert await setup.charges() == [(job["id"], estimate)]
        rows = await relay.rows("SELECT * FROM usage WHERE request_id = ?", (job["id"],))
        assert len(rows) == 1


def test_without_a_poller_video_routes_answer_503() -> None:
    with pytest.raises(NoUpstreamAvailable) as caught:
        video_poller(SimpleNamespace())  # type: ignore[arg-type]
    assert caught.value.status == 503


async def test_a_job_already_charged_is_not_resumed(tmp_path: Path) -> None:
    # A settlement's charge and the job's final state commit together; should a row ever
    # say "running" beside its charge, the charge wins: the job is never settled twice.
    db = await Database.open(tmp_path / "relay.db")
    try:
        wallet = Wallet(lambda entry: None)

        def seed(conn: Any) -> None:
            conn.execute(
                "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms) "
                "VALUES ('acct_1', 'a', 'prepaid', 0, 0)"
            )
            conn.execute(
                "INSERT INTO ledger (account_id, kind, amount_micros, reference, created_at_ms) "
                "VALUES ('acct_1', 'charge', -5, 'video_charged', 0)"
            )
            for job_id in ("video_charged", "video_running"):
                conn.execute(
                    "INSERT INTO video_jobs (id, account_id, model, provider, upstream_model, "
                    "upstream_id, seconds, estimate_micros, usd_per_second, created_at_ms, "
                    "status, updated_at_ms) VALUES (?, 'acct_1', 'm', 'mock', 'm', 'u', '4', "
                    "5, '0.1', 0, 'in_progress', 0)",
                    (job_id,),
                )

        await db.write(seed)
        wallet.load_account("acct_1", mode="prepaid", credit_limit_micros=0, balance_micros=10)
        poller = VideoPoller(EmbeddedVideoStore(db, wallet), {}, interval_s=60)
        await poller.start()
        await poller.stop()
        assert poller.running == 1
        assert await poller.find("video_running") is not None
        assert wallet.snapshot("acct_1").held_micros == 5
    finally:
        await db.close()
