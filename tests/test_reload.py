"""Live reload (POST /admin/reload, SIGHUP, ``relay reload``) and the upstream key pools."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN, FakeUpstream, SeenRequest, config_text
from support_accounts import auth, chat_body, run_relay
from test_server import RELAY, free_port

from relay.cli.entry import main
from relay.config import load_config

NEW_MODEL = """
[[models]]
name = "late-gpt"
routes = ["mock:late-gpt"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"
"""
SLOW = """
[[providers]]
name = "slowmock"
kind = "mock"
mock_latency_ms = 1500

[[models]]
name = "slow-gpt"
routes = ["slowmock:slow-gpt"]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def answer_with_usage(seen: SeenRequest) -> httpx.Response:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return httpx.Response(200, json={"id": "x", "choices": [], "usage": usage})


async def model_ids(client: httpx.AsyncClient) -> set[str]:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    return {m["id"] for m in response.json()["data"]}


async def test_reload_adds_a_model_and_refuses_a_bad_file_naming_the_key(
    tmp_path: Path, admin_token: str
) -> None:
    base = config_text(tmp_path / "relay.db")
    path = write(tmp_path / "relay.toml", base)
    async with run_relay(load_config(path)) as relay:
        assert "late-gpt" not in await model_ids(relay.client)
        write(path, base + NEW_MODEL)
        answer = await relay.client.post("/admin/reload")
        assert answer.status_code == 200, answer.text
        assert answer.json()["added_models"] == ["late-gpt"]
        assert answer.json()["restart_required"] == []
        assert "late-gpt" in await model_ids(relay.client)
        _, key = await relay.funded_key("acme")
        ok = await relay.client.post(
            "/v1/chat/completions", json=chat_body("late-gpt"), headers=auth(key["secret"])
        )
        assert ok.status_code == 200
        # A dangling route: refused with the key at fault, the running config stays.
        write(path, base + NEW_MODEL.replace("mock:late-gpt", "nowhere:late-gpt"))
        refused = await relay.client.post("/admin/reload")
        assert refused.status_code == 400
        message = refused.json()["error"]["message"]
        assert "models[2].routes[0]" in message and "nowhere" in message
        assert "late-gpt" in await model_ids(relay.client)
        # Sections a live process cannot change are named, and keep their old values.
        write(path, base.replace("flush_interval_ms = 10", "flush_interval_ms = 20"))
        answer = await relay.client.post("/admin/reload")
        assert answer.json()["restart_required"] == ["server"]
        assert answer.json()["removed_models"] == ["late-gpt"]
        assert relay.state.config.server.flush_interval_ms == 10
        actions = [row["action"] for row in await relay.audit()]
        assert actions.count("config.reload") == 2


async def test_a_request_in_flight_finishes_on_the_provider_a_reload_replaced(
    tmp_path: Path, admin_token: str
) -> None:
    base = config_text(tmp_path / "relay.db") + SLOW
    path = write(tmp_path / "relay.toml", base)
    async with run_relay(load_config(path)) as relay:
        _, key = await relay.funded_key("acme")
        old_provider = relay.state.providers["slowmock"]
        in_flight = asyncio.create_task(
            relay.client.post(
                "/v1/chat/completions", json=chat_body("slow-gpt"), headers=auth(key["secret"])
            )
        )
        while not any(k.in_flight for k in old_provider.pool.keys):
            await asyncio.sleep(0.01)
        write(path, base.replace("mock_latency_ms = 1500", "mock_latency_ms = 10"))
        answer = await relay.client.post("/admin/reload")
        assert answer.json()["providers_rebuilt"] == ["slowmock"]
        assert relay.state.providers["slowmock"] is not old_provider
        response = await in_flight
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        # The next request takes the new provider at once.
        fast = await relay.client.post(
            "/v1/chat/completions", json=chat_body("slow-gpt"), headers=auth(key["secret"])
        )
        assert fast.status_code == 200
        assert relay.state.wallet.open_hold_count() == 0


async def test_upstream_keys_are_listed_and_switched_by_position(
    tmp_path: Path, admin_token: str
) -> None:
    fake = FakeUpstream(answer_with_usage)
    text = config_text(
        tmp_path / "relay.db", upstream_url="http://fake.test/v1", upstream_keys=("sk-a", "sk-b")
    )
    config = load_config(write(tmp_path / "relay.toml", text))
    async with run_relay(config, client_factory=fake.factory()) as relay:
        listing = (await relay.client.get("/admin/upstreams")).json()["data"]
        fake_keys = [k for k in listing if k["provider"] == "fake"]
        assert [(k["key"], k["position"], k["disabled"]) for k in fake_keys] == [
            ("#1", 1, None),
            ("#2", 2, None),
        ]
        assert "sk-a" not in json.dumps(listing)
        disabled = await relay.client.post("/admin/upstreams/fake/keys/1/disable")
        assert disabled.status_code == 200 and disabled.json()["disabled"]
        _, key = await relay.funded_key("acme")
        for _ in range(3):
            ok = await relay.client.post(
                "/v1/chat/completions", json=chat_body("fake-gpt"), headers=auth(key["secret"])
            )
            assert ok.status_code == 200
        assert fake.keys == ["sk-b"] * 3
        enabled = await relay.client.post("/admin/upstreams/fake/keys/1/enable")
        assert enabled.json()["disabled"] is None
        missing = await relay.client.post("/admin/upstreams/fake/keys/3/disable")
        assert missing.status_code == 404
        rows = await relay.audit()
        actions = [row["action"] for row in rows]
        assert "upstream.disable" in actions and "upstream.enable" in actions
        # Named by position and fingerprint (what cluster instances replay by), never value.
        fingerprint = relay.state.upstream_fingerprints.of("sk-a")
        toggle = json.loads(next(r["detail"] for r in rows if r["action"] == "upstream.disable"))
        assert toggle == {"provider": "fake", "position": 1, "fingerprint": fingerprint}
        assert fingerprint != relay.state.upstream_fingerprints.of("sk-b")
        assert "sk-a" not in json.dumps(rows)


async def test_a_reload_that_rebuilds_a_provider_keeps_the_operators_key_state(
    tmp_path: Path, admin_token: str
) -> None:
    fake = FakeUpstream(answer_with_usage)

    def text(keys: tuple[str, ...]) -> str:
        return config_text(
            tmp_path / "relay.db", upstream_url="http://fake.test/v1", upstream_keys=keys
        )

    path = write(tmp_path / "relay.toml", text(("sk-a", "sk-b", "sk-c")))
    async with run_relay(load_config(path), client_factory=fake.factory()) as relay:
        assert (await relay.client.post("/admin/upstreams/fake/keys/1/disable")).status_code == 200
        old_pool = relay.state.providers["fake"].pool
        old_pool.cool_down(old_pool.keys[2], "120")  # sk-c is rate-limited upstream
        # sk-b is removed and sk-d added: sk-a moves to #2, sk-c to #3.
        write(path, text(("sk-d", "sk-a", "sk-c")))
        answer_ = await relay.client.post("/admin/reload")
        assert answer_.json()["providers_rebuilt"] == ["fake"], answer_.text
        pool = relay.state.providers["fake"].pool
        assert pool is not old_pool
        listing = {
            k["position"]: k
            for k in (await relay.client.get("/admin/upstreams")).json()["data"]
            if k["provider"] == "fake"
        }
        assert listing[1]["disabled"] is None and listing[1]["cooling_down_s"] == 0
        assert listing[2]["disabled"] == "disabled by the operator"
        assert listing[3]["disabled"] is None and listing[3]["cooling_down_s"] > 100
        _, key = await relay.funded_key("acme")
        for _ in range(3):
            ok = await relay.client.post(
                "/v1/chat/completions", json=chat_body("fake-gpt"), headers=auth(key["secret"])
            )
            assert ok.status_code == 200
        assert fake.keys == ["sk-d"] * 3  # the disabled and the cooling key are skipped
        # Putting sk-b back later: it was removed, so it comes back with no old state.
        write(path, text(("sk-b", "sk-a")))
        assert (await relay.client.post("/admin/reload")).status_code == 200
        keys = relay.state.providers["fake"].pool.keys
        assert [k.disabled_reason for k in keys] == [None, "disabled by the operator"]


async def test_cli_reload_and_upstream_commands(
    tmp_path: Path, admin_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = config_text(tmp_path / "relay.db")
    path = write(tmp_path / "relay.toml", base)
    async with run_relay(load_config(path)) as relay:
        common = ["-c", str(path), "--url", relay.base_url]
        write(path, base + NEW_MODEL)
        assert await asyncio.to_thread(main, ["reload", *common]) == 0
        out = capsys.readouterr().out
        assert "added models: late-gpt" in out
        assert await asyncio.to_thread(main, ["upstream", "disable", "mock", "1", *common]) == 0
        assert "mock key #1 disabled." in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["upstream", "list", "--json", *common]) == 0
        [mock_key] = json.loads(capsys.readouterr().out)
        assert mock_key["disabled"] == "disabled by the operator"
        assert await asyncio.to_thread(main, ["upstream", "enable", "mock", "1", *common]) == 0
        assert relay.state.providers["mock"].pool.keys[0].disabled_reason is None


# ------------------------------------------------------------------- a real process


async def test_sighup_adds_a_model_to_a_running_process_without_failing_a_request(
    tmp_path: Path,
) -> None:
    port = free_port()
    base = config_text(Path("data.db")).replace('"127.0.0.1:8787"', f'"127.0.0.1:{port}"')
    base += SLOW.replace("1500", "300")
    path = write(tmp_path / "relay.toml", base)
    log = (tmp_path / "relay.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        str(RELAY), "serve", "-c", str(path),
        env={**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}, stdout=log, stderr=log,
    )  # fmt: skip
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
        ) as client:
            for _ in range(600):  # a loaded 2-core box can take seconds to import and start
                assert process.returncode is None, (tmp_path / "relay.log").read_text()
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            assert "late-gpt" not in await model_ids(client)

            async def traffic() -> list[int]:
                statuses = []
                for _ in range(8):  # bounded: a few slow requests around the signal
                    reply = await client.post("/v1/chat/completions", json=chat_body("slow-gpt"))
                    statuses.append(reply.status_code)
                return statuses

            load = [asyncio.create_task(traffic()) for _ in range(3)]
            await asyncio.sleep(0.5)
            write(path, base + NEW_MODEL)
            process.send_signal(signal.SIGHUP)
            for _ in range(100):
                if "late-gpt" in await model_ids(client):
                    break
                await asyncio.sleep(0.1)
            assert "late-gpt" in await model_ids(client)
            late = await client.post("/v1/chat/completions", json=chat_body("late-gpt"))
            assert late.status_code == 200
            results = await asyncio.gather(*load)
            assert all(status == 200 for statuses in results for status in statuses), results
            assert process.returncode is None  # still running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
        log.close()
    assert "config reloaded" in (tmp_path / "relay.log").read_text()
