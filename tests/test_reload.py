"""Reloading while running: SIGHUP, POST /-/reload, and a rotated token file."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter import config as config_module
from exporter.config import Secret, Shard
from exporter.reload import Reloader
from exporter.server import Exporter
from exporter.simulator import REALISTIC, Simulator, World
from exporter.tokenfile import TokenFile
from tests.conftest import ACCOUNT, APP, TOKEN, add_stream, api_simulator, go_live, sent
from tests.procs import LOOPBACK, child_env, exporter_command

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

T = TypeVar("T")
TOKEN_ENV = "RTK_TEST_TOKEN"
RELOAD_OK = "realtimekit_exporter_config_last_reload_successful"
RELOAD_TIME = "realtimekit_exporter_config_last_reload_success_timestamp_seconds"
WHOLE = Shard()


def write_config(
    path: Path,
    base_url: str,
    streams: list[str],
    *,
    token: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    **api: Any,
) -> Path:
    """A config polling ``streams`` of the app every second (the token from TOKEN_ENV
    unless ``token`` says otherwise)."""
    document: dict[str, Any] = {
        "api": {
            "base_url": base_url,
            **(token or {"token": f"${{{TOKEN_ENV}}}"}),
            "timeout": "2s",
            **api,
        },
        "poll": {"interval": "1s"},
        "apps": [
            {
                "account_id": ACCOUNT,
                "app_id": APP,
                "livestreams": [{"id": s} for s in streams],
                **({} if streams else {"discover": True}),
            }
        ],
        **(extra or {}),
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Running:
    """An exporter process and a client for its endpoints."""

    proc: asyncio.subprocess.Process
    log_path: Path
    http: aiohttp.ClientSession
    url: str = ""

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def until(
        self, check: Callable[[], Awaitable[T | None]], *, what: str, limit: float = 20.0
    ) -> T:
        """``check()`` once it is truthy; fails after ``limit`` seconds, or at once if the
        process exits, with the end of its log."""
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            if self.proc.returncode is not None:
                pytest.fail(f"the exporter exited waiting for {what}:\n{self.log()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                if value := await check():
                    return value
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)

    async def metrics(self) -> Samples:
        async with self.http.get(self.url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def post_reload(self) -> tuple[int, str]:
        async with self.http.post(self.url + "/-/reload") as response:
            return response.status, await response.text()


def stream(name: str, livestream_id: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (
        name,
        frozenset(
            {"account_id": ACCOUNT, "app_id": APP, "livestream_id": livestream_id, **labels}.items()
        ),
    )


def streams_in(samples: Samples) -> set[str]:
    return {dict(labels).get("livestream_id", "") for _, labels in samples} - {""}


@contextlib.asynccontextmanager
async def exporter_process(
    tmp_path: Path, config: Path, *, token: str = TOKEN
) -> AsyncIterator[Running]:
    """The exporter as a process on a free loopback port; terminated and reaped on the way out."""
    log_path = tmp_path / "exporter.log"
    command = exporter_command(
        "--config.file",
        str(config),
        "--web.listen-address",
        f"{LOOPBACK}:0",
        "--web.enable-lifecycle",
    )
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env({TOKEN_ENV: token}),
        )
    try:
        async with aiohttp.ClientSession() as http:
            running = Running(proc, log_path, http)

            async def listening() -> re.Match[str] | None:
                return re.search(r"listening on 127\.0\.0\.1:(\d+)", running.log())

            port = (await running.until(listening, what="the listening line"))[1]
            running.url = f"http://{LOOPBACK}:{port}"
            yield running
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -- SIGHUP and POST /-/reload on a real process ----------------------------------------
async def test_sighup_changes_the_streams_and_keeps_the_others_series(
    tmp_path: Path, sim: Simulator
) -> None:
    """A SIGHUP with a changed config adds and removes configured streams at the next
    cycle, in the same process; a stream in both configs keeps its series, here the final
    counters of a session that ended before the reload, which no request fetches again."""
    one = add_stream(sim, "ls-1")
    add_stream(sim, "ls-2")
    add_stream(sim, "ls-3", status="OFFLINE")
    go_live(sim, one, ingest=42, viewer=77)
    config = write_config(tmp_path / "config.yaml", sim.base_url, ["ls-1", "ls-2"])
    async with exporter_process(tmp_path, config) as running:
        ingest = stream("realtimekit_livestream_ingest_seconds", "ls-1")
        live = stream("realtimekit_livestream_live", "ls-1")

        async def live_with_42() -> Samples | None:
            got = await running.metrics()
            return got if got.get(live) == 1 and got.get(ingest) == 42 else None

        await running.until(live_with_42, what="ls-1 live")
        sim.world.stop(one)  # its session, by id, now has a stop time

        async def stopped() -> Samples | None:
            got = await running.metrics()
            return got if got.get(live) == 0 and sent(sim, "livestream_session") >= 1 else None

        before = await running.until(stopped, what="ls-1 stopped with its final counters")
        assert before[ingest] == 42 and streams_in(before) == {"ls-1", "ls-2"}
        sim.world.set_counters(one, ingest_seconds=999)  # never asked again

        write_config(config, sim.base_url, ["ls-1", "ls-3"])
        pid = running.proc.pid
        running.proc.send_signal(signal.SIGHUP)

        async def switched() -> Samples | None:
            got = await running.metrics()
            return got if streams_in(got) == {"ls-1", "ls-3"} else None

        after = await running.until(switched, what="ls-3 tracked, ls-2 gone")
        assert running.proc.pid == pid and running.proc.returncode is None
        for name in (
            "realtimekit_livestream_ingest_seconds",
            "realtimekit_livestream_viewer_seconds",
            "realtimekit_livestream_session_start_timestamp_seconds",
        ):
            assert after[stream(name, "ls-1")] == before[stream(name, "ls-1")], name
        status = stream("realtimekit_livestream_status", "ls-3", status="OFFLINE")
        assert after[status] == 1
        assert after[(RELOAD_OK, frozenset())] == 1
        assert after[(RELOAD_TIME, frozenset())] > before[(RELOAD_TIME, frozenset())]
        log = running.log()
        assert "configuration reloaded" in log and TOKEN not in log


async def test_an_invalid_config_is_rejected_once_and_the_old_one_stays(
    tmp_path: Path, sim: Simulator
) -> None:
    """A reload of an invalid config is logged once with its problems (not the token),
    sets the gauge to 0 and leaves the running config polling; POST /-/reload answers 500
    with the reason, 200 once the file is fixed, and GET is 405."""
    add_stream(sim, "ls-1")
    add_stream(sim, "ls-2")
    config = write_config(tmp_path / "config.yaml", sim.base_url, ["ls-1"])
    async with exporter_process(tmp_path, config) as running:
        cycles: tuple[str, frozenset[tuple[str, str]]] = (
            "realtimekit_exporter_poll_duration_seconds_count",
            frozenset(),
        )

        async def polled() -> Samples | None:
            got = await running.metrics()
            return got if got.get(cycles, 0) >= 1 else None

        await running.until(polled, what="a first cycle")
        # Bad in two places, with the token itself as a (long, so undisclosed) key.
        bad = {"poll": {"interval": "0s"}, TOKEN: "misplaced"}
        write_config(config, sim.base_url, ["ls-1", "ls-2"], extra=bad)
        running.proc.send_signal(signal.SIGHUP)

        async def rejected() -> Samples | None:
            got = await running.metrics()
            return got if got.get((RELOAD_OK, frozenset())) == 0 else None

        failed = await running.until(rejected, what="the reload to be rejected")

        async def two_more_cycles() -> Samples | None:
            got = await running.metrics()
            return got if got[cycles] >= failed[cycles] + 2 else None

        later = await running.until(two_more_cycles, what="polling to go on")
        assert streams_in(later) == {"ls-1"}  # the old config still in force
        log = running.log()
        rejections = [line for line in log.splitlines() if "reload rejected" in line]
        assert len(rejections) == 1, log
        assert "poll.interval: must be greater than zero" in rejections[0]
        assert "unknown key" in rejections[0]
        assert TOKEN not in log

        status, body = await running.post_reload()
        assert status == 500 and "poll.interval" in body and TOKEN not in body
        async with running.http.get(running.url + "/-/reload") as response:
            assert response.status == 405

        write_config(config, sim.base_url, ["ls-1", "ls-2"])
        assert await running.post_reload() == (200, "configuration reloaded\n")

        async def both() -> Samples | None:
            got = await running.metrics()
            ok = streams_in(got) == {"ls-1", "ls-2"} and got[(RELOAD_OK, frozenset())] == 1
            return got if ok else None

        await running.until(both, what="ls-2 after the good reload")


def cycles_in(samples: Samples) -> float:
    return samples.get(("realtimekit_exporter_poll_duration_seconds_count", frozenset()), 0)


async def test_a_file_the_parser_cannot_take_is_a_rejected_reload(
    tmp_path: Path, sim: Simulator
) -> None:
    """Nesting 500 deep (POST /-/reload) and a 5,000-digit integer (SIGHUP) are rejected
    like any invalid file: 500 with the reason, the gauge at 0, one "reload rejected" line
    each, and no exception left in a task; the old config keeps polling."""
    add_stream(sim, "ls-1")
    config = write_config(tmp_path / "config.yaml", sim.base_url, ["ls-1"])
    good = config.read_text(encoding="utf-8")
    async with exporter_process(tmp_path, config) as running:

        async def polled() -> Samples | None:
            got = await running.metrics()
            return got if cycles_in(got) >= 1 else None

        await running.until(polled, what="a first cycle")
        config.write_text(good + "x: " + "[" * 500 + TOKEN + "]" * 500 + "\n", encoding="utf-8")
        status, body = await running.post_reload()
        assert status == 500 and "nested deeper than 64 levels at line" in body
        assert (await running.metrics())[(RELOAD_OK, frozenset())] == 0

        config.write_text(good.replace("interval: 1s", "interval: " + "7" * 5000), "utf-8")
        running.proc.send_signal(signal.SIGHUP)

        async def rejected_twice() -> list[str] | None:
            lines = [line for line in running.log().splitlines() if "reload rejected" in line]
            return lines if len(lines) == 2 else None

        rejections = await running.until(rejected_twice, what="the SIGHUP reload's rejection")
        assert "an integer longer than 1000 characters at line" in rejections[1]
        before = await running.metrics()
        assert before[(RELOAD_OK, frozenset())] == 0

        async def polling_on() -> Samples | None:
            got = await running.metrics()
            return got if cycles_in(got) >= cycles_in(before) + 2 else None

        assert streams_in(await running.until(polling_on, what="polling to go on")) == {"ls-1"}
        log = running.log()
        assert "Task exception was never retrieved" not in log and "Traceback" not in log
        assert TOKEN not in log and TOKEN not in body


def not_a_token_file(kind: str, path: Path) -> None:
    """Put ``kind`` in place of the token file at ``path``."""
    path.unlink()
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "200 MB":
        with path.open("wb") as out:
            out.truncate(200_000_000)  # sparse: no disk space, and zeros, no whitespace
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("kind", ["a FIFO", "200 MB", "a symlink to /dev/zero"])
async def test_a_token_file_swapped_for_what_cannot_be_read_stops_nothing(
    tmp_path: Path, sim: Simulator, kind: str
) -> None:
    """The running process notices at its next cycle, warns once, goes on answering and
    polling with the token it has, and still stops within 5 s of SIGTERM, exiting 0."""
    add_stream(sim, "ls-1")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    config = write_config(
        tmp_path / "config.yaml", sim.base_url, ["ls-1"], token={"token_file": str(token_file)}
    )
    up = ("realtimekit_up", frozenset({"account_id": ACCOUNT, "app_id": APP}.items()))
    async with exporter_process(tmp_path, config) as running:

        async def polled() -> Samples | None:
            got = await running.metrics()
            return got if cycles_in(got) >= 1 and got.get(up) == 1 else None

        await running.until(polled, what="a first cycle")
        not_a_token_file(kind, token_file)

        async def warned() -> bool:
            return "keeping the current token" in running.log()

        await running.until(warned, what="the warning about the token file")
        async with asyncio.timeout(5), running.http.get(running.url + "/-/healthy") as response:
            assert response.status == 200
        before = await running.metrics()

        async def polling_on() -> Samples | None:
            got = await running.metrics()
            return got if cycles_in(got) >= cycles_in(before) + 2 else None

        after = await running.until(polling_on, what="two more cycles")
        assert after[up] == 1  # the simulator answers 401 to any other token
        stopping = time.monotonic()
        running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.proc.wait(), timeout=5) == 0
        assert time.monotonic() - stopping < 5
        log = running.log()
        assert log.count("keeping the current token") == 1, log
        assert TOKEN not in log


# -- what a reload rebuilds, in-process -------------------------------------------------
@contextlib.asynccontextmanager
async def exporter_for(
    path: Path, *, shard: Shard = WHOLE
) -> AsyncIterator[tuple[Exporter, Reloader, CollectorRegistry]]:
    registry = CollectorRegistry()
    config = config_module.load(str(path), shard=shard)
    async with Exporter(config, registry=registry, process_metrics=False) as exporter:
        yield exporter, Reloader(exporter=exporter, config_file=str(path)), registry


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
        assert registry.get_sample_value(available) == 1000 - sent(sim)
        write_config(path, sim.base_url, ["ls-1"], rate_limit="100/5m")
        assert await reloader.reload() is None
        await exporter.poller.poll_once()
        assert registry.get_sample_value(available) == 100 - sent(sim)


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


def simulated_world() -> World:
    world = World(seed=5, profile=REALISTIC)
    world.populate(ACCOUNT, APP, 3, live=1)
    return world


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


# -- a rotated token file ---------------------------------------------------------------
class SecretMount:
    """A directory laid out as Kubernetes mounts a Secret: ``token`` -> ``..data/token``,
    ``..data`` -> a timestamped directory; an update swaps ``..data`` atomically."""

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()
        self._write(token)
        (root / "token").symlink_to("..data/token")

    @property
    def path(self) -> Path:
        return self.root / "token"

    def _write(self, token: str) -> None:
        self.generation += 1
        directory = self.root / f"..2026_11_27_{self.generation}"
        directory.mkdir()
        (directory / "token").write_text(token + "\n", encoding="utf-8")
        link = self.root / "..data_tmp"
        link.symlink_to(directory.name)
        os.replace(link, self.root / "..data")

    def rotate(self, token: str) -> None:
        self._write(token)


async def test_a_rotated_token_file_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    """The simulator starts accepting only a new token and the exporter fails with 401;
    once the Secret's symlink swap brings the new token, the same process recovers by
    itself, and neither token reaches its log."""
    old, new = "old-token-0123456789", "new-token-9876543210"
    mount = SecretMount(tmp_path / "secret", old)
    async with Simulator(simulated_world(), token=old) as sim:
        path = write_config(
            tmp_path / "c.yaml", sim.base_url, [], token={"token_file": str(mount.path)}
        )
        async with exporter_process(tmp_path, path) as running:
            up = ("realtimekit_up", frozenset({"account_id": ACCOUNT, "app_id": APP}.items()))

            def when_up(value: float) -> Callable[[], Awaitable[Samples | None]]:
                async def check() -> Samples | None:
                    got = await running.metrics()
                    return got if got.get(up) == value else None

                return check

            await running.until(when_up(1), what="up with the old token")
            pid = running.proc.pid
            sim.state.token = new
            failing = await running.until(when_up(0), what="401s for the old token")
            auth = (
                "realtimekit_exporter_poll_errors_total",
                frozenset({"account_id": ACCOUNT, "app_id": APP, "reason": "auth"}.items()),
            )
            assert failing[auth] >= 1
            mount.rotate(new)
            await running.until(when_up(1), what="up again with the rotated token")
            assert running.proc.pid == pid and running.proc.returncode is None
            log = running.log()
            assert "the token file changed" in log
            assert old not in log and new not in log


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


class GatedExecutor(concurrent.futures.Executor):
    """Runs each load in a thread of its own once ``gate`` is set, counting them."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.loads = 0
        self._lock = threading.Lock()

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            with self._lock:
                self.loads += 1
            self.gate.wait(10)
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the reload that awaits it
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return future


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
