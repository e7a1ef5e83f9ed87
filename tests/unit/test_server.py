"""The real HTTP server on loopback, polling the fake API, scraped like Prometheus would."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import socket
import zlib
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import Exposition
from exporter.reload import Reloader
from exporter.server import STOPPING, Exporter, ServeError, Server, create_app
from exporter.simulator import Faults, Simulator
from exporter.simulator.world import STREAM_KEY_PREFIX
from tests.conftest import ACCOUNT, APP, TOKEN, add_stream, go_live, make_config, sent
from tests.reloading import TOKEN_ENV, GatedExecutor, exporter_for, write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from exporter.config import Config


class Running:
    def __init__(self, server: Server, http: aiohttp.ClientSession) -> None:
        self.server = server
        self.http = http
        host, port = server.addresses[0]
        self.url = f"http://{host}:{port}"

    async def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        sent = {"Accept-Encoding": "identity", **headers}
        async with self.http.get(self.url + path, headers=sent) as response:
            return response.status, dict(response.headers), await response.read()

    async def wait_ready(self) -> None:
        async with asyncio.timeout(10):
            while (await self.get("/-/ready"))[0] != 200:
                await asyncio.sleep(0.01)


async def start(config: Config) -> AsyncIterator[Running]:
    async with Exporter(config, registry=CollectorRegistry()) as exporter:
        server = Server(exporter, host="127.0.0.1", port=0)
        await server.start()
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                yield Running(server, http)
        finally:
            await server.close()


@pytest.fixture
async def running(sim: Simulator) -> AsyncIterator[Running]:
    s1 = add_stream(sim, "ls-1", name="Main stage", meeting_id="m-1")
    add_stream(sim, "ls-2", status="OFFLINE")
    sim.state.faults = Faults(numbers_as_strings=True)  # as the counters' declared type
    go_live(sim, s1, ingest=116.11599994199997, viewer=300)
    config = make_config(sim.base_url, streams=("ls-1", "ls-2"), expect={"ls-1": True})
    async for r in start(config):
        yield r


def parse(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def labels(stream: str | None = None, **extra: str) -> frozenset[tuple[str, str]]:
    base = {"account_id": ACCOUNT, "app_id": APP, **extra}
    if stream is not None:
        base["livestream_id"] = stream
    return frozenset(base.items())


async def test_metrics_show_the_polled_streams(running: Running, sim: Simulator) -> None:
    """After the first cycle /metrics carries every stream, app and exporter metric."""
    await running.wait_ready()
    status, headers, body = await running.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = parse(body)
    assert got[("realtimekit_livestream_live", labels("ls-1"))] == 1
    assert got[("realtimekit_livestream_live", labels("ls-2"))] == 0
    assert got[("realtimekit_livestream_ingest_seconds", labels("ls-1"))] == 116.11599994199997
    assert got[("realtimekit_livestream_viewer_seconds", labels("ls-1"))] == 300
    assert got[("realtimekit_livestream_status", labels("ls-2", status="OFFLINE"))] == 1
    assert got[("realtimekit_livestream_expected_live", labels("ls-1"))] == 1
    assert (
        got[("realtimekit_livestream_info", labels("ls-1", name="Main stage", meeting_id="m-1"))]
        == 1
    )
    assert got[("realtimekit_up", labels())] == 1
    assert got[("realtimekit_exporter_livestreams_tracked", labels())] == 2
    requests = "realtimekit_exporter_api_requests_total"
    default = {"credentials": "default"}
    listing = {**default, "api_endpoint": "livestreams", "code": "200"}
    assert got[(requests, frozenset(listing.items()))] == 1
    session = {**default, "api_endpoint": "active_livestream_session", "code": "200"}
    assert got[(requests, frozenset(session.items()))] == 1
    assert ("realtimekit_exporter_poll_duration_seconds_count", frozenset(default.items())) in got
    assert any(name == "realtimekit_exporter_build_info" for name, _ in got)
    assert ("process_cpu_seconds_total", frozenset()) in got
    assert not any(name.endswith("_created") for name, _ in got)
    assert b"# EOF" not in body


async def test_scrapes_never_call_the_api(running: Running, sim: Simulator) -> None:
    """Scraping serves the cached snapshot: the API sees no request from a scrape."""
    await running.wait_ready()
    before = sent(sim)
    for _ in range(5):
        assert (await running.get("/metrics"))[0] == 200
    assert sent(sim) == before


async def test_openmetrics_by_accept_header(running: Running) -> None:
    """Accept: application/openmetrics-text gets OpenMetrics, ending in # EOF."""
    await running.wait_ready()
    status, headers, body = await running.get(
        "/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"realtimekit_livestream_live{" in body


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [("gzip", True), ("deflate, gzip;q=0.5", True), ("gzip;q=0", False), ("identity", False)],
    ids=["gzip", "gzip-among-others", "gzip-refused", "identity"],
)
async def test_gzip_when_asked(running: Running, accept_encoding: str, gzipped: bool) -> None:
    """Accept-Encoding: gzip compresses the exposition; otherwise it is sent plain."""
    await running.wait_ready()
    status, headers, body = await running.get("/metrics", **{"Accept-Encoding": accept_encoding})
    assert status == 200
    if gzipped:
        assert headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(body)
    else:
        assert "Content-Encoding" not in headers
    assert b"realtimekit_up{" in body


async def test_health_landing_and_unknown_paths(running: Running) -> None:
    """/-/healthy is 200, / links the endpoints, other paths are 404."""
    assert (await running.get("/-/healthy"))[0] == 200
    status, headers, body = await running.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for link in (b'href="/metrics"', b'href="/-/healthy"', b'href="/-/ready"'):
        assert link in body
    assert (await running.get("/nope"))[0] == 404


async def test_head_gets_the_headers_alone_and_the_connection_stays_usable(
    running: Running,
) -> None:
    """HEAD /metrics and HEAD / answer with the headers (and the body's length) but no
    body, so the next request on the same keep-alive connection reads its own answer
    (a body sent after HEAD's headers was read as the next status line)."""
    await running.wait_ready()
    host, port = running.server.addresses[0]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for path in ("/metrics", "/"):
            writer.write(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = re.search(rb"Content-Length: (\d+)", head)
            assert length is not None and int(length[1]) > 0
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(3) == b"OK\n"
    finally:
        writer.close()


async def test_not_ready_until_first_cycle_and_slow_api_never_stalls_metrics(
    sim: Simulator,
) -> None:
    """While the API hangs, /-/ready is 503 and /metrics still answers at once."""
    add_stream(sim, "ls-1")
    sim.state.faults = Faults(hold=True)
    async for running in start(make_config(sim.base_url, streams=("ls-1",), timeout=30)):
        async with asyncio.timeout(10):
            while not sim.state.log:
                await asyncio.sleep(0.01)
        status, _, body = await running.get("/-/ready")
        assert status == 503 and b"not ready" in body
        async with asyncio.timeout(5):
            status, _, body = await running.get("/metrics")
        assert status == 200 and b"realtimekit_livestream_live{" not in body
        sim.state.faults = Faults()
        await running.wait_ready()
        assert b"realtimekit_livestream_live{" in (await running.get("/metrics"))[2]


async def test_no_secret_reaches_pages_or_logs(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the token nor any stream key shows up on any page or in any log line."""
    caplog.set_level(logging.DEBUG)
    sim.world.go_live(add_stream(sim, "ls-1"))
    async for running in start(make_config(sim.base_url, discover=True)):
        await running.wait_ready()
        pages = [await running.get(p) for p in ("/metrics", "/", "/-/ready", "/-/healthy")]
        for _, _, body in pages:
            assert TOKEN.encode() not in body and STREAM_KEY_PREFIX.encode() not in body
            assert b"rtmps://" not in body
    assert TOKEN not in caplog.text and STREAM_KEY_PREFIX not in caplog.text


async def test_close_releases_the_port(sim: Simulator) -> None:
    """After close() the listening port accepts no connection."""
    async for running in start(make_config(sim.base_url, discover=True)):
        port = running.server.addresses[0][1]
        await running.server.close()
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            pass


async def test_address_in_use_is_a_serve_error(sim: Simulator) -> None:
    """Binding a port already taken raises ServeError with the address, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with Exporter(
            make_config(sim.base_url, discover=True), registry=CollectorRegistry()
        ) as exporter:
            server = Server(exporter, host="127.0.0.1", port=port)
            with pytest.raises(ServeError, match=f"127.0.0.1:{port}"):
                await server.start()


async def test_poller_ending_by_itself_stops_the_server_as_a_failure(sim: Simulator) -> None:
    """A poller cancelled by something other than shutdown stops the server with a failure."""
    async for running in start(make_config(sim.base_url, discover=True)):
        await running.wait_ready()
        task = running.server._poll_task  # the only handle on the poller; no public one needed
        assert task is not None
        task.cancel()
        await asyncio.wait_for(running.server.wait(), timeout=5)
        assert isinstance(running.server.failure, RuntimeError)


# -- the exposition: snapshot part cached per snapshot, own part per scrape -------------
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


async def scrape(running: Running, accept: str, *, gzipped: bool) -> tuple[dict[str, str], str]:
    """Headers and decompressed text of /metrics; a gzip body must be one gzip member."""
    status, headers, body = await running.get(
        "/metrics", Accept=accept, **{"Accept-Encoding": "gzip" if gzipped else "identity"}
    )
    assert status == 200
    assert headers["Vary"] == "Accept, Accept-Encoding"
    if gzipped:
        assert headers["Content-Encoding"] == "gzip"
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        body = decompressor.decompress(body)
        assert decompressor.eof and decompressor.unused_data == b""
    else:
        assert "Content-Encoding" not in headers
    return headers, body.decode()


def families_of(text: str, *, openmetrics: bool) -> dict[str, Any]:
    """Each family's type and samples (values left out for process and GC metrics, which
    change between renders)."""
    parse_families = parse_openmetrics if openmetrics else text_string_to_metric_families
    out: dict[str, Any] = {}
    for family in parse_families(text):
        varying = family.name.startswith(("process_", "python_gc_"))
        out[family.name] = (
            family.type,
            {
                (s.name, frozenset(s.labels.items())): None if varying else s.value
                for s in family.samples
            },
        )
    return out


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
async def test_a_scrape_holds_the_families_of_the_whole_registry(
    sim: Simulator, openmetrics: bool, gzipped: bool
) -> None:
    """A scrape parses to the families of a fresh render of ``Exporter.registry`` (what
    --once prints), in either format, plain or gzip."""
    s1 = add_stream(sim, "ls-1", name="Main stage")
    add_stream(sim, "ls-2", status="PAUSED")
    go_live(sim, s1, ingest=12, viewer=34)
    config = make_config(sim.base_url, streams=("ls-1", "ls-2", "ls-gone"), discover=True)
    async for running in start(config):  # polls every 30 s: one cycle during the test
        await running.wait_ready()
        registry = running.server._exporter.registry  # the only handle; no public one needed
        headers, text = await scrape(running, OPENMETRICS if openmetrics else "", gzipped=gzipped)
        if openmetrics:
            assert headers["Content-Type"].startswith("application/openmetrics-text")
            fresh = generate_openmetrics(registry).decode()
        else:
            assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
            fresh = generate_latest(registry).decode()
        got = families_of(text, openmetrics=openmetrics)
        assert got == families_of(fresh, openmetrics=openmetrics)
        for name in (
            "realtimekit_livestream_live",
            "realtimekit_livestream_unlisted",
            "realtimekit_exporter_api_requests",
            "process_cpu_seconds",
        ):
            assert name in got


async def test_the_own_part_moves_between_scrapes_of_one_snapshot(sim: Simulator) -> None:
    """The exporter's own metrics are current in every scrape; the snapshot's stay those
    of the last cycle."""
    add_stream(sim, "ls-1")
    async for running in start(make_config(sim.base_url, discover=True)):
        await running.wait_ready()
        for gzipped in (False, True):
            before = parse((await scrape(running, "", gzipped=gzipped))[1].encode())
            running.server._exporter.metrics.request("livestreams", "200", 0.1)
            after = parse((await scrape(running, "", gzipped=gzipped))[1].encode())
            key = (
                "realtimekit_exporter_api_requests_total",
                frozenset(
                    {"credentials": "default", "api_endpoint": "livestreams", "code": "200"}.items()
                ),
            )
            assert after[key] == before[key] + 1
            snapshot_part = ("realtimekit_livestream_last_update_timestamp_seconds", labels("ls-1"))
            assert after[snapshot_part] == before[snapshot_part]


async def test_each_poll_cycle_tells_the_exposition(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller's cycle reaches Exposition.published (which renders ahead what was
    scraped), and still counts the cycle."""
    add_stream(sim, "ls-1")
    registry = CollectorRegistry()
    exporter = Exporter(make_config(sim.base_url, discover=True), registry=registry)
    told: list[int] = []
    published = exporter.exposition.published

    def counting() -> None:
        told.append(exporter.poller.snapshot.cycles)  # the new snapshot is out already
        published()

    monkeypatch.setattr(exporter.exposition, "published", counting)
    async with exporter as e:
        await e.poller.poll_once()
        await e.poller.poll_once()
        assert told == [1, 2]
        count = "realtimekit_exporter_poll_duration_seconds_count"
        assert registry.get_sample_value(count, {"credentials": "default"}) == 2


def test_create_app_takes_one_source_for_metrics() -> None:
    """/metrics serves an exposition or a registry, never both, never neither."""
    registry = CollectorRegistry()
    with pytest.raises(TypeError):
        create_app(ready=lambda: True)
    with pytest.raises(TypeError):
        create_app(ready=lambda: True, registry=registry, exposition=Exposition(registry))


async def test_a_reload_asked_for_completes_though_its_client_hangs_up(
    tmp_path: Path, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /-/reload whose client goes away mid-reload: the reload still runs to its end
    (the server cancels the requests of clients that are gone; a reload is not cut)."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    path = write_config(tmp_path / "c.yaml", sim.base_url, ["ls-1"])
    loaded_at = "realtimekit_exporter_config_last_reload_success_timestamp_seconds"
    async with exporter_for(path) as (exporter, _, registry):
        loads = GatedExecutor()
        reloader = Reloader(
            exporter=exporter, config_file=str(path), executor=loads, clock=lambda: 12345.0
        )
        server = Server(exporter, host="127.0.0.1", port=0, reload=reloader.reload)
        await server.start()
        try:
            host, port = server.addresses[0]
            _, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            async with asyncio.timeout(5):
                while loads.loads < 1:  # the reload is under way
                    await asyncio.sleep(0.01)
                writer.close()
                await writer.wait_closed()
                while registry.get_sample_value("realtimekit_exporter_http_connections") != 0:
                    await asyncio.sleep(0.01)  # until the server has seen the client go
                loads.gate.set()
                while registry.get_sample_value(loaded_at) != 12345.0:
                    await asyncio.sleep(0.01)
        finally:
            await server.close()


async def test_requests_that_come_while_stopping_get_503() -> None:
    """Once a stop has begun, /metrics and / answer 503 with Connection: close (their
    renders are no longer taken) while /-/healthy still answers."""
    app = create_app(ready=lambda: True, registry=CollectorRegistry())
    app[STOPPING].set()
    async with TestClient(TestServer(app)) as client:
        for path in ("/metrics", "/"):
            response = await client.get(path)
            assert response.status == 503, path
            assert response.headers["Connection"] == "close"
        assert (await client.get("/-/healthy")).status == 200
