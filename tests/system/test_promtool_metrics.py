"""``promtool check metrics`` on the real exposition, in both formats.

The exporter polls an in-process simulator whose streams cover what the exposition can
hold: live streams, an ERRORED stream, a session that ended with an error, a stream with a
status the exporter does not know (with a quote and a backslash in it), a disabled stream,
unnamed streams, a name that needs escaping, and expect_live in both directions.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.server import Exporter, create_app
from exporter.simulator import REALISTIC, Simulator, World
from tests.conftest import ACCOUNT, APP, TOKEN, make_config
from tests.procs import LOOPBACK, child_env, require_tool

OPENMETRICS = "application/openmetrics-text;version=1.0.0"
ODD_NAME = 'Stage "A" \\ back\nslash, ünïcödé'
ODD_STATUS = 'Paused "by" \\ ops'  # exported upper-cased
LIVE_ID = "ls-live"
ERRORED_ID = "ls-errored"
SESSION_ERROR_ID = "ls-session-error"
UNKNOWN_ID = "ls-unknown"
UNKNOWN_LIVE_ID = "ls-unknown-live"
DISABLED_ID = "ls-disabled"


def build_world() -> World:
    world = World(seed=5, profile=REALISTIC)
    world.populate(ACCOUNT, APP, 6, live=2)  # autopilot streams, some unnamed, some IDLE
    world.create(ACCOUNT, APP, livestream_id=LIVE_ID, name=ODD_NAME, meeting_id="m-1")
    world.go_live(LIVE_ID, viewers=25)
    world.create(ACCOUNT, APP, livestream_id=ERRORED_ID)
    world.fail(ERRORED_ID)  # ERRORED without a session
    world.create(ACCOUNT, APP, livestream_id=SESSION_ERROR_ID, name="Errored session")
    world.go_live(SESSION_ERROR_ID)  # fails after the first poll
    # A status RealtimeKit might add one day (the control interface's /status sets one too).
    world.create(ACCOUNT, APP, livestream_id=UNKNOWN_ID).status = ODD_STATUS
    world.create(ACCOUNT, APP, livestream_id=UNKNOWN_LIVE_ID, name="Unknown, live")
    world.go_live(UNKNOWN_LIVE_ID)
    world.find(UNKNOWN_LIVE_ID).status = "PAUSED"
    world.create(ACCOUNT, APP, livestream_id=DISABLED_ID).disabled = True
    return world


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture
async def expositions() -> dict[str, tuple[str, str]]:
    """Content type and body of /metrics for the text format and for OpenMetrics."""
    world = build_world()
    async with Simulator(world, token=TOKEN) as simulator:
        config = make_config(
            simulator.base_url,
            streams=(LIVE_ID, ERRORED_ID),
            expect={LIVE_ID: True, ERRORED_ID: False},
            discover=True,
            interval=5.0,
        )
        async with Exporter(config) as exporter:
            await exporter.poller.poll_once()
            world.fail(SESSION_ERROR_ID, message="RTMP connection closed by encoder")
            snapshot = await exporter.poller.poll_once()  # fetches the ended session by id
            assert all(app.up for app in snapshot.apps)
            runner = web.AppRunner(
                create_app(registry=exporter.registry, ready=lambda: True), access_log=None
            )
            await runner.setup()
            try:
                site = web.TCPSite(runner, LOOPBACK, 0)
                await site.start()
                port = runner.addresses[0][1]
                got: dict[str, tuple[str, str]] = {}
                async with aiohttp.ClientSession() as http:
                    for fmt, accept in (("text", "*/*"), ("openmetrics", OPENMETRICS)):
                        url = f"http://{LOOPBACK}:{port}/metrics"
                        async with http.get(url, headers={"Accept": accept}) as r:
                            assert r.status == 200
                            got[fmt] = (r.headers["Content-Type"], await r.text())
            finally:
                await runner.cleanup()
    return got


def _values(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _stream(livestream_id: str, **extra: str) -> frozenset[tuple[str, str]]:
    labels = {"account_id": ACCOUNT, "app_id": APP, "livestream_id": livestream_id, **extra}
    return frozenset(labels.items())


def test_exposition_covers_the_cases(expositions: dict[str, tuple[str, str]]) -> None:
    """The streams that make the check meaningful are in the exposition as intended."""
    content_type, text = expositions["text"]
    assert content_type.startswith("text/plain; version=0.0.4")
    assert expositions["openmetrics"][0].startswith("application/openmetrics-text; version=1.0.0")
    values = _values(text)
    info = _stream(LIVE_ID, name=ODD_NAME, meeting_id="m-1")
    assert values[("realtimekit_livestream_info", info)] == 1
    assert values[("realtimekit_livestream_live", _stream(LIVE_ID))] == 1
    assert values[("realtimekit_livestream_expected_live", _stream(LIVE_ID))] == 1
    assert values[("realtimekit_livestream_expected_live", _stream(ERRORED_ID))] == 0
    errored = _stream(ERRORED_ID, status="ERRORED")
    assert values[("realtimekit_livestream_status", errored)] == 1
    assert values[("realtimekit_livestream_session_errored", _stream(SESSION_ERROR_ID))] == 1
    unknown = _stream(UNKNOWN_ID, status=ODD_STATUS.upper())
    assert values[("realtimekit_livestream_status", unknown)] == 1
    assert values[("realtimekit_livestream_live", _stream(UNKNOWN_ID))] == 0
    paused = _stream(UNKNOWN_LIVE_ID, status="PAUSED")
    assert values[("realtimekit_livestream_status", paused)] == 1
    assert values[("realtimekit_livestream_live", _stream(UNKNOWN_LIVE_ID))] == 1
    assert values[("realtimekit_livestream_disabled", _stream(DISABLED_ID))] == 1
    live = [k for k, v in values.items() if k[0] == "realtimekit_livestream_live" and v == 1]
    assert len(live) == 4  # two autopilot streams, LIVE_ID and UNKNOWN_LIVE_ID
    remaining = frozenset({"credentials": "default"}.items())
    assert ("realtimekit_exporter_rate_limit_remaining", remaining) in values


async def _promtool(promtool: str, body: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=child_env(),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(body.encode()), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_text_format_passes_promtool(
    promtool: str, expositions: dict[str, tuple[str, str]]
) -> None:
    """The Prometheus text format lints clean: exit 0, no output."""
    code, out = await _promtool(promtool, expositions["text"][1])
    assert (code, out) == (0, "")


async def test_openmetrics_passes_promtool(
    promtool: str, expositions: dict[str, tuple[str, str]]
) -> None:
    """OpenMetrics lints clean, except for what promtool's text-format parser cannot read.

    ``promtool check metrics`` (2.42 at least) parses only the Prometheus text format. In
    OpenMetrics a counter family is named without ``_total`` in its HELP and TYPE lines
    while its sample carries it, so the text parser sees the sample as a separate,
    untyped family without help, and prints ``<name>_total no help text`` for every
    counter. Exactly those lines are allowed, each only for a counter that has its HELP
    line under the family name; any other line, or an exit code other than 0 or 3 (lint
    problems found), fails.
    """
    body = expositions["openmetrics"][1]
    assert body.endswith("# EOF\n")
    counters = set(re.findall(r"^# TYPE (\S+) counter$", body, flags=re.MULTILINE))
    helped = set(re.findall(r"^# HELP (\S+) \S", body, flags=re.MULTILINE))
    assert counters and counters <= helped
    artefacts = {f"{name}_total no help text" for name in counters}
    code, out = await _promtool(promtool, body)
    problems = [line for line in out.splitlines() if line not in artefacts]
    assert problems == [], out
    assert code == (3 if out else 0), out
