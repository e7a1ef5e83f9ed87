"""Attacks on the webhook receiver, kept as tests.

Each runs the receiver as an attacker meets it: the exporter's own objects (Exporter and
Server, as the daemon wires them) listening on loopback against the simulator, or the
exporter process itself where open files and memory are the point. Deliveries are signed
with the test key (tests/webhooksign.py), which the exporter is told is RealtimeKit's,
so "signed" below means "as RealtimeKit would send it, or a replay of what it sent".

Tests whose docstring says FOUND held an attack that found a defect, since fixed; they
would fail again without the fix. The others confirm a bound that held.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import logging
import socket
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import CollectorRegistry

from exporter import connections, logs, receiver
from exporter.config import RateLimit, WebhooksConfig
from exporter.dedup import CAPACITY, DeliveryWindow
from exporter.receiver import MAX_BODY, MAX_ID_LENGTH, Receiver, create_receiver
from exporter.server import STOP_TIMEOUT, Exporter, Server
from exporter.signature import KeyError_, load_key
from exporter.simulator import REALISTIC, Simulator, World
from exporter.simulator.ratelimit import RateLimiter
from exporter.webhookkey import PublicKeys
from tests import webhooksign as ws
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, TOKEN, make_config
from tests.procs import LOOPBACK, own_open_files, rss_bytes, spawned_exporter, wait_for_log
from tests.webhooksign import KeyServer

# Slow clients, open files, memory and shutdown races depend on the interpreter's asyncio:
# scripts/test runs these on Python 3.12 too.
pytestmark = pytest.mark.interpreter

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path


PATH = "/webhooks/realtimekit"
WAIT = 10.0  # the longest any bounded wait below may take


async def until(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Wait (bounded) for ``condition``; an AssertionError naming ``what`` if it never holds."""
    try:
        async with asyncio.timeout(limit):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {limit:g}s: {what}") from None


# -- the daemon, in process ------------------------------------------------------------------
@dataclass
class Daemon:
    sim: Simulator
    exporter: Exporter
    server: Server
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.hook_port}{PATH}"

    @property
    def hook_port(self) -> int:
        return self.server.webhook_addresses[0][1]

    @property
    def main(self) -> str:
        return f"http://{LOOPBACK}:{self.server.addresses[0][1]}"

    async def deliver(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(self.url, data=body, headers=headers) as response:
            return response.status, await response.text()

    def requests(self, endpoint: str | None = None, code: int | None = None) -> int:
        return sum(
            n
            for (name, status), n in self.sim.state.requests.items()
            if endpoint in (None, name) and code in (None, status)
        )

    def streams(self, *, live: bool) -> list[str]:
        app = self.exporter.poller.snapshot.app(ACCOUNT, APP)
        assert app is not None
        return sorted(s.id for s in app.streams if s.live == live)

    @property
    def cycles(self) -> int:
        return self.exporter.poller.snapshot.cycles

    async def settled(self) -> None:
        refresher = self.exporter.refresher
        assert refresher is not None
        await until(lambda: refresher.busy == 0, "every refresh has ended")


def small_world(streams: int = 12, live: int = 4) -> World:
    world = World(seed=5, profile=REALISTIC)  # nothing changes by itself for 150 s
    world.populate(ACCOUNT, APP, streams, live=live)
    return world


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    world: World | None = None,
    interval: float = 30.0,
    rate: RateLimit | None = None,
    key_url: str | None = None,
) -> AsyncIterator[Daemon]:
    """The simulator (enforcing ``rate`` per token, if given) and the exporter polling it,
    with the webhook receiver on a loopback port; its key from ``key_url`` or a PEM file.
    Yields once the first poll cycle is done; closes everything on the way out."""
    pem = tmp_path / "webhook-key.pem"
    pem.write_bytes(ws.public_pem())
    hooks = WebhooksConfig(
        host=LOOPBACK,
        port=0,
        public_key_url=key_url,
        public_key_file=None if key_url is not None else pem,
    )
    limiter = RateLimiter(rate.requests, rate.window) if rate is not None else None
    sim = Simulator(world or small_world(), token=TOKEN, limiter=limiter, ip_limiter="off")
    async with sim, aiohttp.ClientSession() as http:
        config = make_config(sim.base_url, discover=True, interval=interval, rate_limit=rate)
        config = dataclasses.replace(config, webhooks=hooks)
        async with Exporter(config, registry=CollectorRegistry(), process_metrics=False) as exp:
            server = Server(exp, host=LOOPBACK, port=0)
            await server.start()
            try:
                daemon = Daemon(sim, exp, server, http)
                await until(lambda: daemon.cycles >= 1, "the first poll cycle")
                yield daemon
            finally:
                await server.close()


