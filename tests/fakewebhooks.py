"""A hand-written stand-in for RealtimeKit's webhook registration API, on 127.0.0.1.

It serves ``GET``/``POST /webhooks`` and ``PATCH``/``DELETE /webhooks/{id}`` under
``/client/v4/accounts/{account_id}/realtime/kit/{app_id}`` in the documented shapes:
``{"success": true, "data": ...}``, 201 on create, RealtimeKit's 404 envelope for an
unknown id, and the Cloudflare gateway's envelope for a refused token (401 for a wrong
one; 403 for every request while :attr:`FakeWebhookApi.forbidden` is set). Answers can be
queued per method, and app, to inject failures (:meth:`FakeWebhookApi.fail_next`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

TOKEN = "whk-test-token-8c1e5d2f9a7b4e60"
APP_PATH = "/client/v4/accounts/{account_id}/realtime/kit/{app_id}"
GATEWAY_REFUSAL: dict[str, Any] = {
    "success": False,
    "errors": [{"code": 10000, "message": "Authentication error"}],
    "messages": [],
    "result": None,
}


@dataclass
class Sent:
    """One request the fake received."""

    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class Answer:
    """A canned answer, served instead of the real one; with ``applied``, the request is
    carried out first (an answer lost on the way back)."""

    status: int
    body: Any = field(default_factory=lambda: {"success": False, "error": {"code": 500}})
    applied: bool = False
    app_id: str | None = None  # only for requests about this app


class FakeWebhookApi:
    """The webhooks of any number of apps, kept in memory; use with ``async with``."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self.token = token
        self.hooks: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.requests: list[Sent] = []
        self.forbidden = False  # answer every request 403, as for a token without permission
        self.queued: dict[str, list[Answer]] = {}
        self._ids = (f"00000000-0000-4000-8000-{n:012d}" for n in itertools.count(1))
        self._server: TestServer | None = None

    # -- state a test sets or reads ---------------------------------------------------
    def add(
        self,
        account_id: str,
        app_id: str,
        *,
        url: str,
        events: list[str] | None = None,
        enabled: bool = True,
        name: str = "someone else's",
    ) -> str:
        """A webhook that exists before the test runs; its id."""
        hook_id = next(self._ids)
        self.hooks.setdefault((account_id, app_id), {})[hook_id] = {
            "id": hook_id,
            "name": name,
            "url": url,
            "events": list(events if events is not None else ["meeting.started"]),
            "enabled": enabled,
            "created_at": "2026-01-01T00:00:00.000Z",
            "updated_at": "2026-01-01T00:00:00.000Z",
        }
        return hook_id

    def of(self, account_id: str, app_id: str) -> list[dict[str, Any]]:
        return list(self.hooks.get((account_id, app_id), {}).values())

    def fail_next(self, method: str, answer: Answer, times: int = 1) -> None:
        self.queued.setdefault(method, []).extend([answer] * times)

    def _take(self, request: web.Request) -> Answer | None:
        queued = self.queued.get(request.method, [])
        app_id = request.match_info.get("app_id")
        for i, answer in enumerate(queued):
            if answer.app_id in (None, app_id):
                return queued.pop(i)
        return None

    def count(self, method: str) -> int:
        return sum(1 for sent in self.requests if sent.method == method)

    # -- serving ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("not started")
        return str(self._server.make_url("/client/v4"))

    async def __aenter__(self) -> FakeWebhookApi:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get(APP_PATH + "/webhooks", self._list)
        app.router.add_post(APP_PATH + "/webhooks", self._create)
        app.router.add_patch(APP_PATH + "/webhooks/{webhook_id}", self._edit)
        app.router.add_delete(APP_PATH + "/webhooks/{webhook_id}", self._delete)
        self._server = TestServer(app, host="127.0.0.1", port=0)
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    @web.middleware
    async def _gate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append(
            Sent(request.method, request.path, body, request.headers.get("Authorization"))
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(GATEWAY_REFUSAL, status=401)
        if self.forbidden:
            return web.json_response(GATEWAY_REFUSAL, status=403)
        answer = self._take(request)
        if answer is not None and not answer.applied:
            return web.json_response(answer.body, status=answer.status)
        try:
            response = await handler(request)
        except web.HTTPNotFound:  # no route: the gateway's envelope, as Cloudflare's
            body = {**GATEWAY_REFUSAL, "errors": [{"code": 7003, "message": "No route"}]}
            return web.json_response(body, status=404)
        if answer is not None:
            return web.json_response(answer.body, status=answer.status)
        return response

    def _app(self, request: web.Request) -> dict[str, dict[str, Any]]:
        key = (request.match_info["account_id"], request.match_info["app_id"])
        return self.hooks.setdefault(key, {})

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({"success": True, "data": list(self._app(request).values())})

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        hook_id = next(self._ids)
        hook = {
            "id": hook_id,
            "name": body["name"],
            "url": body["url"],
            "events": body["events"],
            "enabled": body.get("enabled", True),
            "created_at": "2026-01-02T00:00:00.000Z",
            "updated_at": "2026-01-02T00:00:00.000Z",
        }
        self._app(request)[hook_id] = hook
        return web.json_response({"success": True, "data": hook}, status=201)

    async def _edit(self, request: web.Request) -> web.Response:
        hook = self._app(request).get(request.match_info["webhook_id"])
        if hook is None:
            return _not_found(request)
        body = await request.json()
        hook.update({k: body[k] for k in ("name", "url", "events", "enabled") if k in body})
        hook["updated_at"] = "2026-01-03T00:00:00.000Z"
        return web.json_response({"success": True, "data": hook})

    async def _delete(self, request: web.Request) -> web.Response:
        hook = self._app(request).pop(request.match_info["webhook_id"], None)
        if hook is None:
            return _not_found(request)
        return web.json_response({"success": True, "data": hook})


def _not_found(request: web.Request) -> web.Response:
    message = f"No webhook found with id {request.match_info['webhook_id']}"
    return web.json_response(
        {"success": False, "error": {"code": 404, "message": message}}, status=404
    )
