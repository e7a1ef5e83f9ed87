"""The status page in a real headless Chromium: it loads, renders and shows the streams.
``STATUSPAGE_SCREENSHOT=/tmp/page.png`` keeps its screenshot there, to be looked at.

The exporter runs in-process against the simulator (streams taken off the autopilot, so
their state is known); Chromium runs as a subprocess in a session of its own, bounded in
time, and its whole process group is killed on the way out. Needs Debian's ``chromium``
package: skipped without it, failed without it when CI is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.config import (
    ApiConfig,
    AppConfig,
    Config,
    Credentials,
    LivestreamConfig,
    PollConfig,
    RateLimit,
    Secret,
)
from exporter.server import Exporter, create_app
from exporter.simulator import REALISTIC, Faults, Simulator, World
from exporter.simulator.tokens import SimToken
from tests.conftest import TOKEN
from tests.pages import ALLOWED_TAGS, Page
from tests.procs import LOOPBACK, child_env, require_tool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

BROWSER_TIMEOUT = 60.0  # seconds for one Chromium run
WIDTH, HEIGHT = 1280, 1800  # tall enough for the whole page: the screenshot shows it all
HOSTILE_NAME = '<script>document.title="pwned"</script> & "Bühne" 🎤'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Where to keep the screenshot for a person to look at (the test's own is temporary).
SCREENSHOT_ENV = "STATUSPAGE_SCREENSHOT"
# Ids as RealtimeKit has them (32 hex digits for an account, UUIDs for the rest): the
# page must show each on one line.
ACCOUNT_ID = "5c9b1e2a7f4d4e0b9a3c6d8e1f2a4b6c"
APP_MAIN = "7d1f0c3e-2a9b-4c8d-9e6f-1a2b3c4d5e6f"
APP_TENANT = "b2e4f6a8-0c1d-4e3f-8a5b-7c9d1e3f5a7b"
LIVE = "0b8c5a2e-6f1d-4c3b-9e7a-2d4f6b8a0c1e"
IDLE = "1c9d6b3f-7a2e-4d4c-8f8b-3e5a7c9b1d2f"  # expected live: not live
FAILING = "2d0e7c4a-8b3f-4e5d-9a9c-4f6b8d0c2e3a"
OFFLINE = "3e1f8d5b-9c4a-4f6e-8b0d-5a7c9e1d3f4b"
ODD = "4f2a9e6c-0d5b-4a7f-9c1e-6b8d0f2e4a5c"
GONE = "5a3b0f7d-1e6c-4b8a-8d2f-7c9e1a3f5b6d"  # configured, not in the listing
TENANT_LIVE = "6b4c1a8e-2f7d-4c9b-9e3a-8d0f2b4a6c7e"
TENANT_IDLE = "7c5d2b9f-3a8e-4dac-8f4b-9e1a3c5b7d8f"
TOKEN_B = "tenant-b-token-4e7a1c9d2b"


def build_world() -> World:
    """Streams in every state the page distinguishes, all off the autopilot: an app read
    with the default token, and one read with tenant-b's."""
    world = World(seed=5, profile=REALISTIC)
    world.create(ACCOUNT_ID, APP_MAIN, livestream_id=LIVE, name="Main stage")
    world.go_live(LIVE, viewers=40)
    world.create(ACCOUNT_ID, APP_MAIN, livestream_id=IDLE, name=HOSTILE_NAME)
    world.stop(IDLE, status="IDLE")
    world.create(ACCOUNT_ID, APP_MAIN, livestream_id=FAILING, name="Encoder test")
    world.go_live(FAILING, viewers=5)
    world.create(ACCOUNT_ID, APP_MAIN, livestream_id=OFFLINE)  # unnamed, never live
    world.create(ACCOUNT_ID, APP_MAIN, livestream_id=ODD, name="Odd one")
    world.set_status(ODD, "MAINTENANCE")
    world.create(ACCOUNT_ID, APP_TENANT, livestream_id=TENANT_LIVE, name="Tenant keynote")
    world.go_live(TENANT_LIVE, viewers=12)
    world.create(ACCOUNT_ID, APP_TENANT, livestream_id=TENANT_IDLE, name="Tenant rehearsal")
    world.stop(TENANT_IDLE, status="IDLE")
    return world


def page_config(base_url: str) -> Config:
    main = AppConfig(
        account_id=ACCOUNT_ID,
        app_id=APP_MAIN,
        discover=True,
        livestreams=(
            LivestreamConfig(LIVE, expect_live=True),
            LivestreamConfig(IDLE, expect_live=True),
            LivestreamConfig(GONE),
        ),
    )
    tenant = AppConfig(
        account_id=ACCOUNT_ID, app_id=APP_TENANT, discover=True, credentials="tenant-b"
    )
    return Config(
        api=ApiConfig(token=Secret(TOKEN), base_url=base_url, timeout=2.0),
        poll=PollConfig(interval=30.0),
        apps=(main, tenant),
        credentials=(
            Credentials(name="tenant-b", token=Secret(TOKEN_B), rate_limit=RateLimit(600, 300.0)),
        ),
    )