# -- replays: what a captured signed body costs ----------------------------------------------
# FOUND: a replayed hint costs an API request each time (no cooldown is reached).
@pytest.mark.parametrize("mode", ["new-webhook-ids", "alternating-bodies", "api-failing"])
async def test_replayed_hints_cost_a_bounded_number_of_requests(tmp_path: Path, mode: str) -> None:
    """A captured stop body of a stream that is still live, replayed. The API disagrees,
    so the refresh costs its 4 requests (once, then 3 rechecks) and is then cooled down;
    no number of replays may cost more.

    FOUND: a hint that arrives while a refresh waits for its recheck interrupts it
    (Refresher._settle returns on news, exporter/hints.py:238-240) and the next _settle
    asks at once, before any cooldown is set (hints.py:246 is reached only after every
    recheck). So the body replayed with a new ``rtk-webhook-id`` each time (a header
    nobody signs: dedup by (webhook id, digest) lets each through) cost 26-30 requests
    for 30 replays; the stop and start bodies of the stream alternated with the same
    webhook id (dedup's real-repeat rule lets each through, dedup.py:75-80) cost one
    request a pair (10 for 10); and while the API fails, a refresh ends "failed" with
    no cooldown (hints.py:207-208): 3 requests (with retries) a replay, 9 for 3. All at
    PRIORITY_PUSH, ahead of polling, and nothing bounds how often."""
    interval = 30.0 if mode == "api-failing" else 2.0  # rechecks 1 s apart at 2 s
    async with running(tmp_path, interval=interval) as daemon:
        sid = daemon.streams(live=True)[0]
        stop, start = ws.status_body(sid, "IDLE"), ws.status_body(sid, "LIVE")
        before = daemon.requests("livestream")
        if mode == "new-webhook-ids":
            for i in range(30):
                status, _ = await daemon.deliver(stop, ws.headers(stop, webhook=f"wh-{i}"))
                assert status == 200
        elif mode == "alternating-bodies":
            for _ in range(10):
                for body in (stop, start):
                    assert (await daemon.deliver(body, ws.headers(body)))[0] == 200
        else:
            daemon.sim.state.faults = dataclasses.replace(daemon.sim.state.faults, error_rate=1.0)
            for i in range(3):
                status, _ = await daemon.deliver(stop, ws.headers(stop, webhook=f"wh-{i}"))
                assert status == 200
                await daemon.settled()
        await daemon.settled()
        spent = daemon.requests("livestream") - before
        bound = 6 if mode == "api-failing" else 4
        assert spent <= bound, f"{spent} API requests for replays of one body"


async def test_replays_of_one_delivery_are_duplicates_and_cost_nothing_more(
    tmp_path: Path,
) -> None:
    """The same signed body from the same webhook, 300 times with a new ``rtk-uuid`` each
    (held): one refresh (4 requests: the API disagrees, the stream is live), 299
    duplicates, nothing more asked."""
    async with running(tmp_path, interval=2.0) as daemon:
        sid = daemon.streams(live=True)[0]
        stop = ws.status_body(sid, "IDLE")
        before = daemon.requests()
        answers = [await daemon.deliver(stop, ws.headers(stop)) for _ in range(300)]
        await daemon.settled()
        assert answers[0] == (200, "accepted\n")
        assert set(answers[1:]) == {(200, "duplicate\n")}
        assert daemon.requests() - before <= 4


# -- the budget ------------------------------------------------------------------------------
FLOOD_RATE = RateLimit(60, 3.0)  # held 5 s by the exporter (2 s of slack)


async def _flood_start_hints(daemon: Daemon) -> int:
    """A signed start hint for every idle stream (they stay idle: the API disagrees, so
    each refresh asks 4 times). Returns how many."""
    idle = daemon.streams(live=False)
    for sid in idle:
        body = ws.status_body(sid, "LIVE")
        assert (await daemon.deliver(body, ws.headers(body)))[0] == 200
    return len(idle)


# FOUND: refreshes may spend the whole budget window; polling starves or goes down.
async def test_a_flood_of_hints_leaves_polling_its_share(tmp_path: Path) -> None:
    """76 distinct signed start hints (each for a tracked idle stream) against a budget
    of 60 requests per 3 s, polling every second: a poll cycle must still complete, with
    the app up, within 3 s (3 intervals; without the flood, 3 do).

    FOUND: requests of a negative priority may take every grant of the window
    (RequestBudget._window_ready only holds back the kept share *from* the others,
    exporter/budget.py:285-296; keep_share, budget.py:129) and queue ahead of all
    polling; nothing caps what refreshes spend. Here polling completed no cycle for
    4.5 s; or, when the API's Ratelimit header said nothing remained, the next cycle
    failed as rate_limited and the app was reported down. At the defaults (1200/5m,
    30 s) 300 such hints (4 requests each) spend the whole 5-minute window, and every
    stream's values freeze for 5 minutes."""
    world = small_world(80, live=4)
    async with running(tmp_path, world=world, interval=1.0, rate=FLOOD_RATE) as daemon:
        await until(lambda: daemon.cycles >= 2, "two cycles")
        assert await _flood_start_hints(daemon) == 76
        flooded = daemon.cycles

        def polled() -> bool:
            app = daemon.exporter.poller.snapshot.app(ACCOUNT, APP)
            return daemon.cycles > flooded and app is not None and app.up

        await until(polled, "a poll cycle with the app up, after the flood", 3.0)


