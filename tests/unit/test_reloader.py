"""What a reload rebuilds, in the test process: the budget, the client, the token (also
from a file mid-rotation), the apps; a load that fails, and reloads asked for while one
runs (the exporter process reloading on SIGHUP: tests/process/test_reload.py)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import pytest
import yaml

from exporter import config as config_module
from exporter.config import Secret, Shard
from exporter.reload import Reloader
from exporter.server import Exporter, Server
from exporter.simulator import Simulator
from exporter.tokenfile import TokenFile
from tests.conftest import ACCOUNT, TOKEN, add_stream, api_simulator, sent
from tests.reloading import (
    RELOAD_OK,
    TOKEN_ENV,
    GatedExecutor,
    exporter_for,
    simulated_world,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")


# -- what a reload rebuilds, in-process -------------------------------------------------
@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


@pytest.mark.usefixtures("token_env")
async def test_a_smaller_rate_limit_keeps_the_grants_already_made(
    tmp_path: Path, sim: Simulator
) -> None:
    """rate_limit is applied by resizing the token's budget: the requests already sent
    still count, so the same token gets no fresh window."""
    add_stream(sim, "ls-1")
    path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"], rate_limit="1000/5m")
    async with exporter_for(path) as (exporter, reloader, registry):
        for _ in range(3):
            await exporter.poller.poll_once()
        available = "realtimekit_exporter_request_budget_available"
        assert registry.get_sample_value(available, {"credentials": "default"}) == 1000 - sent(sim)
        write_config(path, sim.base_url, ["ls-1"], rate_limit="100/5m")
        assert await reloader.reload() is None
        await exporter.poller.poll_once()
        assert registry.get_sample_value(available, {"credentials": "default"}) == 100 - sent(sim)


@pytest.mark.usefixtures("token_env")
async def test_new_api_settings_rebuild_the_client(tmp_path: Path, sim: Simulator) -> None:
    """A new base_url (with timeout and max_concurrency) takes effect at the next cycle:
    requests go to the new address only."""
    add_stream(sim, "ls-1")
    async with api_simulator() as other:
        add_stream(other, "ls-1", status="OFFLINE")
        path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"])
        async with exporter_for(path) as (exporter, reloader, _):
            await exporter.poller.poll_once()
            write_config(path, other.base_url, ["ls-1"], timeout="3s", max_concurrency=2)
            assert await reloader.reload() is None
            before = sent(sim)
            snapshot = await exporter.poller.poll_once()
            assert sent(sim) == before and sent(other)
            (app,) = snapshot.apps
            assert app.up and app.streams[0].livestream.status == "OFFLINE"
            assert exporter.config.api.max_concurrency == 2


@pytest.mark.usefixtures("token_env")
async def test_shards_stay_as_the_command_line_gave_them(tmp_path: Path, sim: Simulator) -> None:
    """--shard and --total-shards outlive a reload; a rate_limit too small for them is
    a rejected reload, naming --total-shards."""
    path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"])
    async with exporter_for(path, shard=Shard(1, 2)) as (exporter, reloader, registry):
        write_config(path, sim.base_url, ["ls-1", "ls-2"])
        assert await reloader.reload() is None
        await exporter.poller.poll_once()
        assert exporter.config.shard == Shard(1, 2)
        write_config(path, sim.base_url, ["ls-1"], rate_limit="1/5m")
        problem = await reloader.reload()
        assert problem is not None and "--total-shards=2" in problem
        assert registry.get_sample_value(RELOAD_OK) == 0


async def test_a_reload_with_a_new_token_uses_it_from_the_next_cycle(tmp_path: Path) -> None:
    """The token is part of what a reload re-reads; the process is told the new one
    (for log redaction) and polls with it."""
    told: list[str] = []
    async with Simulator(simulated_world(), token="first-token-123") as sim:
        path = write_config(
            tmp_path / "c.yaml", sim.base_url, [], token={"token": "first-token-123"}
        )
        config = config_module.load(str(path))
        async with Exporter(config, process_metrics=False, on_token=told.append) as exporter:
            reloader = Reloader(exporter=exporter, config_file=str(path))
            assert (await exporter.poller.poll_once()).apps[0].up
            sim.state.token = "second-token-456"
            assert not (await exporter.poller.poll_once()).apps[0].up
            write_config(path, sim.base_url, [], token={"token": "second-token-456"})
            assert await reloader.reload() is None
            assert told == ["second-token-456"]
            assert (await exporter.poller.poll_once()).apps[0].up


def test_token_file_keeps_the_token_through_a_half_written_rotation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty or unreadable file mid-rotation keeps the current token, with one warning;
    an unchanged file is not read again; a new valid token is returned once."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "token"
    path.write_text("first-token\n", encoding="utf-8")
    watch = TokenFile(path, Secret("first-token"))
    assert watch.check() is None
    path.write_text("", encoding="utf-8")
    assert watch.check() is None and watch.check() is None
    path.unlink()
    assert watch.check() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the current token" in warnings[0].getMessage()
    path.write_text("second-token\n", encoding="utf-8")
    assert watch.check() == Secret("second-token")
    assert watch.check() is None
    assert "second-token" not in caplog.text and "first-token" not in caplog.text


async def test_a_token_file_rolled_back_then_reloaded_is_used(tmp_path: Path) -> None:
    """The file rotates to a second token, which turns out bad; the first is put back and
    a reload follows: the client goes back to the first token, though the config's
    token did not change between the two loads."""
    first, second = "token-one-0123456789", "token-two-9876543210"
    token_file = tmp_path / "token"
    token_file.write_text(first + "\n")
    async with Simulator(simulated_world(), token=first) as sim:
        path = write_config(
            tmp_path / "c.yaml", sim.base_url, [], token={"token_file": str(token_file)}
        )
        async with Exporter(config_module.load(str(path)), process_metrics=False) as exporter:
            reloader = Reloader(exporter=exporter, config_file=str(path))
            assert (await exporter.poller.poll_once()).apps[0].up
            sim.state.token = second
            token_file.write_text(second + "\n")
            assert (await exporter.poller.poll_once()).apps[0].up
            sim.state.token = first
            token_file.write_text(first + "\n")
            assert await reloader.reload() is None
            ups = [(await exporter.poller.poll_once()).apps[0].up for _ in range(2)]
            assert ups == [True, True]


@pytest.mark.usefixtures("token_env")
async def test_an_app_removed_by_reload_leaves_no_series(tmp_path: Path, sim: Simulator) -> None:
    """Its error counters, created at 0 for it, go with it."""
    add_stream(sim, "ls-1")
    path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"])
    doc = yaml.safe_load(path.read_text())
    doc["apps"].append({"account_id": ACCOUNT, "app_id": "gone-app", "discover": True})
    path.write_text(yaml.safe_dump(doc))
    async with exporter_for(path) as (exporter, reloader, registry):
        await exporter.poller.poll_once()
        write_config(path, sim.base_url, ["ls-1"])
        assert await reloader.reload() is None
        await exporter.poller.poll_once()
        left = [
            (sample.name, sample.labels)
            for family in registry.collect()
            for sample in family.samples
            if sample.labels.get("app_id") == "gone-app"
        ]
        assert left == []


class FailingExecutor(Executor):
    """Runs nothing: every call fails as a bug would, with a message quoting a secret."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        future.set_exception(RuntimeError(f"a bug, quoting {TOKEN}"))
        return future


