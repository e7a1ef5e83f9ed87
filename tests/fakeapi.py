"""A hand-written stand-in for the RealtimeKit livestream API, served on 127.0.0.1.

It answers the two endpoints the exporter uses in the shapes the real API documents
(listing with top-level paging, 404 in the RealtimeKit envelope for "no active session",
401 in the Cloudflare gateway envelope for a wrong token), and lets a test change streams
and inject faults between polls. Every stream carries a stream key and ingest URL so tests
can check that neither leaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    import asyncio

TOKEN = "test-token-5f2b9c0e7d1a4e63"
STREAM_KEY_PREFIX = "sk_live_SECRETKEY_"
BASE = "/client/v4/accounts/{account_id}/realtime/kit/{app_id}/livestreams"


@dataclass
class Fault:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


@dataclass
class FakeStream:
    id: str
    status: str = "IDLE"
    name: str | None = None
    meeting_id: str | None = None
    disabled: Any = False
    session: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "meeting_id": self.meeting_id,
            "disabled": self.disabled,
            "ingest_server": "rtmps://user:pw@live.example.invalid:443/live/",
            "stream_key": STREAM_KEY_PREFIX + self.id,
            "playback_url": f"https://example.invalid/{self.id}/manifest/video.m3u8",
            "created_at": "2026-11-27T10:00:00.000Z",
            "updated_at": "2026-11-27T10:00:00.000Z",
        }


class FakeApi:
    def __init__(self, *, page_size_cap: int = 100) -> None:
        self.apps: dict[tuple[str, str], dict[str, FakeStream]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.unrouted: list[str] = []  # paths of requests that matched none of its routes
        self.faults: dict[str, list[Fault]] = {"livestreams": [], "session": [], "by_id": []}
        self.sticky: dict[str, Fault | None] = {"livestreams": None, "session": None, "by_id": None}
        self.sessions_by_id: dict[str, dict[str, Any]] = {}
        self.page_size_cap = page_size_cap
        self.server: TestServer | None = None
        self.gate: asyncio.Event | None = None  # when set to an unset Event, listings hang

    # -- state a test changes -------------------------------------------------------
    def add(self, account_id: str, app_id: str, stream: FakeStream) -> FakeStream:
        self.apps.setdefault((account_id, app_id), {})[stream.id] = stream
        return stream

    def go_live(self, stream: FakeStream, *, ingest: Any = 60, viewer: Any = 60) -> None:
        stream.status = "LIVE"
        stream.session = {
            "id": f"sess-{stream.id}",
            "livestream_id": stream.id,
            "err_message": None,
            "invoked_time": None,
            "started_time": "2026-11-27T10:00:00.000Z",
            "stopped_time": None,
            "created_at": "2026-11-27T10:00:00.000Z",
            "updated_at": "2026-11-27T10:00:00.000Z",
            "ingest_seconds": ingest,
            "viewer_seconds": viewer,
        }
        self.sessions_by_id[stream.session["id"]] = stream.session

    def stop(self, stream: FakeStream, *, status: str = "IDLE", keep_session: bool = False) -> None:
        stream.status = status
        if stream.session is not None:
            stream.session["stopped_time"] = "2026-11-27T11:00:00.000Z"
        if not keep_session:
            stream.session = None

    def fail_next(self, endpoint: str, fault: Fault, times: int = 1) -> None:
        self.faults[endpoint].extend([fault] * times)

    def count(self, endpoint: str) -> int:
        """Requests received for "livestreams", "session" (active) or "by_id"."""
        return sum(1 for path, _ in self.requests if _endpoint(path) == endpoint)

    # -- serving ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/client/v4"))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(BASE, self._listing)
        app.router.add_get(BASE + "/{livestream_id}/active-livestream-session", self._session)
        app.router.add_get(BASE + "/sessions/{session_id}", self._session_by_id)
        app.router.add_get("/{path:.*}", self._unrouted)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def _fault(self, endpoint: str) -> web.Response | None:
        queued = self.faults[endpoint]
        fault = queued.pop(0) if queued else self.sticky[endpoint]
        if fault is None:
            return None
        body = fault.raw if fault.raw is not None else json.dumps(fault.body).encode()
        return web.Response(
            status=fault.status, body=body, headers=fault.headers, content_type="application/json"
        )

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {TOKEN}":
            return None
        body = {
            "success": False,
            "errors": [{"code": 10000, "message": "Authentication error"}],
            "messages": [],
            "result": None,
        }
        return web.json_response(body, status=401)

    async def _refusal(self, request: web.Request, endpoint: str) -> web.Response | None:
        """Record the request; answer it here if auth fails or a fault is queued."""
        self.requests.append((request.path, dict(request.query)))
        if endpoint == "livestreams" and self.gate is not None:
            await self.gate.wait()
        return self._auth(request) or self._fault(endpoint)

    async def _unrouted(self, request: web.Request) -> web.Response:
        """Recorded, then answered as aiohttp would, and as a gateway does: a 404 that is
        not in RealtimeKit's envelope."""
        self.unrouted.append(request.path)
        return web.Response(status=404, text="404: Not Found")

    async def _listing(self, request: web.Request) -> web.Response:
        if (refused := await self._refusal(request, "livestreams")) is not None:
            return refused
        key = (request.match_info["account_id"], request.match_info["app_id"])
        streams = list(self.apps.get(key, {}).values())
        per_page = min(int(request.query.get("per_page", "20")), self.page_size_cap)
        page_no = int(request.query.get("page_no", "1"))
        chunk = streams[(page_no - 1) * per_page : page_no * per_page]
        start = (page_no - 1) * per_page + 1
        return web.json_response(
            {
                "success": True,
                "data": [s.body() for s in chunk],
                "paging": {
                    "start_offset": start,
                    "end_offset": start + len(chunk) - 1,
                    "total_count": len(streams),
                },
            }
        )

    async def _session(self, request: web.Request) -> web.Response:
        if (refused := await self._refusal(request, "session")) is not None:
            return refused
        key = (request.match_info["account_id"], request.match_info["app_id"])
        stream = self.apps.get(key, {}).get(request.match_info["livestream_id"])
        if stream is None or stream.session is None:
            return web.json_response(
                {"success": False, "error": {"code": 404, "message": "No active session found"}},
                status=404,
            )
        return web.json_response(
            {"success": True, "data": {"livestream": stream.body(), "session": stream.session}}
        )

    async def _session_by_id(self, request: web.Request) -> web.Response:
        if (refused := await self._refusal(request, "by_id")) is not None:
            return refused
        found = self.sessions_by_id.get(request.match_info["session_id"])
        if found is None:
            return web.json_response(
                {"success": False, "error": {"code": 404, "message": "Session not found"}},
                status=404,
            )
        return web.json_response({"success": True, "data": found})


def _endpoint(path: str) -> str:
    if path.endswith("/active-livestream-session"):
        return "session"
    if "/livestreams/sessions/" in path:
        return "by_id"
    return "livestreams"
