"""The status page in a real headless Chromium: it loads, renders and shows the streams.

The exporter runs in-process against the simulator (streams taken off the autopilot, so
their state is known); Chromium runs as a subprocess in a session of its own, bounded in
time, and its whole process group is killed on the way out. Needs Debian's ``chromium``
package: skipped without it, failed without it when CI is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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

from exporter.server import Exporter, create_app
from exporter.simulator import REALISTIC, Simulator, World
from tests.conftest import ACCOUNT, APP, TOKEN, make_config
from tests.pages import ALLOWED_TAGS, Page
from tests.procs import LOOPBACK, child_env, require_tool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

BROWSER_TIMEOUT = 60.0  # seconds for one Chromium run
WIDTH, HEIGHT = 1280, 900
HOSTILE_NAME = '<script>document.title="pwned"</script> & "Bühne" 🎤'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def build_world() -> World:
    """Streams in every state the page distinguishes, all off the autopilot."""
    world = World(seed=5, profile=REALISTIC)
    world.create(ACCOUNT, APP, livestream_id="ls-live", name="Main stage")
    world.go_live("ls-live", viewers=40)
    world.create(ACCOUNT, APP, livestream_id="ls-idle", name=HOSTILE_NAME)
    world.stop("ls-idle", status="IDLE")
    world.create(ACCOUNT, APP, livestream_id="ls-failing", name="Encoder test")
    world.go_live("ls-failing", viewers=5)
    world.create(ACCOUNT, APP, livestream_id="ls-offline")  # unnamed, never live
    world.create(ACCOUNT, APP, livestream_id="ls-odd", name="Odd one")
    world.set_status("ls-odd", "MAINTENANCE")
    return world


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
    """The exporter polling ``world`` (two cycles: ls-failing fails in between), with
    its HTTP app on a free loopback port."""
    async with Simulator(world, token=TOKEN) as simulator:
        config = make_config(
            simulator.base_url, streams=("ls-live", "ls-gone"), discover=True, interval=30.0
        )
        async with Exporter(config, registry=CollectorRegistry()) as exporter:
            await exporter.poller.poll_once()
            world.fail("ls-failing", message="RTMP connection closed by encoder")
            snapshot = await exporter.poller.poll_once()  # the ended session's final values
            assert all(app.up for app in snapshot.apps)
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
    """Chromium loads /, takes a 1280x900 screenshot that is not blank, and its DOM holds
    every simulated stream with its name, id and status, the app up, and no script."""
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

    page = Page(dom.decode())
    assert not {tag for tag, _ in page.tags} - ALLOWED_TAGS, "a value became markup"
    assert page.apps[(ACCOUNT, APP)]["state"] == "up"
    assert page.apps[(ACCOUNT, APP)]["tracked"] == "5"
    streams = world.streams(ACCOUNT, APP) or []
    assert len(streams) == 5
    for sim in streams:
        row = page.rows[sim.id]
        assert (row["id"], row["name"], row["status"]) == (sim.id, sim.name or "—", sim.status)
    assert page.rows["ls-idle"]["name"] == HOSTILE_NAME
    assert page.rows["ls-live"]["live"] == "yes"
    assert page.rows["ls-live"]["since"] != "—"
    assert page.rows["ls-failing"]["status"] == "ERRORED"
    assert page.rows["ls-failing"]["errored"] == "yes"
    assert page.rows["ls-odd"]["status"] == "MAINTENANCE"
    assert page.rows["ls-gone"]["status"] == "not in listing"
    for secret in (TOKEN, *world.secrets()):
        assert secret not in page.text
