"""The poller's log lines, through a whole exporter against the simulated API: a stream's
error told once with its message (redacted) and its name, streams named by name as well as
id (escaped by the formatter), and at debug one summary per cycle and credentials plus one
line per API request."""

from __future__ import annotations

import json
import logging
import re
from typing import Final

import pytest
from prometheus_client import CollectorRegistry

from exporter import logs
from exporter.config import ApiConfig, AppConfig, Config, Credentials, PollConfig, Secret
from exporter.server import Exporter
from exporter.simulator import Simulator, World
from exporter.simulator.tokens import SimToken
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, API_T0, APP, TOKEN, add_stream, go_live, make_config

TOKEN_B: Final = "tenant-b-token-0d6c2f9e81a4"
HOSTILE_NAME: Final = 'Bühne "A"\nlevel=error msg=forged\r\x1b[2Jx'


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_a_stream_error_is_logged_once_with_its_message_and_name(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A live stream that fails: one warning, naming the stream by id and name, with the
    session's err_message (its stream key redacted); none on the cycles after. Failing
    again in a new session is a new warning; a stream that turns ERRORED without a live
    session is told once too, with no message."""
    caplog.set_level(logging.INFO, logger="exporter")
    add_stream(sim, "ls-1", name="Main stage")
    add_stream(sim, "ls-2", name="Backup")
    go_live(sim, "ls-1")
    config = make_config(sim.base_url, streams=("ls-1", "ls-2"))
    async with Exporter(config, registry=CollectorRegistry(), process_metrics=False) as exporter:
        await exporter.poller.poll_once()
        key = sim.world.find("ls-1").stream_key
        sim.world.fail("ls-1", message=f"RTMP auth failed for key {key}")
        sim.world.set_status("ls-2", "ERRORED")
        for _ in range(3):
            await exporter.poller.poll_once()
        [stopped] = lines(caplog, "stopped being LIVE")
        assert stopped.levelno == logging.WARNING
        assert stopped.getMessage() == (
            "livestream stopped being LIVE (status ERRORED): RTMP auth failed for key <redacted>"
        )
        assert (stopped.__dict__["livestream_id"], stopped.__dict__["livestream_name"]) == (
            "ls-1",
            "Main stage",
        )
        [other] = lines(caplog, "in error")
        assert other.getMessage() == (
            "livestream is in error (status ERRORED): no error message (yet)"
        )
        assert other.__dict__["livestream_name"] == "Backup"
        assert key not in caplog.text

        go_live(sim, "ls-1")
        await exporter.poller.poll_once()
        sim.world.fail("ls-1", message="Ingest timeout")
        await exporter.poller.poll_once()
        await exporter.poller.poll_once()
        assert [r.getMessage() for r in lines(caplog, "stopped being LIVE")][1:] == [
            "livestream stopped being LIVE (status ERRORED): Ingest timeout"
        ]
        assert len(lines(caplog, "went LIVE")) == 1


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
async def test_streams_are_named_by_name_and_the_formatter_escapes_it(
    sim: Simulator, caplog: pytest.LogCaptureFixture, fmt: logs.Format
) -> None:
    """A line about a stream carries livestream_id and livestream_name; a name with quotes,
    a newline, a carriage return and a terminal escape stays inside its field of one
    line, and reads back as it was (logfmt: its escapes; JSON: parsed)."""
    caplog.set_level(logging.INFO, logger="exporter")
    add_stream(sim, "ls-1", name=HOSTILE_NAME)
    config = make_config(sim.base_url, streams=("ls-1",))
    async with Exporter(config, registry=CollectorRegistry(), process_metrics=False) as exporter:
        await exporter.poller.poll_once()
        go_live(sim, "ls-1")
        await exporter.poller.poll_once()
    [record] = lines(caplog, "went LIVE")
    formatter = logs.JsonFormatter(tuple) if fmt == "json" else logs.LogfmtFormatter(tuple)
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    if fmt == "json":
        parsed = json.loads(line)
        assert (parsed["livestream_id"], parsed["livestream_name"]) == ("ls-1", HOSTILE_NAME)
        return
    match = re.fullmatch(
        r'ts=\S+ level=info logger=exporter.poller msg="livestream went LIVE" account_id=acc-1 '
        r'app_id=app-1 livestream_id=ls-1 livestream_name="((?:[^"\\]|\\.)*)"',
        line,
    )
    assert match is not None, line
    assert json.loads(f'"{match[1]}"') == HOSTILE_NAME  # the escapes are JSON's, \u001b too


def two_tokens() -> Simulator:
    world = World(clock=FakeClock(API_T0))
    world.populate(ACCOUNT, APP, 0)
    world.populate(ACCOUNT, "app-2", 0)
    for app, sid in ((APP, "ls-a"), ("app-2", "ls-b")):
        world.create(ACCOUNT, app, livestream_id=sid)
        world.go_live(sid)
    return Simulator(
        world, token=TOKEN, tokens=(SimToken("b", TOKEN_B, frozenset({ACCOUNT})),), ip_limiter="off"
    )


def two_credentials(base_url: str) -> Config:
    return Config(
        api=ApiConfig(token=Secret(TOKEN), base_url=base_url, timeout=2.0),
        poll=PollConfig(interval=30.0),
        apps=(
            AppConfig(account_id=ACCOUNT, app_id=APP, discover=True),
            AppConfig(account_id=ACCOUNT, app_id="app-2", discover=True, credentials="tenant-b"),
        ),
        credentials=(Credentials(name="tenant-b", token=Secret(TOKEN_B)),),
    )


async def test_debug_adds_a_summary_per_cycle_and_credentials_and_a_line_per_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At debug, each credentials' cycle ends with one line: its apps, the requests sent
    since the last such line by endpoint, the duration and the plan; each request is one
    line with method, endpoint, status and milliseconds, and never the token or a query.
    At info, neither."""
    async with two_tokens() as sim:
        config = two_credentials(sim.base_url)
        async with Exporter(config, registry=CollectorRegistry(), process_metrics=False) as e:
            caplog.set_level(logging.INFO, logger="exporter")
            await e.poller.poll_once()
            assert not lines(caplog, "poll cycle done") and not lines(caplog, "API request")
            caplog.clear()
            caplog.set_level(logging.DEBUG, logger="exporter")
            await e.poller.poll_once()
        summaries = lines(caplog, "poll cycle done")
        assert sorted(r.__dict__["credentials"] for r in summaries) == ["default", "tenant-b"]
        for record in summaries:
            text = re.sub(r"done in [0-9.]+s", "done in Xs", record.getMessage())
            # Since the cycle before (logged at info) ended: this cycle's requests.
            assert text == (
                "poll cycle done in Xs: 1 apps (1 up), 2 requests "
                "(active_livestream_session=1 livestreams=1); plan full"
            ), text
        requests = lines(caplog, "API request")
        assert len(requests) == len(sim.state.log) - 4  # the first cycle's 4 were at info
        for record in requests:
            assert re.fullmatch(
                r"API request GET (livestreams|active_livestream_session): 200 in \d+ ms",
                record.getMessage(),
            ), record.getMessage()
        assert TOKEN not in caplog.text and TOKEN_B not in caplog.text
        assert "page_no" not in caplog.text and "?" not in caplog.text