async def test_a_flood_of_hints_never_takes_the_token_over_its_limit(tmp_path: Path) -> None:
    """The same flood (held): for 3 s, however hard the refreshes push, the simulator
    never sees the token over api.rate_limit in any window, and never answers 429."""
    world = small_world(80, live=4)
    async with running(tmp_path, world=world, interval=1.0, rate=FLOOD_RATE) as daemon:
        await _flood_start_hints(daemon)
        flooded = time.monotonic()
        await until(lambda: time.monotonic() - flooded > 3.0, "3 s of the flood", 5.0)
        assert daemon.requests(code=429) == 0
        assert daemon.sim.state.traffic.busiest <= FLOOD_RATE.requests
        # The refreshes did push (start hints: one active-session request each), up to
        # their share of the window (REFRESH_SHARE), then were throttled.
        refreshes = daemon.exporter.registry.get_sample_value(
            "realtimekit_exporter_webhook_refreshes_total", {"result": "disagreed"}
        )
        throttled = daemon.exporter.registry.get_sample_value(
            "realtimekit_exporter_webhook_refreshes_total", {"result": "throttled"}
        )
        assert refreshes is not None
        assert throttled is not None
        assert refreshes + throttled > 0
        assert throttled > 0


# -- a stream whose id cannot be a URL segment -----------------------------------------------
# FOUND: each hint for a tracked '.' or '..' stream logs an ERROR with a traceback.
async def test_a_hint_for_a_dot_stream_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The listing holds a live stream whose id is ``.`` (polling exports it from the
    listing alone, docs/reliability.md); its stop and start webhooks, replayed.

    FOUND: Refresher._refresh asks api.livestream for it, the client refuses the
    segment with a ValueError (exporter/client.py:821), and _work logs "unexpected
    error in a webhook's refresh" with a traceback (exporter/hints.py:209-211): one
    ERROR per hint, with no throttle, for a stream RealtimeKit really has, and as many
    as an attacker replays."""
    world = small_world()
    world.create(ACCOUNT, APP, livestream_id=".")
    world.go_live(".")
    async with running(tmp_path, world=world) as daemon:
        assert "." in daemon.streams(live=True)
        caplog.set_level(logging.WARNING)
        for _ in range(5):
            for status in ("IDLE", "LIVE"):
                body = ws.status_body(".", status)
                assert (await daemon.deliver(body, ws.headers(body)))[0] == 200
        await daemon.settled()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], f"{len(errors)} errors, first: {errors[0].getMessage()}"


# -- connections -----------------------------------------------------------------------------
HOLDERS = 16


@pytest.mark.parametrize(
    "stall",
    [
        "headers",
        # FOUND: connections stalled in their body are never evicted: deliveries refused.
        pytest.param(
            "body",
        ),
    ],
)
async def test_stalled_connections_cannot_lock_deliveries_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stall: str
) -> None:
    """The webhook listener full (its limit made 16 here; ~1024 in production) of
    connections that stall: a real delivery must still get in. Stalled in their headers
    (held): the oldest is evicted and the delivery is accepted.

    FOUND: stalled in their body (headers sent, Content-Length 1000, a few bytes):
    each is "in a request" for the guard from the moment the handler starts reading
    (ConnectionGuard.middleware marks it BUSY, exporter/connections.py:185-192, while
    Receiver.handle waits up to BODY_TIMEOUT = 10 s for the body, receiver.py:116), so
    none can be evicted and the delivery's connection is closed at once (_admit,
    connections.py:210-213). An attacker renewing them every 10 s keeps every delivery
    out with ~1024 idle sockets and no bandwidth."""
    monkeypatch.setattr(connections, "connection_limit", lambda *_, **__: HOLDERS)
    async with running(tmp_path) as daemon:
        held = []
        try:
            for _ in range(HOLDERS):
                _, writer = await asyncio.open_connection(LOOPBACK, daemon.hook_port)
                head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\n"
                if stall == "body":
                    head += 'Content-Length: 1000\r\n\r\n{"event":'
                writer.write(head.encode())
                await writer.drain()
                held.append(writer)
            body = ws.status_body("not-tracked", "IDLE")
            try:
                answer = await daemon.deliver(body, ws.headers(body))
            except aiohttp.ClientConnectionError as exc:
                raise AssertionError(f"the delivery was refused: {exc!r}") from None
            assert answer == (200, "ignored\n")
        finally:
            for writer in held:
                writer.close()


async def _raw(port: int, request: bytes, *, wait: float = 3.0) -> bytes:
    """``request`` on a new connection; what came back until the server closed it or
    ``wait`` passed."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    out = b""
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        writer.close()
    return out


