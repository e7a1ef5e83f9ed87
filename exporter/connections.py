"""Bounds on the connections the exporter's HTTP server holds.

aiohttp serves a connection for as long as its client keeps it open: one that trickles a
header line every few seconds, never finishes a TLS handshake or never reads its answer
holds a file descriptor and memory for good, and a thousand of them exhaust the process's
open files, after which no probe or scrape gets in. :class:`ConnectionGuard` sees every
TCP connection as it is accepted, before TLS, and enforces:

- at most ``limit`` open connections (:func:`connection_limit`: below the open-files
  limit). One more evicts the connection that has waited longest without a request in
  progress (a request still arriving, a TLS handshake, an idle keep-alive connection);
  if every connection is in a request, the new one is closed at once;
- the TLS handshake and the request headers must arrive within ``header_timeout`` of the
  connection opening, or of the first byte after the previous answer (of the answer, if
  bytes of a next request came before it);
- unsent answer data that has not moved for ``write_timeout`` ends the connection (a
  client that stopped reading).

Idle keep-alive connections are closed by aiohttp after its ``keepalive_timeout``
(:data:`IDLE_TIMEOUT`). TLS is done here, per connection (``loop.start_tls`` with the
context the guard is given), so that a handshake in progress is a connection like any
other: counted, timed and evictable.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from aiohttp import web

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterator

    from aiohttp.typedefs import Handler, Middleware
    from aiohttp.web import RequestHandler

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 1024
# File descriptors kept beyond the limit. Under a flood of connections asyncio accepts up
# to the listen backlog on each turn of the loop, on each listening socket (":PORT" opens
# two, IPv4 and IPv6), and a socket is admitted (or refused) two turns after its accept
# and closed one turn after that: about three backlogs a listening socket are open beyond
# the limit. Then API connections, files read by reloads and the process collector, the
# loop's own: RESERVED_FDS.
BACKLOG: Final = 128
BACKLOGS_IN_FLIGHT: Final = 3
RESERVED_FDS: Final = 128
HEADER_TIMEOUT: Final = 10.0  # seconds for the TLS handshake and a request's headers
WRITE_TIMEOUT: Final = 30.0  # seconds that unsent answer data may stay unsent
IDLE_TIMEOUT: Final = 150.0  # aiohttp's keepalive_timeout: over two 1m scrape intervals
SWEEP_INTERVAL: Final = 1.0
# Why the guard closed a connection: a label of realtimekit_exporter_http_connections_closed_total.
REASONS: Final = ("header_timeout", "write_timeout", "evicted", "refused")


class Observer(Protocol):
    def connections_open(self, count: int) -> None: ...

    def connection_closed(self, reason: str) -> None: ...


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard limit, as Prometheus' own servers
    do (many distributions start services with a soft limit of 1024); the limits after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. a hard limit above the kernel's nr_open
            return soft, hard
        soft = hard
    return soft, hard


def connection_limit(open_files: int | None = None, *, listeners: int = 1) -> int:
    """:data:`MAX_CONNECTIONS`, or fewer when the soft open-files limit leaves less room
    beside what ``listeners`` listening sockets may accept in a burst and
    :data:`RESERVED_FDS` (at least 16)."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    burst = listeners * BACKLOGS_IN_FLIGHT * BACKLOG
    return max(16, min(MAX_CONNECTIONS, open_files - RESERVED_FDS - burst))


class _State(enum.Enum):
    AWAITING = "awaiting"  # a TLS handshake or a request's headers are on their way
    BUSY = "busy"  # a request is being answered
    IDLE = "idle"  # between requests; aiohttp's keep-alive timeout applies


@dataclass(eq=False)
class _Connection:
    """One accepted TCP connection."""

    transport: asyncio.Transport  # the TCP one, below TLS
    since: float  # when it last changed state
    state: _State = _State.AWAITING
    handler: RequestHandler | None = None
    unfinished: bool = False  # bytes came after the last request head seen
    unsent: int = 0  # unsent bytes at the last sweep
    unsent_since: float = 0.0  # since when that many bytes have not moved
    upgrade: asyncio.Task[None] | None = field(default=None, repr=False)


