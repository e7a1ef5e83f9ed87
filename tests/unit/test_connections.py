"""The connection guard: a cap on open connections, header and write timeouts, eviction.

Unit tests drive :class:`ConnectionGuard` with a hand-moved clock and transports that only
record what is done to them; the last tests run it under the exporter's real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
from typing import TYPE_CHECKING, Any, cast

import pytest
import trustme
from aiohttp import web

from exporter.connections import (
    BACKLOG,
    BACKLOGS_IN_FLIGHT,
    MAX_CONNECTIONS,
    RESERVED_FDS,
    ConnectionGuard,
    GuardedSite,
    connection_limit,
    raise_open_files_limit,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.interpreter

LOOPBACK = "127.0.0.1"


class FakeTransport(asyncio.Transport):
    """Records abort() and pause_reading(); its write buffer holds ``unsent`` bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.unsent = 0

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def pause_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeHandler(asyncio.Protocol):
    """Stands in for aiohttp's RequestHandler: records what it is told."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.made = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class Closes:
    """The guard's observer: how many are open, why each was closed."""

    def __init__(self) -> None:
        self.open = 0
        self.reasons: list[str] = []

    def connections_open(self, count: int) -> None:
        self.open = count

    def connection_closed(self, reason: str) -> None:
        self.reasons.append(reason)


class Harness:
    def __init__(self, *, limit: int = 10) -> None:
        self.now = 0.0
        self.closes = Closes()
        self.guard = ConnectionGuard(
            limit=limit, header_timeout=10.0, write_timeout=30.0, observer=self.closes,
            clock=lambda: self.now,
        )  # fmt: skip
        self.handlers: list[FakeHandler] = []
        # FakeHandler stands in for aiohttp's RequestHandler, which factory() is typed with.
        self.factory = self.guard.factory(self._handler, None)  # type: ignore[arg-type]

    def _handler(self) -> FakeHandler:
        handler = FakeHandler()
        self.handlers.append(handler)
        return handler

    def connect(self) -> tuple[asyncio.Protocol, FakeTransport]:
        protocol = self.factory()
        transport = FakeTransport()
        protocol.connection_made(transport)
        return protocol, transport

    def request(self, index: int, *, started: bool) -> None:
        handler = cast("Any", self.handlers[index])
        if started:
            self.guard.request_started(handler)
        else:
            self.guard.request_finished(handler)


def test_a_request_must_arrive_within_the_header_timeout() -> None:
    """A connection that has not delivered a whole request's headers within the header
    timeout of opening is dropped, however it trickles bytes; one in a request is not."""
    h = Harness()
    trickler, trickling = h.connect()
    _, busy = h.connect()
    h.request(1, started=True)
    for _ in range(5):
        h.now += 2.5
        trickler.data_received(b"X-Slow: 1\r\n")  # a header line every 2.5 s
        h.guard.sweep()
    assert trickling.aborted and not busy.aborted
    assert h.closes.reasons == ["header_timeout"]
    assert h.closes.open == 1


def test_the_header_clock_restarts_with_the_first_byte_after_an_answer() -> None:
    """Between requests a keep-alive connection is idle (aiohttp's keep-alive timeout
    applies); the next request's first byte starts its header timeout afresh."""
    h = Harness()
    protocol, transport = h.connect()
    h.request(0, started=True)
    h.request(0, started=False)
    h.now += 100.0  # idle for long: not the guard's to close
    h.guard.sweep()
    assert not transport.aborted
    protocol.data_received(b"GET /metrics HTTP/1.1\r\n")
    h.now += 9.0
    h.guard.sweep()
    assert not transport.aborted
    h.now += 2.0
    h.guard.sweep()
    assert transport.aborted and h.closes.reasons == ["header_timeout"]


def test_bytes_pipelined_during_a_request_start_the_header_clock_at_its_answer() -> None:
    """A request's bytes that came while the previous one was answered (pipelined, and
    perhaps never completed) are due within the header timeout of that answer, not the
    keep-alive timeout (a pipelined half request once held a connection 150 s)."""
    h = Harness()
    protocol, transport = h.connect()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo")
    h.request(0, started=True)
    h.request(0, started=False)
    h.now += 11.0
    h.guard.sweep()
    assert transport.aborted and h.closes.reasons == ["header_timeout"]