def _post(body: bytes, *headers: str, length: int | None = None, version: str = "1.1") -> bytes:
    lines = [f"POST {PATH} HTTP/{version}", "Host: x", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_malformed_http_on_the_webhook_port_is_answered_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held: Content-Length lies, bodies that never end, Expect: 100-continue with a
    10 MB length, HTTP/1.0, an absurd method, a 1 MB ``rtk-uuid``, 300 headers,
    conflicting framing and 50 pipelined requests are each answered at once (or at the
    body timeout) with the right status, nothing is verified or hinted, and a real
    delivery is accepted afterwards."""
    monkeypatch.setattr(receiver, "BODY_TIMEOUT", 0.3)
    async with running(tmp_path) as daemon:
        sid = daemon.streams(live=True)[0]
        body = ws.status_body(sid, "IDLE")
        signed = f"rtk-signature: {ws.sign(body)}"
        chunks = "".join(f"4000\r\n{' ' * 0x4000}\r\n" for _ in range(5)) + "0\r\n\r\n"
        cases = {
            "length-too-long": (_post(body, signed, length=len(body) + 50), "408"),
            "length-too-short": (_post(body, signed, length=5), "400"),
            "chunked-never-ends": (_post(b"5\r\nhello\r\n", "Transfer-Encoding: chunked"), "408"),
            "chunked-over-64k": (_post(chunks.encode(), "Transfer-Encoding: chunked"), "413"),
            "expect-10mb": (_post(b"", "Expect: 100-continue", length=10_000_000), "413"),
            "http-1.0-unsigned": (_post(b"{}", length=2, version="1.0"), "401"),
            "absurd-method": (b"FROBNICATE " + PATH.encode() + b" HTTP/1.1\r\n\r\n", "400"),
            "1mb-uuid": (_post(body, signed, "rtk-uuid: " + "u" * 2**20, length=len(body)), "400"),
            "300-headers": (_post(b"", *(f"X-{i}: y" for i in range(300)), length=0), "400"),
            "length-and-chunked": (
                _post(body, "Transfer-Encoding: chunked", length=len(body)),
                "400",
            ),
        }
        for name, (request, expected) in cases.items():
            answer = await _raw(daemon.hook_port, request)
            statuses = [line.split()[1] for line in answer.split(b"\r\n") if line[:5] == b"HTTP/"]
            assert statuses and statuses[-1].decode() == expected, (name, answer[:200])
        pipelined = await _raw(daemon.hook_port, _post(b"{}", length=2) * 50, wait=1.0)
        assert pipelined.count(b"HTTP/1.1 401 ") == 50
        assert daemon.exporter.refresher is not None
        assert daemon.exporter.refresher.busy == 0
        assert (await daemon.deliver(body, ws.headers(body)))[1] == "accepted\n"


# FOUND: a Content-Length shorter than the body puts the stream key in an ERROR log.
async def test_a_short_content_length_puts_no_stream_key_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery whose Content-Length undercounts its body (a sender counting
    characters, not bytes; a proxy that rewrote it).

    FOUND: aiohttp parses the rest of the body as the next request line, and logs
    "Error handling request" at ERROR with a BadHttpMessage that quotes those bytes:
    the tail of the body, ``"streamKey":"..."`` included (aiohttp.server is throttled
    to 3 a minute by exporter/logs.py:46, not redacted; stream keys are no registered
    secret). The 400 answer quotes them too."""
    caplog.set_level(logging.DEBUG)
    out = io.StringIO()
    handler = logging.StreamHandler(out)  # the daemon's log format, as it writes it
    handler.setFormatter(logs.LogfmtFormatter(tuple))
    logging.getLogger().addHandler(handler)
    try:
        async with running(tmp_path) as daemon:
            body = ws.status_body("not-tracked", "IDLE")
            cut = body.index(b'"streamKey"') - 1
            request = _post(body, f"rtk-signature: {ws.sign(body[:cut])}", length=cut)
            answer = await _raw(daemon.hook_port, request)
            assert answer.startswith(b"HTTP/1.")  # answered (400: the rest is no request)
    finally:
        logging.getLogger().removeHandler(handler)
    assert "aiohttp.server" in out.getvalue()  # the error was logged, without its text
    assert ws.STREAM_KEY not in out.getvalue()


# -- open files and memory, on the exporter process ------------------------------------------
def _config_text(tmp_path: Path) -> str:
    key = tmp_path / "webhook-key.pem"
    key.write_bytes(ws.public_pem())
    return (
        "api:\n  token: attack-token-0123456789\n  base_url: http://127.0.0.1:9\n"
        "apps:\n  - account_id: acc\n    app_id: app\n    discover: true\n"
        f'webhooks:\n  listen_address: "{LOOPBACK}:0"\n  public_key_file: {key}\n'
    )


@contextlib.contextmanager
def _held(port: int, count: int, first: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections to ``port``, each sending ``first``, held open."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection((LOOPBACK, port), timeout=5)
            socks.append(sock)
            sock.sendall(first)
        yield socks
    finally:
        for sock in socks:
            sock.close()


# FOUND: each listener's guard is sized to the whole open-files limit: EMFILE.
def test_two_listeners_under_1024_open_files_never_run_out(tmp_path: Path) -> None:
    """Soft and hard open-files limits of 1024, connections flooding the main port and
    the webhook port (700 each): each guard must keep its connections within what the
    process has, so accept() never fails.

    FOUND: Server._start_receiver makes a second ConnectionGuard() (server.py:603)
    whose limit connection_limit() computes from the whole RLIMIT_NOFILE, as the main
    one does (connections.py:84-93): 512 + 512 connections, plus both listeners'
    bursts and the reserve, pass 1024 and asyncio logs "socket.accept() out of system
    resource" (both listeners stop accepting for a second each time). That is the
    fix of the earlier round ("two listening sockets running out of descriptors"),
    undone by a second listener. The webhook guard has no observer either, so its
    evictions and refusals are in no metric."""
    with (
        own_open_files(2000),
        spawned_exporter(tmp_path, _config_text(tmp_path), open_files=(1024, 1024)) as (
            proc,
            host,
        ),
    ):
        hook_port = int(
            wait_for_log(proc, rf"receiving webhooks on {LOOPBACK}:(\d+)", timeout=10)[1]
        )
        main_port = int(host.rsplit(":", 1)[1])
        socks: list[socket.socket] = []
        refused = 0
        try:
            for i in range(700):
                for port in (hook_port, main_port):
                    try:
                        socks.append(socket.create_connection((LOOPBACK, port), timeout=1))
                    except OSError:
                        refused += 1  # not accepted within 1 s (a SYN dropped, or a pause)
                if refused > 10 or (i % 25 == 0 and "out of system resource" in proc.log()):
                    break
            deadline = time.monotonic() + 1.0  # the guards admit and evict meanwhile
            while time.monotonic() < deadline and "out of system resource" not in proc.log():
                time.sleep(0.05)
        finally:
            for sock in socks:
                sock.close()
        assert "out of system resource" not in proc.log(), f"{len(socks)} connected"


def test_slow_64k_bodies_keep_memory_bounded(tmp_path: Path) -> None:
    """Held: 300 connections each sending 64 KiB less one byte of a 64 KiB body, and
    stopping there (each waits out the 10 s body timeout): the exporter's resident memory
    grows by about one body a connection (measured: 67 KiB each; 1,000 of them 72 MiB),
    so the connection limit bounds it."""
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\n".encode()
    with (
        own_open_files(1000),
        spawned_exporter(tmp_path, _config_text(tmp_path)) as (proc, _),
    ):
        hook_port = int(
            wait_for_log(proc, rf"receiving webhooks on {LOOPBACK}:(\d+)", timeout=10)[1]
        )
        baseline = rss_bytes(proc.pid)
        with _held(hook_port, 300, head + b" " * (MAX_BODY - 1)):
            peak = baseline
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                peak = max(peak, rss_bytes(proc.pid))
                time.sleep(0.1)
        growth = peak - baseline
        assert growth < 300 * 160 * 1024, f"{growth / 2**20:.1f} MiB for 300 slow bodies"


# -- the public key --------------------------------------------------------------------------
@pytest.fixture
async def key_server() -> AsyncIterator[KeyServer]:
    async with KeyServer() as keys:
        yield keys


async def test_forged_deliveries_refetch_the_key_at_most_once_per_floor(
    tmp_path: Path, key_server: KeyServer
) -> None:
    """Held: 300 deliveries signed by another key (100 at a time) and 100 with a
    garbage signature, within the refetch floor of the key's fetch at start
    (REFETCH_FLOOR, 10 s; tests/unit/test_receiver.py checks one fetch a floor after
    it): no fetch more, no hint. Each is answered 503 (the key could not be read again
    yet: a rotation may be under way, and RealtimeKit retries a 5xx)."""
    async with running(tmp_path, key_url=key_server.url) as daemon:
        keys = daemon.exporter.keys
        assert keys is not None
        await until(lambda: keys.key is not None, "the key loaded")
        body = ws.status_body(daemon.streams(live=True)[0], "IDLE")
        forged = [ws.headers(body, key="forger") for _ in range(300)]
        garbage = [{**ws.headers(body, key=None), "rtk-signature": "A" * 344} for _ in range(100)]
        for batch in range(0, 400, 100):
            answers = await asyncio.gather(
                *(daemon.deliver(body, h) for h in (forged + garbage)[batch : batch + 100])
            )
            assert {status for status, _ in answers} == {503}
        assert key_server.fetches == 1  # the floor counts from the fetch at start
        assert daemon.exporter.refresher is not None
        assert daemon.exporter.refresher.busy == 0


def _pem(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _document(pem: object) -> bytes:
    return json.dumps({"success": True, "data": {"publicKey": pem}}).encode()


def _bad_documents() -> dict[str, Callable[[], web.StreamResponse]]:
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 (refused)
    good = ws.public_pem().decode()

    def respond(body: bytes) -> Callable[[], web.StreamResponse]:
        return lambda: web.Response(body=body, content_type="application/json")

    return {
        "not-json": respond(b"<html>hello</html>"),
        "ec-key": respond(_document(_pem(ec_key))),
        "rsa-1024": respond(_document(_pem(small))),
        "garbage-pem": respond(
            _document("-----BEGIN PUBLIC KEY-----\nAAAA!!\n-----END PUBLIC KEY-----")
        ),
        "many-keys": respond(_document([good, good])),
        "success-false": respond(
            json.dumps({"success": False, "data": {"publicKey": good}}).encode()
        ),
        "huge": respond(b'{"data":{"publicKey":"' + b"A" * 10_000_000 + b'"}}'),
        "redirect": lambda: web.Response(status=302, headers={"Location": "http://127.0.0.1:9/k"}),
    }


async def test_unusable_key_documents_load_nothing_and_are_asked_once(
    key_server: KeyServer,
) -> None:
    """Held: a key document that is not JSON, holds an EC key, a 1024-bit RSA key, a PEM
    of garbage, a list of keys, says success false, is 10 MB, or redirects; or a server
    that never answers (0.5 s timeout here): no key, one fetch, and deliveries then ask
    again at most once per retry floor (10 s)."""
    documents = _bad_documents()
    async with aiohttp.ClientSession() as session:
        for name, document in [*documents.items(), ("hangs", None)]:
            key_server.fetches = 0
            key_server.hanging = document is None
            key_server.document = document
            keys = PublicKeys(url=key_server.url, session=session, timeout=0.5)
            assert await keys.load() is None, name
            for _ in range(20):
                assert await keys.current() is None, name
            assert key_server.fetches == 1, name


class Hints:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def hint(self, livestream_id: str, status: str) -> bool:
        self.calls.append((livestream_id, status))
        return True


# FOUND: a forgery spends the refetch floor; a rotated key's deliveries then get a final 401.
async def test_a_forgery_before_a_key_rotation_does_not_lose_real_deliveries(
    key_server: KeyServer,
) -> None:
    """A forged delivery makes the receiver fetch the key again (the same key comes);
    RealtimeKit rotates its key a few seconds later and delivers under the new one. The
    receiver may not verify it yet, but must answer so that RealtimeKit retries (5xx),
    or fetch the key and accept it.

    FOUND: the refetch floor (60 s, PublicKeys.after_failure, webhookkey.py:91-92) was
    spent by the forgery, so no key comes and Receiver.handle answers 401
    (receiver.py:133-137), which RealtimeKit never retries: every delivery signed by the new key
    within 60 s is lost, and one forgery a minute keeps any rotation lossy."""
    clock = FakeClock(1000.0)
    async with aiohttp.ClientSession() as session:
        keys = PublicKeys(url=key_server.url, session=session, monotonic=clock)
        assert await keys.load() is not None
        hints = Hints()
        server = TestServer(create_receiver(Receiver(keys=keys, hints=hints), PATH), host=LOOPBACK)
        client: TestClient[web.Request, web.Application] = TestClient(server)
        await client.start_server()
        try:
            body = ws.status_body("ls-1", "IDLE")
            clock.now += 61
            async with client.post(PATH, data=body, headers=ws.headers(body, key="forger")) as r:
                assert r.status == 401
            assert key_server.fetches == 2
            key_server.name = "next"  # RealtimeKit rotates
            clock.now += 5
            async with client.post(PATH, data=body, headers=ws.headers(body, key="next")) as r:
                status = r.status
            assert status in (200, 503), f"a delivery under the rotated key got a final {status}"
        finally:
            await client.close()


def _rsa_with_exponent(bits: int, exponent_bits: int) -> bytes:
    modulus = ws.private_key().public_key().public_numbers().n  # 2048 bits
    assert bits == modulus.bit_length()
    exponent = (1 << (exponent_bits - 1)) | 1
    key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# FOUND: a key with a huge public exponent loads: every verification then costs ~90x.
def test_a_key_that_makes_every_verification_slow_is_refused() -> None:
    """A key document (a compromised or mistaken key URL, a wrong file) with a 2048-bit
    modulus and a 2000-bit public exponent.

    FOUND: load_key bounds the modulus (MAX_KEY_BITS, "a larger key costs every
    verification more for nothing", exporter/signature.py:20, 44) but not the exponent:
    this key loads, and every delivery, forged ones included, then costs a full
    modular exponentiation on the event loop (measured: 1.1 ms against 0.02 ms with
    e = 65537, 58 times, at 2048 bits; 3.7 ms against 0.04 ms at 3072), so a flood of
    forgeries stalls scrapes and polling. RealtimeKit's key, like nearly every RSA key,
    has e = 65537."""
    with pytest.raises(KeyError_):
        load_key(_rsa_with_exponent(2048, 2000))


# FOUND: Server.close() leaves the key fetch running; it logs a warning after the stop.
async def test_close_leaves_no_key_fetch_running(
    tmp_path: Path, key_server: KeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The key server never answers; the exporter stops meanwhile. Server.close() must
    end what it started: nothing of the key fetch may outlive it, and no warning about
    the key may come after the stop.

    FOUND: close() cancels the task that awaits PublicKeys.load() (server.py:673-674),
    but the fetch itself runs in PublicKeys._inflight behind asyncio.shield
    (PublicKeys._fetch, webhookkey.py:98-105), which nobody cancels: it outlives Server.close() and
    Exporter's exit, and once the session is closed under it logs "cannot load the
    webhook public key ... deliveries are answered 503" after the shutdown."""
    key_server.hanging = True
    caplog.set_level(logging.WARNING)
    async with running(tmp_path, key_url=key_server.url) as daemon:
        await until(lambda: key_server.fetches == 1, "the key fetch under way")
        await daemon.server.close()
        left = [t for t in asyncio.all_tasks() if "_fetch_once" in repr(t.get_coro())]
        closed = len(caplog.records)
    await asyncio.sleep(0)  # what the session's close set off
    late = [r.getMessage() for r in caplog.records[closed:] if r.name.startswith("exporter")]
    assert left == [], left
    assert late == []


# -- hostile bodies, secrets, races ----------------------------------------------------------
def _hostile_bodies(tracked: str) -> list[bytes]:
    status_update = receiver.STATUS_UPDATE

    def event(**doc: object) -> bytes:
        return json.dumps(doc).encode()

    return [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"event":"'
        + status_update.encode()
        + b'","streamId":"x","status":'
        + b"9" * 60_000
        + b"}",
        b'{"event":"meeting.started","n":1e999999,"m":NaN,"i":-Infinity}',
        b'{"event":"' + status_update.encode() + b'","streamId":"\xff\xfe","status":"IDLE"}',
        b"\xef\xbb\xbf" + ws.status_body("not-tracked", "IDLE"),
        b'{"event":"meeting.ended","event":"' + status_update.encode() + b'"}',
        event(event=status_update, streamId="../" * 50, status="IDLE"),
        event(event=status_update, streamId="a%2F..%2F" + tracked, status="IDLE"),
        event(event=status_update, streamId=tracked + "/x", status="IDLE"),
        event(event=status_update, streamId="s" * (MAX_ID_LENGTH + 1), status="IDLE"),
        event(event=status_update, streamId=tracked, status="\x00\r\n\x1b[31m" * 60),
        event(event=status_update, streamId=tracked, status="x" * 10_000),
        event(event=status_update, streamId=tracked, status=["LIVE"]),
        *(event(event=name) for name in ("x" * 5_000, "livestreaming.STATUSUPDATE", "é\u202e")),
        *(event(event=f"meeting.{i}") for i in range(50)),
    ]


async def test_hostile_signed_bodies_are_answered_and_labels_stay_bounded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Held: signed bodies nested 30,000 deep, with a 60,000-digit number, NaN and
    Infinity, invalid UTF-8, a BOM, duplicate keys, stream ids of path characters or
    too long, statuses of control characters or 10 kB, and 53 event names of their own:
    each answered 200 or 400 at once, no API request, no warning, and the event label
    takes only the nine documented names and "other"."""
    caplog.set_level(logging.WARNING)
    async with running(tmp_path) as daemon:
        tracked = daemon.streams(live=True)[0]
        before = daemon.requests()
        for body in _hostile_bodies(tracked):
            assert len(body) <= MAX_BODY
            status, _ = await daemon.deliver(body, ws.headers(body))
            assert status in (200, 400), body[:80]
        await daemon.settled()
        assert daemon.requests() == before
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        async with daemon.http.get(daemon.main + "/metrics") as response:
            text = await response.text()
        events = {
            line.split('event="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if line.startswith("realtimekit_exporter_webhook_deliveries_total{")
        }
        assert events <= {*receiver.EVENTS, receiver.OTHER, receiver.UNVERIFIED}, events


async def test_stream_keys_leave_through_no_log_metric_page_or_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Held: every kind of delivery (accepted stop and start that the API confirms,
    duplicate, unsigned, forged, too large, malformed, untracked, other events), with
    refreshes reading the API (whose answers hold each stream's key): neither the
    deliveries' stream key nor any simulated one is in the log at DEBUG, /metrics (both
    formats), the status page, or any answer."""
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path, interval=2.0) as daemon:
        live, idle = daemon.streams(live=True)[0], daemon.streams(live=False)[0]
        daemon.sim.world.stop(live)
        daemon.sim.world.go_live(idle)
        stop, start = ws.status_body(live, "IDLE"), ws.status_body(idle, "LIVE")
        big = ws.status_body(live, "IDLE", pad="x" * MAX_BODY)
        deliveries = [
            (stop, ws.headers(stop)),
            (start, ws.headers(start)),
            (stop, ws.headers(stop)),
            (stop, ws.headers(stop, key=None)),
            (stop, ws.headers(stop, key="forger")),
            (big, ws.headers(big)),
            (stop[:-1], ws.headers(stop[:-1])),
            (ws.status_body("x", "LIVE"), ws.headers(ws.status_body("x", "LIVE"))),
        ]
        answers = [await daemon.deliver(body, headers) for body, headers in deliveries]
        await daemon.settled()
        assert daemon.streams(live=False).count(live) == 1  # the refreshes did read the API
        seen = [text for _, text in answers]
        for accept in ("text/plain", "application/openmetrics-text"):
            async with daemon.http.get(daemon.main + "/metrics", headers={"Accept": accept}) as r:
                seen.append(await r.text())
        async with daemon.http.get(daemon.main + "/") as response:
            seen.append(await response.text())
    seen.append(caplog.text)
    seen.extend(str(r.__dict__) for r in caplog.records)
    everything = "\n".join(seen)
    for secret in (ws.STREAM_KEY, *daemon.sim.world.secrets()):
        assert secret not in everything


async def test_deliveries_during_a_reload_and_a_close_end_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Held: stops hinted for every live stream while the API is slow (0.3 s), a reload
    that removes the app while those refreshes run, hints for the removed streams (now
    ignored), then Server.close() with 100 deliveries in flight: no error is logged, the
    close takes less than STOP_TIMEOUT, and no refresh task outlives the exporter."""
    caplog.set_level(logging.WARNING)
    world = small_world()
    world.populate(ACCOUNT, "app-2", 3, live=1)
    async with running(tmp_path, world=world, interval=0.5) as daemon:
        exporter = daemon.exporter
        live = daemon.streams(live=True)
        for sid in live:
            daemon.sim.world.stop(sid)
        daemon.sim.state.faults = dataclasses.replace(daemon.sim.state.faults, latency=0.3)
        for sid in live:
            body = ws.status_body(sid, "IDLE")
            assert (await daemon.deliver(body, ws.headers(body)))[1] == "accepted\n"
        assert exporter.refresher is not None
        assert exporter.refresher.busy == len(live)
        other = dataclasses.replace(exporter.config.apps[0], app_id="app-2")
        exporter.reconfigure(dataclasses.replace(exporter.config, apps=(other,)))
        cycles = daemon.cycles
        await until(lambda: daemon.cycles >= cycles + 2, "two cycles after the reload")
        body = ws.status_body(live[0], "LIVE")
        assert (await daemon.deliver(body, ws.headers(body)))[1] == "ignored\n"

        url = daemon.url

        async def deliver(i: int) -> object:
            body = ws.status_body(f"s-{i}", "IDLE")
            # A connection accepted in the very turn the listener closes is lost by
            # Python 3.11's asyncio (Server._attach asserts; the socket stays open, unread,
            # until the GC runs): its client ends by its own timeout.
            timeout = aiohttp.ClientTimeout(total=1.0)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with daemon.http.post(
                    url, data=body, headers=ws.headers(body), timeout=timeout
                ) as response:
                    return response.status
            return None

        flood = [asyncio.ensure_future(deliver(i)) for i in range(100)]
        await asyncio.sleep(0)
        started = time.monotonic()
        await daemon.server.close()
        took = time.monotonic() - started
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*flood)
        with warnings.catch_warnings():
            # The transports of those lost connections (see deliver): closed here, not
            # at some later test's garbage collection.
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    assert took < STOP_TIMEOUT, took
    left = [t for t in asyncio.all_tasks() if t.get_name() in ("webhook-refresh", "poller")]
    assert left == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_dedup_window_stays_bounded_past_its_capacity() -> None:
    """Held: three times CAPACITY deliveries, each with a new 256-character id, webhook
    id and stream (what a flood of signed bodies with forged headers leaves): each table
    keeps at most CAPACITY entries."""
    window = DeliveryWindow()
    pad = "x" * (MAX_ID_LENGTH - 8)
    for i in range(3 * CAPACITY):
        tag = f"{i:08d}"
        digest = DeliveryWindow.digest(tag.encode())
        window.remember(pad + tag, pad + tag, digest, stream=pad + tag)
    assert len(window) <= 2 * CAPACITY
    assert len(window._latest) <= CAPACITY