async def run_browser(chromium: str, workdir: Path, *args: str) -> tuple[bytes, str]:
    """Run Chromium headless with ``args``; its stdout and stderr. The process group is
    killed whatever happens (Chromium leaves helpers behind otherwise)."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--hide-scrollbars",
        f"--user-data-dir={workdir / 'profile'}",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
    ]
    home = str(workdir / "home")
    env = child_env({"HOME": home, "XDG_CONFIG_HOME": home, "XDG_CACHE_HOME": home})
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(BROWSER_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT:g} s: {args}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    text = err.decode(errors="replace")
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}:\n{text[-3000:]}"
    return out, text


def png_facts(data: bytes) -> tuple[int, int, int]:
    """Width, height and the number of distinct bytes in the image data of a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    idat = bytearray()
    at = 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind == b"IDAT":
            idat += data[at + 8 : at + 8 + length]
        at += 12 + length
    pixels = zlib.decompress(bytes(idat))
    return width, height, len(set(pixels))


@contextlib.asynccontextmanager
async def exporter_serving(world: World) -> AsyncIterator[tuple[str, Exporter]]:
    """The exporter polling ``world`` (two cycles: in between, the failing stream fails
    with a message that quotes its stream key, and tenant-b's token is revoked), with its
    HTTP app on a free loopback port."""
    tokens = (SimToken("b", TOKEN_B, frozenset({ACCOUNT_ID})),)
    async with Simulator(world, token=TOKEN, tokens=tokens, ip_limiter="off") as simulator:
        config = page_config(simulator.base_url)
        async with Exporter(config, registry=CollectorRegistry()) as exporter:
            await exporter.poller.poll_once()
            key = world.find(FAILING).stream_key
            world.fail(FAILING, message=f"RTMP handshake rejected for stream key {key}")
            simulator.state.faults = Faults(rejected_tokens=("b",))
            snapshot = await exporter.poller.poll_once()  # the ended session's final values
            assert [app.up for app in snapshot.apps] == [True, False]
            app = create_app(
                registry=exporter.registry,
                ready=lambda: exporter.poller.ready,
                status=exporter.poller,
                refresh=config.poll.interval,
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, LOOPBACK, 0)
                await site.start()
                yield f"http://{LOOPBACK}:{runner.addresses[0][1]}/", exporter
            finally:
                await runner.cleanup()


@pytest.mark.timeout(2 * BROWSER_TIMEOUT + 30)
async def test_chromium_renders_the_status_page() -> None:
    """Chromium loads /, takes a screenshot that is not blank, and its DOM holds every
    simulated stream with its name, id and status; the session error (its stream key
    redacted), the last session of a stream that is not live, the expected live stream
    that is not live, both apps (one down) and both credentials; and no script. With
    STATUSPAGE_SCREENSHOT set, the screenshot is kept there, for a person to look at."""
    chromium = require_tool("chromium")
    world = build_world()
    with tempfile.TemporaryDirectory(prefix="statuspage-browser-") as tmp:
        workdir = Path(tmp)
        async with exporter_serving(world) as (url, _):
            started = time.monotonic()
            dom, _ = await run_browser(chromium, workdir, "--dump-dom", url)
            shot = workdir / "page.png"
            _, log = await run_browser(chromium, workdir, f"--screenshot={shot}", url)
            took = time.monotonic() - started

        assert shot.is_file(), f"no screenshot was written (took {took:.1f} s):\n{log[-3000:]}"
        width, height, distinct = png_facts(shot.read_bytes())
        assert (width, height) == (WIDTH, HEIGHT)
        assert shot.stat().st_size > 10_000 and distinct > 16, "the screenshot looks blank"
        if keep := os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(shot, keep)

    page = Page(dom.decode())
    assert not {tag for tag, _ in page.tags} - ALLOWED_TAGS, "a value became markup"
    main, tenant = page.apps[(ACCOUNT_ID, APP_MAIN)], page.apps[(ACCOUNT_ID, APP_TENANT)]
    assert (main["state"], main["tracked"], main["expected-down"]) == ("up", "5", "1")
    assert (tenant["state"], tenant["credentials"]) == ("down", "tenant-b")
    for app in (APP_MAIN, APP_TENANT):
        streams = world.streams(ACCOUNT_ID, app) or []
        for sim in streams:
            row = page.rows[sim.id]
            assert (row["id"], row["name"], row["status"]) == (sim.id, sim.name or "—", sim.status)
    assert page.rows[IDLE]["name"] == HOSTILE_NAME
    assert page.rows[IDLE]["live"] == "no expected live"
    assert page.rows[LIVE]["live"] == "yes expected"
    assert page.rows[LIVE]["since"] != "—"
    failing = page.rows[FAILING]
    assert failing["status"] == "ERRORED"
    assert failing["last-session"].startswith("last session ended ")
    assert failing["last-session"].endswith(
        "error: RTMP handshake rejected for stream key <redacted>"
    )
    assert page.rows[ODD]["status"] == "MAINTENANCE"
    assert page.rows[GONE]["status"] == "not in listing"
    assert [row[0] for row in page.table("credentials")] == ["default", "tenant-b"]
    assert [row[3] for row in page.table("credentials")] == ["1000 per 300 s", "600 per 300 s"]
    assert "The last poll of this app failed" in page.text
    for secret in (TOKEN, TOKEN_B, *world.secrets()):
        assert secret not in page.text
