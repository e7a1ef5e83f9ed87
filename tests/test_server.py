"""The real HTTP server on loopback, polling the fake API, scraped like Prometheus would."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.server import Exporter, ServeError, Server
from tests.conftest import ACCOUNT, APP, make_config
from tests.fakeapi import STREAM_KEY_PREFIX, TOKEN, FakeApi, FakeStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

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
async def running(fake_api: FakeApi) -> AsyncIterator[Running]:
    s1 = fake_api.add(ACCOUNT, APP, FakeStream("ls-1", name="Main stage", meeting_id="m-1"))
    fake_api.add(ACCOUNT, APP, FakeStream("ls-2", status="OFFLINE"))
    fake_api.go_live(s1, ingest="116.11599994199997", viewer=300)
    config = make_config(fake_api.base_url, streams=("ls-1", "ls-2"), expect={"ls-1": True})
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


async def test_metrics_show_the_polled_streams(running: Running, fake_api: FakeApi) -> None:
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
    assert got[(requests, frozenset({"api_endpoint": "livestreams", "code": "200"}.items()))] == 1
    assert (
        got[
            (
                requests,
                frozenset({"api_endpoint": "active_livestream_session", "code": "200"}.items()),
            )
        ]
        == 1
    )
    assert ("realtimekit_exporter_poll_duration_seconds_count", frozenset()) in got
    assert any(name == "realtimekit_exporter_build_info" for name, _ in got)
    assert ("process_cpu_seconds_total", frozenset()) in got
    assert not any(name.endswith("_created") for name, _ in got)
    assert b"# EOF" not in body


async def test_scrapes_never_call_the_api(running: Running, fake_api: FakeApi) -> None:
    """Scraping serves the cached snapshot: the API sees no request from a scrape."""
    await running.wait_ready()
    before = len(fake_api.requests)
    for _ in range(5):
        assert (await running.get("/metrics"))[0] == 200
    assert len(fake_api.requests) == before


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


async def test_not_ready_until_first_cycle_and_slow_api_never_stalls_metrics(
    fake_api: FakeApi,
) -> None:
    """While the API hangs, /-/ready is 503 and /metrics still answers at once."""
    fake_api.add(ACCOUNT, APP, FakeStream("ls-1"))
    fake_api.gate = asyncio.Event()
    async for running in start(make_config(fake_api.base_url, streams=("ls-1",), timeout=30)):
        async with asyncio.timeout(10):
            while not fake_api.requests:
                await asyncio.sleep(0.01)
        status, _, body = await running.get("/-/ready")
        assert status == 503 and b"not ready" in body
        async with asyncio.timeout(5):
            status, _, body = await running.get("/metrics")
        assert status == 200 and b"realtimekit_livestream_live{" not in body
        fake_api.gate.set()
        await running.wait_ready()
        assert b"realtimekit_livestream_live{" in (await running.get("/metrics"))[2]


async def test_no_secret_reaches_pages_or_logs(
    fake_api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the token nor any stream key shows up on any page or in any log line."""
    caplog.set_level(logging.DEBUG)
    s = fake_api.add(ACCOUNT, APP, FakeStream("ls-1"))
    fake_api.go_live(s)
    async for running in start(make_config(fake_api.base_url, discover=True)):
        await running.wait_ready()
        pages = [await running.get(p) for p in ("/metrics", "/", "/-/ready", "/-/healthy")]
        for _, _, body in pages:
            assert TOKEN.encode() not in body and STREAM_KEY_PREFIX.encode() not in body
            assert b"rtmps://" not in body
    assert TOKEN not in caplog.text and STREAM_KEY_PREFIX not in caplog.text


async def test_close_releases_the_port(fake_api: FakeApi) -> None:
    """After close() the listening port accepts no connection."""
    async for running in start(make_config(fake_api.base_url, discover=True)):
        port = running.server.addresses[0][1]
        await running.server.close()
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=1),
        ):
            pass


async def test_address_in_use_is_a_serve_error(fake_api: FakeApi) -> None:
    """Binding a port already taken raises ServeError with the address, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with Exporter(
            make_config(fake_api.base_url, discover=True), registry=CollectorRegistry()
        ) as exporter:
            server = Server(exporter, host="127.0.0.1", port=port)
            with pytest.raises(ServeError, match=f"127.0.0.1:{port}"):
                await server.start()


async def test_poller_ending_by_itself_stops_the_server_as_a_failure(fake_api: FakeApi) -> None:
    """A poller cancelled by something other than shutdown stops the server with a failure."""
    async for running in start(make_config(fake_api.base_url, discover=True)):
        await running.wait_ready()
        task = running.server._poll_task  # the only handle on the poller; no public one needed
        assert task is not None
        task.cancel()
        await asyncio.wait_for(running.server.wait(), timeout=5)
        assert isinstance(running.server.failure, RuntimeError)
