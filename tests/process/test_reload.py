"""Reloading the exporter process while it runs: SIGHUP, POST /-/reload, a token file
swapped for what cannot be read, and a rotated token file (what a reload rebuilds, in
the test process: tests/unit/test_reloader.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import Simulator
from tests.conftest import ACCOUNT, APP, TOKEN, add_stream, go_live, sent
from tests.procs import LOOPBACK, child_env, exporter_command
from tests.reloading import RELOAD_OK, TOKEN_ENV, simulated_world, write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

T = TypeVar("T")
RELOAD_TIME = "realtimekit_exporter_config_last_reload_success_timestamp_seconds"


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
    tmp_path: Path,
    config: Path,
    *,
    token: str = TOKEN,
    extra: tuple[str, ...] = (),
    lifecycle: bool = True,
) -> AsyncIterator[Running]:
    """The exporter as a process on a free loopback port (``extra``: more flags; with
    --web.enable-lifecycle if ``lifecycle``); terminated and reaped on the way out."""
    log_path = tmp_path / "exporter.log"
    command = exporter_command(
        "--config.file",
        str(config),
        "--web.listen-address",
        f"{LOOPBACK}:0",
        *(["--web.enable-lifecycle"] if lifecycle else []),
        *extra,
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


async def test_without_the_lifecycle_flag_post_is_refused_and_sighup_reloads(
    tmp_path: Path, sim: Simulator
) -> None:
    """Without --web.enable-lifecycle, POST /-/reload answers 403 saying how to turn it on
    (as Prometheus does) and reloads nothing; SIGHUP still reloads."""
    add_stream(sim, "ls-1")
    add_stream(sim, "ls-2")
    config = write_config(tmp_path / "config.yaml", sim.base_url, ["ls-1"])
    async with exporter_process(tmp_path, config, lifecycle=False) as running:

        async def tracking(ids: set[str]) -> Samples | None:
            got = await running.metrics()
            return got if streams_in(got) == ids else None

        await running.until(lambda: tracking({"ls-1"}), what="ls-1 tracked")
        write_config(config, sim.base_url, ["ls-2"])
        status, body = await running.post_reload()
        assert status == 403
        assert body == "lifecycle APIs are not enabled: start with --web.enable-lifecycle\n"
        assert "configuration reloaded" not in running.log()

        running.proc.send_signal(signal.SIGHUP)
        await running.until(lambda: tracking({"ls-2"}), what="ls-2 tracked after SIGHUP")
        assert "configuration reloaded" in running.log()


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
            frozenset({"credentials": "default"}.items()),
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
        assert "poll.interval: '0s' is not a duration above zero" in rejections[0]
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
    count = "realtimekit_exporter_poll_duration_seconds_count"
    return samples.get((count, frozenset({"credentials": "default"}.items())), 0)


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