def test_at_the_limit_the_longest_waiting_connection_makes_room() -> None:
    """One connection over the limit evicts the one that has waited longest without a
    request in progress; if every connection is in a request, the new one is refused."""
    h = Harness(limit=3)
    conns = []
    for _ in range(3):
        conns.append(h.connect()[1])
        h.now += 1.0
    h.request(0, started=True)  # the oldest is busy: it stays
    newest = h.connect()[1]
    assert conns[1].aborted and not conns[0].aborted and not conns[2].aborted
    assert not newest.aborted
    for i in (2, 3):
        h.request(i, started=True)
    refused = h.connect()[1]
    assert refused.aborted
    assert h.closes.reasons == ["evicted", "refused"]
    assert len(h.guard) == 3


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout() -> None:
    """Unsent answer data that does not move for the write timeout ends the connection;
    a buffer that keeps moving (a slow reader) does not."""
    h = Harness()
    _, stalled = h.connect()
    _, slow = h.connect()
    h.request(0, started=True)
    h.request(1, started=True)
    stalled.unsent = slow.unsent = 256 * 1024
    for step in range(31):
        h.now += 1.0
        slow.unsent -= 1000 if step % 2 else -500  # drains, is refilled, drains
        h.guard.sweep()
    assert not stalled.aborted and not slow.aborted
    h.now += 1.0
    h.guard.sweep()
    assert stalled.aborted and not slow.aborted
    assert h.closes.reasons == ["write_timeout"]


def test_each_connection_is_released_once() -> None:
    """A connection that ends (dropped by the guard, then told by the transport) leaves
    the count once, and its handler hears that it ended."""
    h = Harness()
    protocol, _ = h.connect()
    protocol.connection_lost(None)
    protocol.connection_lost(None)
    assert len(h.guard) == 0 and h.closes.open == 0
    assert h.handlers[0].made and h.handlers[0].lost


def test_the_limit_stays_below_the_open_files_limit() -> None:
    """The connection limit leaves room for everything else the process opens, and for
    the bursts that each listening socket accepts before they are admitted (":PORT"
    listens twice: IPv4 and IPv6)."""
    burst = BACKLOGS_IN_FLIGHT * BACKLOG  # what one listening socket may accept at once
    assert connection_limit(1024) == 1024 - RESERVED_FDS - burst
    assert connection_limit(1024, listeners=2) == 1024 - RESERVED_FDS - 2 * burst
    assert connection_limit(1_048_576) == MAX_CONNECTIONS
    assert connection_limit(resource.RLIM_INFINITY) == MAX_CONNECTIONS
    assert connection_limit(100) == 16