class ConnectionGuard:
    """Enforces the bounds above on the connections made through :meth:`factory`."""

    def __init__(
        self,
        *,
        limit: int | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auto_limit = limit is None
        self.limit = connection_limit() if limit is None else limit
        self._header_timeout = header_timeout
        self._write_timeout = write_timeout
        self._observer = observer
        self._clock = clock
        # In the order they opened: the first AWAITING or IDLE one is the eviction's pick
        # among equals.
        self._open: dict[_Connection, None] = {}
        self._by_handler: dict[RequestHandler, _Connection] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    def factory(
        self, handlers: Callable[[], RequestHandler], tls: ssl.SSLContext | None
    ) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for ``loop.create_server`` (given no ``ssl``): each
        connection is admitted here, then served by a new ``handlers()``, over TLS with
        ``tls`` if given."""

        def accept() -> asyncio.Protocol:
            return _Accepting(self, handlers, tls)

        return accept

    def listening(self, sockets: int) -> None:
        """Told how many sockets the server listens on: each may accept a burst."""
        if self._auto_limit:
            self.limit = connection_limit(listeners=sockets)

    def start(self) -> None:
        """Start enforcing the timeouts (call on the event loop)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="connection-guard"
            )

    async def close(self) -> None:
        """Stop, and drop every connection still open."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for conn in list(self._open):
            if conn.upgrade is not None:
                conn.upgrade.cancel()
            conn.transport.abort()

    @property
    def middleware(self) -> Middleware:
        """The aiohttp middleware (outermost) that tells the guard when each request
        starts and ends: a connection in a request is neither evicted nor timed out for
        its headers."""

        @web.middleware
        async def in_request(request: web.Request, handler: Handler) -> web.StreamResponse:
            protocol = request.protocol
            self.request_started(protocol)
            try:
                return await handler(request)
            finally:
                self.request_finished(protocol)

        return in_request

    @contextlib.contextmanager
    def reading(self, handler: RequestHandler) -> Iterator[None]:
        """While the request on ``handler`` reads its body: its connection may be evicted
        at the limit, and is closed once the header timeout passes, as one still sending
        its head would be (a body that trickles holds no place a request could use)."""
        conn = self._by_handler.get(handler)
        if conn is not None:
            conn.state, conn.since = _State.AWAITING, self._clock()
        try:
            yield
        finally:
            if conn is not None and conn in self._open:
                conn.state, conn.since = _State.BUSY, self._clock()

    def request_started(self, handler: RequestHandler) -> None:
        conn = self._by_handler.get(handler)
        if conn is not None:
            conn.state, conn.since = _State.BUSY, self._clock()

    def request_finished(self, handler: RequestHandler) -> None:
        conn = self._by_handler.get(handler)
        if conn is not None:
            # Bytes after the request's head may be the start of the next one
            # (pipelined): its headers are then due within the header timeout.
            waiting = _State.AWAITING if conn.unfinished else _State.IDLE
            conn.state, conn.since = waiting, self._clock()

    # -- the connections' side ---------------------------------------------------------
    def _admit(self, transport: asyncio.Transport) -> _Connection | None:
        if len(self._open) >= self.limit and not self._evict():
            self._closed(transport, "refused")
            return None
        conn = _Connection(transport, since=self._clock())
        self._open[conn] = None
        self._count()
        return conn

    def _evict(self) -> bool:
        waiting = (c for c in self._open if c.state is not _State.BUSY)
        victim = min(waiting, key=lambda c: c.since, default=None)
        if victim is None:
            return False
        self._drop(victim, "evicted")
        return True

    def _serving(self, conn: _Connection, handler: RequestHandler) -> None:
        conn.handler = handler
        self._by_handler[handler] = conn

    def _received(self, conn: _Connection, data: bytes) -> None:
        # Whether bytes follow the last end of a request head seen: the start of a next
        # request (pipelined, perhaps never finished), or a body. A head split across two
        # reads at its end is missed: that connection waits for aiohttp's idle timeout.
        end = data.rfind(b"\r\n\r\n")
        conn.unfinished = len(data) > end + 4 if end >= 0 else conn.unfinished or bool(data)
        if conn.state is _State.IDLE:
            conn.state, conn.since = _State.AWAITING, self._clock()

    def _release(self, conn: _Connection) -> None:
        if conn not in self._open:
            return  # released already (a connection ends once, but may be told twice)
        del self._open[conn]
        if conn.handler is not None:
            self._by_handler.pop(conn.handler, None)
        self._count()

    def _drop(self, conn: _Connection, reason: str) -> None:
        if conn.upgrade is not None:
            conn.upgrade.cancel()
        self._closed(conn.transport, reason)
        self._release(conn)

    def _closed(self, transport: asyncio.Transport, reason: str) -> None:
        transport.abort()
        log.debug("connection closed: %s", reason)
        if self._observer is not None:
            self._observer.connection_closed(reason)

    def _count(self) -> None:
        if self._observer is not None:
            self._observer.connections_open(len(self._open))

    def sweep(self) -> None:
        """Close the connections that overran a timeout (run every second)."""
        now = self._clock()
        for conn in list(self._open):
            if conn.state is _State.AWAITING and now - conn.since > self._header_timeout:
                self._drop(conn, "header_timeout")
                continue
            # A reading client moves the buffer (down as it reads, up as the answer is
            # written on); one that stopped leaves it as it is.
            unsent = conn.transport.get_write_buffer_size()
            if unsent == 0 or unsent != conn.unsent:
                conn.unsent, conn.unsent_since = unsent, now
            elif now - conn.unsent_since > self._write_timeout:
                self._drop(conn, "write_timeout")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.sweep()


class _Accepting(asyncio.Protocol):
    """A TCP connection from its accept: admitted or refused, then served (after a TLS
    handshake, if the server speaks TLS)."""

    def __init__(
        self,
        guard: ConnectionGuard,
        handlers: Callable[[], RequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        self._guard = guard
        self._handlers = handlers
        self._tls = tls
        self._conn: _Connection | None = None
        self._app: _Serving | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        conn = self._guard._admit(transport)
        if conn is None:
            return
        self._conn = conn
        app = _Serving(self._guard, conn, self._handlers())
        if self._tls is None:
            self._app = app
            app.connection_made(transport)
            return
        # Nothing is read until the TLS layer takes the connection over.
        transport.pause_reading()
        conn.upgrade = asyncio.get_running_loop().create_task(self._upgrade(conn, app, self._tls))

    async def _upgrade(self, conn: _Connection, app: _Serving, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(
                conn.transport,
                app,
                tls,
                server_side=True,
                # The guard's header timeout ends it earlier; this is a backstop.
                ssl_handshake_timeout=self._guard._header_timeout * 2,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake failed: %s", type(exc).__name__)
            conn.transport.abort()
            self._guard._release(conn)
            return
        finally:
            conn.upgrade = None
        if secured is None:  # the connection went during the handshake
            self._guard._release(conn)
            return
        app.connection_made(secured)

    def data_received(self, data: bytes) -> None:
        if self._app is not None:
            self._app.data_received(data)

    def eof_received(self) -> bool | None:
        return self._app.eof_received() if self._app is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        # After start_tls the TLS layer is the TCP transport's protocol, not this one.
        if self._app is not None:
            self._app.connection_lost(exc)
        elif self._conn is not None:
            if self._conn.upgrade is not None:
                self._conn.upgrade.cancel()
            self._guard._release(self._conn)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()


class _Serving(asyncio.Protocol):
    """aiohttp's handler of one connection, as the guard sees it: bytes received make a
    waiting connection AWAITING, and the end of the connection releases it. Bytes the
    TLS layer hands over before the handshake's end is announced are kept until then."""

    def __init__(self, guard: ConnectionGuard, conn: _Connection, handler: RequestHandler):
        self._guard = guard
        self._conn = conn
        self._handler = handler
        self._made = False
        self._early: list[bytes] = []
        self._early_eof = False
        guard._serving(conn, handler)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made = True
        self._handler.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self._early_eof:
            self._handler.eof_received()

    def data_received(self, data: bytes) -> None:
        if not self._made:
            self._early.append(data)
            return
        self._guard._received(self._conn, data)
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._made:
            self._early_eof = True
        else:
            self._handler.eof_received()
        return None  # aiohttp's handler lets the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._release(self._conn)
        if self._made:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through ``guard`` (TLS with ``tls``, if given)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        guard: ConnectionGuard,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port)
        self._guard = guard
        self._tls = tls

    @property
    def name(self) -> str:
        return super().name.replace("http://", "https://", 1) if self._tls else super().name

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.factory(server, self._tls),
            self._host,
            self._port,
            backlog=BACKLOG,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        self._guard.listening(len(self._server.sockets))
