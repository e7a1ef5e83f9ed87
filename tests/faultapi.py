"""A raw socket in front of the simulator on 127.0.0.1, for what an HTTP server cannot do.

The simulator (an aiohttp app) always answers in proper HTTP; this server answers each
request with an :class:`Action` chosen by the test, which may also be no answer at all
(:class:`Hang`), headers and then silence (:class:`Stall`), a body cut short by the server
closing the socket (:class:`Cut`), a TCP reset (:class:`Reset`), a body of any size
streamed without being held in memory (:class:`Stream`), or any bytes (:class:`Reply`).
Without a fault it forwards the request to the simulator and relays its answer (status,
body, Content-Type), which :class:`Rewrite` may edit first. :meth:`FaultApi.refuse` closes
the listener and every open connection, so that connecting is refused, and
:meth:`FaultApi.listen` opens it again on the same port.

Every fault body can echo the token and a stream key (:data:`ECHO`), as a hostile or buggy
API might, so that tests can check neither ever comes out of the exporter.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp

from exporter.client import (
    ENDPOINT_LISTING,
    ENDPOINT_LIVESTREAM,
    ENDPOINT_SESSION,
    ENDPOINT_SESSION_BY_ID,
)
from exporter.simulator.world import STREAM_KEY_PREFIX
from tests.conftest import ACCOUNT, APP

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.simulator import Simulator

# 40 characters, as Cloudflare's API tokens are.
TOKEN: Final = "rtk_fault_4TqL9xWc2ZpR7vYb0NsE3uKd8HgJ1m"
APP_PATH: Final = f"/client/v4/accounts/{ACCOUNT}/realtime/kit/{APP}/livestreams"
CHUNK: Final = 64 * 1024

# A stream key, quoted in every hostile body, header and field.
SOME_KEY: Final = STREAM_KEY_PREFIX + "5e1a7c2d4f1e9a0b" * 2 + "00000000"
ECHO: Final = f"Authorization: Bearer {TOKEN} is not valid for stream_key={SOME_KEY} ({TOKEN})"
ECHO_HEADERS: Final = {
    "WWW-Authenticate": f'Bearer realm="{TOKEN}", error="{SOME_KEY}"',
    "X-Echo-Token": TOKEN,
    "X-Stream-Key": SOME_KEY,
    "Set-Cookie": f"token={TOKEN}; HttpOnly",
}


def hostile_envelope(code: int) -> dict[str, Any]:
    """Both error envelopes in one body, every message and field quoting the secrets."""
    return {
        "success": False,
        "error": {"code": code, "message": ECHO, "stream_key": SOME_KEY},
        "errors": [{"code": 10000, "message": ECHO}, {"code": 6003, "message": TOKEN}],
        "messages": [ECHO, {"token": TOKEN}],
        "result": {"token": TOKEN, "stream_key": SOME_KEY},
    }


def hostile_html(code: int) -> str:
    return (
        f"<!DOCTYPE html><html><head><title>{code}</title></head><body><h1>Error {code}</h1>"
        f"<p>{ECHO}</p><pre>Authorization: Bearer {TOKEN}</pre></body></html>"
    )


# -- what a request gets ----------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """An HTTP answer: ``doc`` as JSON, or ``raw`` bytes as they are."""

    status: int = 200
    doc: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def body(self) -> bytes:
        return self.raw if self.raw is not None else json.dumps(self.doc).encode()


@dataclass(frozen=True)
class Hang:
    """Read the request, never answer."""


@dataclass(frozen=True)
class Stall:
    """Send the headers (declaring ``declared`` bytes) and ``sent`` of the body, then nothing."""

    declared: int = 1000
    sent: bytes = b'{"success": true, "data": ['


@dataclass(frozen=True)
class Cut:
    """Send ``sent`` (headers and part of the body, or less) and close the socket."""

    sent: bytes = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
        b'{"success": true, "data": [{"id": "'
    )


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP reset, without answering."""


@dataclass(frozen=True)
class Stream:
    """A 200 whose body is ``prefix`` then ``filler`` until ``size`` bytes (None: without
    end); ``declared`` is its Content-Length (None: chunked)."""

    size: int | None = None
    declared: int | None = None
    prefix: bytes = b'{"success": true, "data": ['
    filler: bytes = b" "


@dataclass(frozen=True)
class Rewrite:
    """The simulator's answer, its JSON edited in place by ``change(request, doc)`` when
    it is a 200 (any other answer is relayed as it is)."""

    change: Callable[[Request, Any], None]


Action: TypeAlias = Reply | Hang | Stall | Cut | Reset | Stream | Rewrite


@dataclass(frozen=True)
class Request:
    endpoint: str  # the exporter's endpoint names (exporter.client.ENDPOINTS), or "unknown"
    target: str  # the livestream or session id in the path, "" for the listing
    query: dict[str, str]
    headers: dict[str, str]
    uri: str  # the request target as sent


Fault: TypeAlias = "Callable[[Request], Action | None]"


