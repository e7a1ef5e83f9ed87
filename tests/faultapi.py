"""A fake RealtimeKit API on a raw asyncio socket on 127.0.0.1, for the fault suite.

An aiohttp server always answers in proper HTTP; this one answers each request with an
:class:`Action` chosen by the test, which may also be no answer at all (:class:`Hang`),
headers and then silence (:class:`Stall`), a body cut short by the server closing the
socket (:class:`Cut`), a TCP reset (:class:`Reset`), or a body of any size streamed
without being held in memory (:class:`Stream`). :meth:`FaultApi.refuse` closes the
listener and every open connection, so that connecting is refused, and
:meth:`FaultApi.listen` opens it again on the same port.

Without a fault it answers like the real API's examples: the listing with top-level
paging, ``active-livestream-session`` (404 in RealtimeKit's envelope when there is no
active session), a session by id, a livestream by id. Every livestream carries a stream key
and every fault body can echo it and the token (:data:`ECHO`), as a hostile or buggy API
might, so that tests can check neither ever comes out of the exporter.
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

# 40 characters, as Cloudflare's API tokens are.
TOKEN: Final = "rtk_fault_4TqL9xWc2ZpR7vYb0NsE3uKd8HgJ1m"
APP_PATH: Final = f"/client/v4/accounts/{ACCOUNT}/realtime/kit/{APP}/livestreams"
STARTED: Final = "2026-11-27T10:00:00.000Z"
STARTED_AT: Final = 1_795_773_600.0  # STARTED as Unix time
CHUNK: Final = 64 * 1024


def stream_key(livestream_id: str) -> str:
    return STREAM_KEY_PREFIX + livestream_id.replace("-", "")


def stream_id(n: int) -> str:
    return f"5e1a{n:04d}-7c2d-4f1e-9a0b-{n:012d}"


# One livestream's key, quoted in every hostile body, header and field.
SOME_KEY: Final = stream_key(stream_id(0))
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


Action: TypeAlias = Reply | Hang | Stall | Cut | Reset | Stream


@dataclass(frozen=True)
class Request:
    endpoint: str  # the exporter's endpoint names (exporter.client.ENDPOINTS), or "unknown"
    target: str  # the livestream or session id in the path, "" for the listing
    query: dict[str, str]
    headers: dict[str, str]


Fault: TypeAlias = "Callable[[Request], Action | None]"


def on(endpoint: str, action: Action) -> Fault:
    """A fault that answers every request for ``endpoint`` with ``action``."""
    return lambda request: action if request.endpoint == endpoint else None


# -- the world ----------------------------------------------------------------------------
@dataclass
class FakeStream:
    id: str
    status: str = "IDLE"
    name: str | None = None
    session: dict[str, Any] | None = None  # the latest session, active or not

    @property
    def live(self) -> bool:
        return self.session is not None and self.session.get("stopped_time") is None

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "meeting_id": None,
            "disabled": False,
            "ingest_server": "rtmps://live.example.invalid:443/live/",
            "stream_key": stream_key(self.id),
            "playback_url": f"https://example.invalid/{self.id}/manifest/video.m3u8",
            "created_at": STARTED,
            "updated_at": STARTED,
        }


class FaultApi:
    """The fake API; ``fault`` (if set) picks each request's answer, ``None`` meaning the
    healthy one. ``served`` notes each request's endpoint and what it got."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self.streams: dict[str, FakeStream] = {}
        self.fault: Fault | None = None
        self.served: list[tuple[str, str]] = []
        self.streamed = 0  # body bytes that Stream actions got out
        self.stuck = asyncio.Event()  # set once a request hangs or stalls
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    # -- the world a test changes ------------------------------------------------------
    def add(
        self, n: int, *, live: bool = False, ingest: Any = 100, viewer: Any = 300
    ) -> FakeStream:
        stream = FakeStream(stream_id(n), name=f"stream {n}")
        self.streams[stream.id] = stream
        if live:
            stream.status = "LIVE"
            stream.session = {
                "id": f"cf55{n:04d}-c3fd-46b5-b5d2-{n:012d}",
                "livestream_id": stream.id,
                "err_message": None,
                "invoked_time": None,
                "started_time": STARTED,
                "stopped_time": None,
                "created_at": STARTED,
                "updated_at": STARTED,
                "ingest_seconds": ingest,
                "viewer_seconds": viewer,
            }
        return stream

    def secrets(self) -> list[str]:
        return [self.token, *(stream_key(s) for s in self.streams)]

    # -- serving ------------------------------------------------------------------------
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
            await self._server.wait_closed()
            self._server = None
        await self._drop_connections()

    async def close(self) -> None:
        self._release.set()
        await self.refuse()

    async def __aenter__(self) -> FaultApi:
        await self.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _drop_connections(self) -> None:
        for writer in self._connections.values():
            writer.transport.abort()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

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
                action = (self.fault(request) if self.fault is not None else None) or (
                    self.healthy(request)
                )
                self.served.append((request.endpoint, _outcome(action)))
                if not await self._perform(action, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return  # the client went away, or _drop_connections ended this connection
        finally:
            del self._connections[task]
            if not writer.is_closing():
                writer.transport.abort()

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
        if isinstance(action, Hang):
            self.stuck.set()
            await self._release.wait()
            return False
        if isinstance(action, Stall):
            headers = {"Content-Type": "application/json", "Content-Length": str(action.declared)}
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

    # -- healthy answers ----------------------------------------------------------------
    def healthy(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(401, gateway_error(10000, "Authentication error"))
        if request.endpoint == ENDPOINT_LISTING:
            return self._listing(request.query)
        if request.endpoint == ENDPOINT_SESSION:
            found = self.streams.get(request.target)
            if found is None or not found.live:
                return Reply(404, service_error(404, "No active session found"))
            return Reply(doc={"success": True, "data": self.active_data(found)})
        if request.endpoint == ENDPOINT_SESSION_BY_ID:
            for stream in self.streams.values():
                if stream.session is not None and stream.session["id"] == request.target:
                    return Reply(doc={"success": True, "data": stream.session})
            return Reply(404, service_error(404, "Livestream session not found"))
        if request.endpoint == ENDPOINT_LIVESTREAM and request.target in self.streams:
            found = self.streams[request.target]
            sessions = [] if found.session is None else [found.session]
            return Reply(
                doc={"success": True, "data": {**self.active_data(found), "sessions": sessions}}
            )
        return Reply(404, service_error(404, "Not found"))

    def active_data(self, stream: FakeStream) -> dict[str, Any]:
        return {"livestream": stream.body(), "session": stream.session}

    def listing_doc(self, page_no: int = 1, per_page: int = 100) -> dict[str, Any]:
        streams = list(self.streams.values())
        page = streams[(page_no - 1) * per_page : page_no * per_page]
        start = (page_no - 1) * per_page + 1
        return {
            "success": True,
            "data": [s.body() for s in page],
            "paging": {
                "start_offset": start,
                "end_offset": start + len(page) - 1,
                "total_count": len(streams),
            },
        }

    def _listing(self, query: dict[str, str]) -> Reply:
        per_page = min(int(query.get("per_page", "20")), 100)
        return Reply(doc=self.listing_doc(int(query.get("page_no", "1")), per_page))


def service_error(code: int, message: str) -> dict[str, Any]:
    """RealtimeKit's own error envelope."""
    return {"success": False, "error": {"code": code, "message": message}}


def gateway_error(code: int, message: str) -> dict[str, Any]:
    """The Cloudflare gateway's error envelope."""
    return {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }


def _parse(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    _, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query))
    endpoint, ident = _route(parts.path)
    return Request(endpoint=endpoint, target=ident, query=query, headers=headers)


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