@pytest.mark.usefixtures("token_env")
async def test_an_unexpected_error_while_loading_is_a_rejected_reload(
    tmp_path: Path, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a load raises, reload() returns the reason instead of raising (SIGHUP's task
    would lose it), sets the gauge to 0 and logs the rejection, naming only the error's
    type."""
    path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"])
    async with exporter_for(path) as (exporter, _, registry):
        reloader = Reloader(exporter=exporter, config_file=str(path), executor=FailingExecutor())
        reason = await reloader.reload()
        assert reason == "cannot load the configuration: unexpected RuntimeError"
        assert registry.get_sample_value(RELOAD_OK) == 0
        assert f"reload rejected, the running configuration stays: {reason}" in caplog.text
        assert TOKEN not in caplog.text


@pytest.mark.usefixtures("token_env")
async def test_reloads_asked_for_while_one_runs_are_merged_into_one(
    tmp_path: Path, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """300 reloads asked for while one runs (SIGHUPs, or POSTs whose clients hang up) make
    one more reload, shared by all of them, not 300 (300 once ran for six minutes); its
    outcome is logged once."""
    caplog.set_level(logging.INFO, logger="exporter.reload")
    path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"])
    async with exporter_for(path) as (exporter, _, registry):
        executor = GatedExecutor()
        reloader = Reloader(exporter=exporter, config_file=str(path), executor=executor)
        first = asyncio.ensure_future(reloader.reload())
        async with asyncio.timeout(5):
            while executor.loads < 1:
                await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(reloader.reload()) for _ in range(300)]
        for dropped in waiting[::2]:
            dropped.cancel()  # the callers that hang up
        executor.gate.set()
        assert await first is None
        results = await asyncio.gather(*waiting[1::2])
        assert results == [None] * 150
        assert executor.loads == 2
        assert caplog.text.count("configuration reloaded") == 2
        assert registry.get_sample_value(RELOAD_OK) == 1


# -- POST /-/reload on the running server --------------------------------------------------
@pytest.mark.usefixtures("token_env")
@pytest.mark.parametrize("lifecycle", [False, True], ids=["without the flag", "with the flag"])
async def test_post_reload_answers_403_with_the_reason_unless_lifecycle_is_on(
    tmp_path: Path, sim: Simulator, lifecycle: bool
) -> None:
    """Without --web.enable-lifecycle (no reload handed to the server) POST /-/reload is
    403 and says how to turn it on, as Prometheus does, instead of a bare 404, and
    reloads nothing; with it, the reload runs. Any other method is 405 either way."""
    add_stream(sim, "ls-1")
    path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"])
    reloads: list[str | None] = []
    async with exporter_for(path) as (exporter, reloader, _):

        async def reload() -> str | None:
            reloads.append(await reloader.reload())
            return reloads[-1]

        server = Server(exporter, host="127.0.0.1", port=0, reload=reload if lifecycle else None)
        await server.start()
        try:
            host, port = server.addresses[0]
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://{host}:{port}/-/reload") as response:
                    status, body = response.status, await response.text()
                async with http.get(f"http://{host}:{port}/-/reload") as response:
                    assert response.status == 405
        finally:
            await server.close()
    if lifecycle:
        assert (status, body, reloads) == (200, "configuration reloaded\n", [None])
    else:
        assert status == 403 and reloads == []
        assert body == "lifecycle APIs are not enabled: start with --web.enable-lifecycle\n"