def test_the_soft_open_files_limit_is_raised_to_the_hard_limit() -> None:
    """As Prometheus' servers do, the soft limit of open files goes up to the hard one."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = min(before[1], 1024) if before[1] != resource.RLIM_INFINITY else 1024
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, before[1]))
        assert raise_open_files_limit() == (before[1], before[1])
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (before[1], before[1])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


# -- under a real server ----------------------------------------------------------------
async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello\n")


@contextlib.asynccontextmanager
async def guarded(
    guard: ConnectionGuard, tls: ssl.SSLContext | None = None, host: str | list[str] = LOOPBACK
) -> AsyncIterator[list[int]]:
    """An aiohttp app behind ``guard`` on loopback: the ports it listens on."""
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    # A list of hosts reaches loop.create_server through TCPSite; GuardedSite's own
    # annotation (str | None) leaves it out.
    site = GuardedSite(runner, host, 0, guard=guard, tls=tls)  # type: ignore[arg-type]
    await site.start()
    guard.start()
    try:
        yield [address[1] for address in runner.addresses]
    finally:
        await runner.cleanup()
        await guard.close()


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    data = b""
    async with asyncio.timeout(5):
        while chunk := await reader.read(4096):
            data += chunk
    return data


async def test_a_slowloris_is_cut_off_and_requests_still_get_answers() -> None:
    """Against the real server: a client trickling header lines is closed at the header
    timeout, while a normal request on a new connection is answered meanwhile."""
    closes = Closes()
    guard = ConnectionGuard(limit=16, header_timeout=0.5, observer=closes)
    async with guarded(guard) as (port,):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        fresh_reader, fresh_writer = await asyncio.open_connection(LOOPBACK, port)
        fresh_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _read_until_closed(fresh_reader)).endswith(b"hello\n")
        fresh_writer.close()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    await asyncio.sleep(0.1)
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()

        trickling = asyncio.ensure_future(trickle())
        try:
            assert await _read_until_closed(reader) == b""  # closed, never answered
        finally:
            trickling.cancel()
            writer.close()
    assert closes.reasons == ["header_timeout"]


async def test_a_tls_handshake_counts_as_waiting_and_times_out(tmp_path: Path) -> None:
    """Over TLS a connection that never starts its handshake is timed out like one that
    never sends its headers; one that completes it is served."""
    ca = trustme.CA()
    cert = ca.issue_cert(LOOPBACK)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    closes = Closes()
    guard = ConnectionGuard(limit=16, header_timeout=0.5, observer=closes)
    async with guarded(guard, server_ctx) as (port,):
        silent = socket.create_connection((LOOPBACK, port))
        silent.setblocking(False)
        reader, writer = await asyncio.open_connection(
            LOOPBACK, port, ssl=client_ctx, server_hostname=LOOPBACK
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _read_until_closed(reader)).endswith(b"hello\n")
        writer.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            assert await loop.sock_recv(silent, 1) == b""
        silent.close()
    assert closes.reasons == ["header_timeout"]


async def test_a_probe_gets_in_while_silent_connections_fill_the_limit() -> None:
    """With the limit full of connections that sent nothing, a new request evicts the one
    that has waited longest, and is answered."""
    closes = Closes()
    guard = ConnectionGuard(limit=4, observer=closes)
    async with guarded(guard) as (port,):
        silent = []
        for _ in range(4):
            silent.append(await asyncio.open_connection(LOOPBACK, port))
            async with asyncio.timeout(5):
                while len(guard) < len(silent):  # accepted, in order
                    await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await _read_until_closed(reader)).endswith(b"hello\n")
        writer.close()
        assert await _read_until_closed(silent[0][0]) == b""
        assert not silent[1][0].at_eof()
        for _, silent_writer in silent:
            silent_writer.close()
    assert closes.reasons == ["evicted"]


async def test_a_pipelined_half_request_is_cut_off_but_an_idle_connection_kept() -> None:
    """Against the real server: a request followed in the same packet by half of the
    next one gets its answer, then the connection is closed at the header timeout; a
    keep-alive connection that sent a whole request only is left open (idle)."""
    closes = Closes()
    guard = ConnectionGuard(limit=16, header_timeout=0.5, observer=closes)
    async with guarded(guard) as (port,):
        idle_reader, idle_writer = await asyncio.open_connection(LOOPBACK, port)
        idle_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo")
        answer = await _read_until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n")
        assert closes.reasons == ["header_timeout"]
        assert not idle_reader.at_eof() and len(guard) == 1
        writer.close()
        idle_writer.close()


async def test_the_limit_makes_room_for_every_listening_socket() -> None:
    """A site listening on several sockets (":PORT" opens IPv4 and IPv6 ones; here
    127.0.0.1 and ::1) tells the guard, whose limit then leaves room for a burst of
    accepts on each (two sockets once ran a process with 1024 open files out of them)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, before[1]))  # where it matters
    guard = ConnectionGuard()
    try:
        async with guarded(guard, host=[LOOPBACK, "::1"]) as ports:
            assert len(ports) == 2
            assert guard.limit == connection_limit(listeners=2) < connection_limit(listeners=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