def on(endpoint: str, action: Action) -> Fault:
    """A fault that answers every request for ``endpoint`` with ``action``."""
    return lambda request: action if request.endpoint == endpoint else None


class FaultApi:
    """The fault server in front of ``sim``; ``fault`` (if set) picks each request's answer,
    ``None`` meaning the simulator's. ``served`` notes each request's endpoint and what it
    got."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.fault: Fault | None = None
        self.served: list[tuple[str, str]] = []
        self.streamed = 0  # body bytes that Stream actions got out
        self.stuck = asyncio.Event()  # set once a request hangs or stalls
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._upstream: aiohttp.ClientSession | None = None

    def secrets(self) -> list[str]:
        return [*self.sim.state.secrets(), *self.sim.world.secrets()]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/client/v4"

    async def listen(self) -> None:
        """Accept connections (again, on the same port after :meth:`refuse`)."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self._port, reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def refuse(self) -> None:
        """Stop listening and drop every connection: connecting is refused."""
        if self._server is not None:
            self._server.close()
        # Before waiting for the server: since Python 3.12.1 wait_closed() also waits
        # for the connections it accepted, which only these aborts end.
        for writer in self._connections.values():
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def __aenter__(self) -> FaultApi:
        self._upstream = aiohttp.ClientSession(trust_env=False, auto_decompress=False)
        await self.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        await self.refuse()
        if self._upstream is not None:
            await self._upstream.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request = _parse(head)
                action = self.fault(request) if self.fault is not None else None
                if action is None or isinstance(action, Rewrite):
                    action = await self._forward(request, action)
                self.served.append((request.endpoint, _outcome(action)))
                if not await self._perform(action, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return  # the client went away, or refuse() ended this connection
        finally:
            del self._connections[task]
            if not writer.is_closing():
                writer.transport.abort()

    async def _forward(self, request: Request, rewrite: Rewrite | None) -> Reply:
        """The simulator's answer to ``request``, edited by ``rewrite`` if it is a 200."""
        assert self._upstream is not None
        headers = {"Authorization": request.headers.get("authorization", "")}
        async with self._upstream.get(self.sim.origin + request.uri, headers=headers) as got:
            body = await got.read()
            reply = Reply(got.status, raw=body, content_type=got.content_type)
        if rewrite is None or reply.status != 200:
            return reply
        doc = json.loads(body)
        rewrite.change(request, doc)
        return Reply(200, doc)

    async def _perform(self, action: Action, writer: asyncio.StreamWriter) -> bool:
        """Carry out ``action``; False when the connection must not be used again."""
        if isinstance(action, Reply):
            body = action.body()
            headers = {
                "Content-Type": action.content_type,
                **action.headers,
                "Content-Length": str(len(body)),
            }
            writer.write(_head(action.status, headers) + body)
            await writer.drain()
            return True
        if isinstance(action, Hang | Stall):
            if isinstance(action, Stall):
                headers = {
                    "Content-Type": "application/json",
                    "Content-Length": str(action.declared),
                }
                writer.write(_head(200, headers) + action.sent)
                await writer.drain()
            self.stuck.set()
            await self._release.wait()
            return False
        if isinstance(action, Cut):
            writer.write(action.sent)
            await writer.drain()
            writer.close()  # FIN after what was sent: the answer ends early
            return False
        if isinstance(action, Reset):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        assert isinstance(action, Stream)
        await self._stream(action, writer)
        return False

    async def _stream(self, action: Stream, writer: asyncio.StreamWriter) -> None:
        chunked = action.declared is None
        headers = {"Content-Type": "application/json"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = str(action.declared)
        writer.write(_head(200, headers))
        filler = (action.filler * (CHUNK // len(action.filler) + 1))[:CHUNK]
        piece = action.prefix
        sent = 0
        try:
            while action.size is None or sent < action.size:
                if action.size is not None:
                    piece = piece[: action.size - sent]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
                sent += len(piece)
                self.streamed += len(piece)
                piece = filler
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except ConnectionError:
            return  # the client stopped reading and closed the connection


def _parse(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    _, uri, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    parts = urlsplit(uri)
    endpoint, ident = _route(parts.path)
    return Request(endpoint, ident, dict(parse_qsl(parts.query)), headers, uri)


def _route(path: str) -> tuple[str, str]:
    if not path.startswith(APP_PATH):
        return "unknown", ""
    rest = [unquote(p) for p in path[len(APP_PATH) :].split("/") if p]
    if not rest:
        return ENDPOINT_LISTING, ""
    if len(rest) == 2 and rest[0] == "sessions":
        return ENDPOINT_SESSION_BY_ID, rest[1]
    if len(rest) == 2 and rest[1] == "active-livestream-session":
        return ENDPOINT_SESSION, rest[0]
    if len(rest) == 1:
        return ENDPOINT_LIVESTREAM, rest[0]
    return "unknown", ""


def _head(status: int, headers: dict[str, str]) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _outcome(action: Action) -> str:
    return str(action.status) if isinstance(action, Reply) else type(action).__name__.lower()
