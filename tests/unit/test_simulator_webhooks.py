"""The simulator's webhooks on 127.0.0.1: the key document, registration, signed delivery,
retries, delivery faults, key rotation and a clean close."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from multidict import CIMultiDict

from exporter.simulator import DeliverySettings, Faults, Simulator, World
from exporter.simulator.faults import DeliveryDice
from exporter.simulator.webhooks import EVENTS, STATUS_EVENT, WebhookError
from tests.clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from exporter.simulator.webhooks import DeliveryRecord

TOKEN = "sim-token-5e0c7a21f4"
ACCOUNT = "acc-1"
APP = "app-1"
OTHER_APP = "app-2"
WAIT = 10.0  # the most any wait below takes; they all end much sooner
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WEBHOOK_KEYS = {"id", "name", "url", "events", "enabled", "created_at", "updated_at"}
BODY_KEYS = [
    "event",
    "streamId",
    "status",
    "manualIngest",
    "playbackUrl",
    "ingestServer",
    "streamKey",
]
# Fast enough for tests: retries 10, 20, 40, 80, 160 ms apart; the world advanced every
# 20 ms.
FAST = DeliverySettings(retry_delay=0.01, timeout=2.0, tick=0.02, duplicate_gap=0.05)


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float  # the event loop's time


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers each with the next
    status of ``script`` (then ``status``); with ``hang`` set, holds every answer until
    ``release`` is set."""

    status: int = 200
    script: list[int] = field(default_factory=list)
    hang: bool = False
    requests: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    origin: str = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.origin = f"http://{host}:{port}"

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/hook") -> str:
        return self.origin + path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(
            request.path,
            CIMultiDict(request.headers),
            await request.read(),
            asyncio.get_running_loop().time(),
        )
        async with self._arrived:
            self.requests.append(got)
            self._arrived.notify_all()
        if self.hang:
            await self.release.wait()
        status = self.script.pop(0) if self.script else self.status
        headers = {"Location": self.url("/elsewhere")} if 300 <= status < 400 else None
        return web.Response(status=status, headers=headers)

    async def wait_for(self, count: int) -> list[Received]:
        """The first ``count`` requests, once they have arrived."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.requests) >= count), WAIT
            )
        return self.requests[:count]


@dataclass
class Answer:
    status: int
    body: Any


class Rig:
    def __init__(self, sim: Simulator, http: aiohttp.ClientSession, receiver: Receiver) -> None:
        self.sim = sim
        self.http = http
        self.receiver = receiver

    def api_url(self, path: str, *, app: str = APP) -> str:
        return f"{self.sim.base_url}/accounts/{ACCOUNT}/realtime/kit/{app}{path}"

    async def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        app: str = APP,
        token: str | None = TOKEN,
        raw: bytes | None = None,
    ) -> Answer:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self.http.request(
            method, self.api_url(path, app=app), data=data, headers=headers
        ) as r:
            return Answer(r.status, json.loads(await r.text()))

    async def control(self, method: str, path: str, body: Any = None) -> Answer:
        data = None if body is None else json.dumps(body)
        async with self.http.request(method, self.sim.control_url + path, data=data) as r:
            text = await r.text()
            return Answer(r.status, json.loads(text) if text else None)

    async def faults(self, **changes: Any) -> None:
        answer = await self.control("PUT", "/faults", changes)
        assert answer.status == 200, answer.body

    async def register(
        self, url: str | None = None, *, events: list[str] | None = None, app: str = APP
    ) -> dict[str, Any]:
        body = {
            "name": "exporter",
            "url": url or self.receiver.url(),
            "events": events or [STATUS_EVENT],
        }
        answer = await self.api("POST", "/webhooks", body, app=app)
        assert answer.status == 201, answer.body
        data: dict[str, Any] = answer.body["data"]
        return data

    async def stream(self, *, meeting_id: str | None = None, app: str = APP) -> str:
        """A new OFFLINE stream under manual control."""
        body = {"account_id": ACCOUNT, "app_id": app, "meeting_id": meeting_id}
        answer = await self.control("POST", "/livestreams", body)
        assert answer.status == 201, answer.body
        return str(answer.body["id"])

    async def act(self, stream_id: str, action: str, body: Any = None) -> None:
        answer = await self.control("POST", f"/livestreams/{stream_id}/{action}", body)
        assert answer.status == 200, answer.body

    async def settled(self) -> list[DeliveryRecord]:
        await asyncio.wait_for(self.sim.deliveries_settled(), WAIT)
        return self.sim.webhook_log

    async def key(self) -> bytes:
        async with self.http.get(self.sim.key_url) as r:
            assert r.status == 200
            return str((await r.json())["data"]["publicKey"]).encode()


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Starts simulators (an app of two dormant streams, and another app of one) and a
    receiver for each; closes them all."""
    closing: list[Simulator | Receiver] = []
    async with aiohttp.ClientSession() as http:

        async def factory(
            *,
            settings: DeliverySettings = FAST,
            faults: Faults | None = None,
            receiver: Receiver | None = None,
            clock: FakeClock | None = None,
        ) -> Rig:
            world = World(seed=3, clock=clock or time.time)
            world.populate(ACCOUNT, APP, 2)  # dormant: they never change by themselves
            world.populate(ACCOUNT, OTHER_APP, 1)
            receiver = receiver or Receiver()
            await receiver.start()
            closing.append(receiver)
            sim = Simulator(world, token=TOKEN, faults=faults, webhook_settings=settings)
            await sim.start()
            closing.append(sim)
            return Rig(sim, http, receiver)

        try:
            yield factory
        finally:
            for item in reversed(closing):
                await item.close()


@pytest.fixture
async def rig(start: Callable[..., Awaitable[Rig]]) -> Rig:
    return await start()


def verifies(pem: bytes, body: bytes, signature: str) -> bool:
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        key.verify(
            base64.b64decode(signature, validate=True), body, padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


def assert_service_error(answer: Answer, status: int) -> str:
    assert answer.status == status, answer.body
    assert set(answer.body) == {"success", "error"} and answer.body["success"] is False
    assert answer.body["error"]["code"] == status
    return str(answer.body["error"]["message"])


def assert_gateway_error(answer: Answer, status: int) -> None:
    assert answer.status == status, answer.body
    assert answer.body == {
        "success": False,
        "errors": [{"code": 10000, "message": "Authentication error"}],
        "messages": [],
        "result": None,
    }


# -- the key document -------------------------------------------------------------------
async def test_key_document_is_realtimekits_shape_without_auth_or_rate_limit(rig: Rig) -> None:
    """The key document is at the origin's /.well-known/webhooks.json, shaped exactly as
    RealtimeKit's, a 2048-bit RSA PEM SPKI key; it needs no token, is served while the
    token is blocked, and is not counted among the API requests."""
    assert rig.sim.key_url == rig.sim.origin + "/.well-known/webhooks.json"
    assert (await rig.control("POST", "/throttle", {"seconds": 60})).status == 200
    async with rig.http.get(rig.sim.key_url) as r:
        assert r.status == 200 and r.content_type == "application/json"
        body = await r.json()
    assert set(body) == {"success", "data", "message"}
    assert body["success"] is True and body["message"] == ""
    assert list(body["data"]) == ["publicKey"]
    pem = body["data"]["publicKey"]
    assert pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert pem.endswith("\n-----END PUBLIC KEY-----\n")
    assert pem.encode() == rig.sim.public_key_pem
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    assert sum(rig.sim.state.requests.values()) == 0


async def test_key_document_unavailable_is_503_until_healed(rig: Rig) -> None:
    """With key_document_unavailable the key document answers 503 (RealtimeKit's error
    envelope) while deliveries stay signed with the same key; turned off, it is back."""
    await rig.register()
    served = await rig.key()
    await rig.faults(key_document_unavailable=True)
    async with rig.http.get(rig.sim.key_url) as r:
        assert_service_error(Answer(r.status, await r.json()), 503)
    await rig.act(await rig.stream(), "live")
    (got,) = await rig.receiver.wait_for(1)
    assert verifies(served, got.body, got.headers["rtk-signature"])
    await rig.faults(key_document_unavailable=False)
    assert await rig.key() == served
    stats = (await rig.control("GET", "/stats")).body["webhooks"]
    assert stats["key_document"] == {"200": 2, "503": 1}


# -- delivery ----------------------------------------------------------------------------
async def test_delivery_verifies_with_the_served_key_and_not_once_reserialised(rig: Rig) -> None:
    """A delivery's rtk-signature verifies (PKCS#1 v1.5, SHA-256) over the raw body with the
    key the document serves, and no longer does over the same JSON serialised again; the
    body is compact JSON in the documented key order, with the stream's real stream key
    and, for a stream of a meeting, the meeting."""
    await rig.register()
    meeting = str(uuid.uuid4())
    stream_id = await rig.stream(meeting_id=meeting)
    await rig.act(stream_id, "live")
    (got,) = await rig.receiver.wait_for(1)
    pem = await rig.key()
    assert verifies(pem, got.body, got.headers["rtk-signature"])
    reserialised = json.dumps(json.loads(got.body)).encode()
    assert reserialised != got.body
    assert not verifies(pem, reserialised, got.headers["rtk-signature"])

    body = json.loads(got.body)
    assert json.dumps(body, separators=(",", ":")).encode() == got.body
    assert list(body) == [*BODY_KEYS, "meeting"]
    stream = rig.sim.world.find(stream_id)
    assert body["event"] == "livestreaming.statusUpdate" and body["streamId"] == stream_id
    assert body["status"] == "LIVE" and body["manualIngest"] is False
    assert body["streamKey"] == stream.stream_key and body["streamKey"].startswith("sk_sim_")
    assert body["ingestServer"].startswith("rtmps://")
    assert body["playbackUrl"].endswith(".m3u8")
    assert set(body["meeting"]) == {"id", "title", "createdAt", "status", "organizedBy"}
    assert body["meeting"]["id"] == meeting and body["meeting"]["status"] == "LIVE"
    assert ISO.match(body["meeting"]["createdAt"])
    assert set(body["meeting"]["organizedBy"]) == {"id", "name"}


async def test_a_manual_stop_delivers_one_signed_status_update(rig: Rig) -> None:
    """Stopping a live stream through the control interface delivers one statusUpdate
    (IDLE, the stream's id, no meeting for a stream without one) with Content-Type JSON,
    a signature, a fresh rtk-uuid and the webhook's id; the log records it."""
    hook = await rig.register()
    stream_id = await rig.stream()
    await rig.act(stream_id, "live")
    await rig.receiver.wait_for(1)
    await rig.act(stream_id, "stop", {"status": "IDLE"})
    live, stopped = await rig.receiver.wait_for(2)
    records = await rig.settled()
    assert len(rig.receiver.requests) == len(records) == 2

    body = json.loads(stopped.body)
    assert list(body) == BODY_KEYS
    assert (body["streamId"], body["status"]) == (stream_id, "IDLE")
    headers = stopped.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["rtk-webhook-id"] == hook["id"]
    assert uuid.UUID(headers["rtk-uuid"]).version == 4
    assert headers["rtk-uuid"] != live.headers["rtk-uuid"]
    assert verifies(rig.sim.public_key_pem, stopped.body, headers["rtk-signature"])
    assert stopped.path == "/hook"

    record = records[1]
    assert (record.stream_id, record.status, record.uuid) == (
        stream_id,
        "IDLE",
        headers["rtk-uuid"],
    )
    assert (record.outcome, record.attempts, record.response) == ("delivered", 1, 200)
    assert record.first_attempt_at is not None and record.delivered_at is not None
    assert record.changed_at <= record.first_attempt_at <= record.delivered_at
    stats = (await rig.control("GET", "/stats")).body["webhooks"]
    assert stats["deliveries"] == stats["attempted"] == 2
    assert stats["outcomes"]["delivered"] == 2 and stats["responses"] == {"200": 2}


async def test_only_enabled_subscribed_webhooks_of_the_app_get_deliveries(rig: Rig) -> None:
    """A change is delivered to the app's enabled webhooks that subscribed to
    livestreaming.statusUpdate: not to a disabled one, one for other events, or one of
    another app; setting a status to what it is delivers nothing."""
    receiver = rig.receiver
    await rig.register(receiver.url("/subscribed"))
    await rig.register(receiver.url("/meetings"), events=["meeting.started"])
    disabled = await rig.register(receiver.url("/disabled"))
    edit = await rig.api("PATCH", f"/webhooks/{disabled['id']}", {"enabled": False})
    assert edit.status == 200 and edit.body["data"]["enabled"] is False
    await rig.register(receiver.url("/other-app"), app=OTHER_APP)
    stream_id = await rig.stream()
    await rig.act(stream_id, "status", {"status": "OFFLINE"})  # what it already is
    await rig.act(stream_id, "live")
    await rig.receiver.wait_for(1)
    await rig.settled()
    assert [r.path for r in receiver.requests] == ["/subscribed"]


async def test_the_autopilot_is_delivered_without_api_traffic(
    start: Callable[..., Awaitable[Rig]],
) -> None:
    """A change the autopilot makes is delivered without any API request, its record
    holding the world time of the change (the simulator advances the world itself while a
    webhook is registered)."""
    clock = FakeClock(time.time())
    rig = await start(clock=clock)
    await rig.register()
    answer = await rig.control(
        "POST", "/livestreams", {"account_id": ACCOUNT, "app_id": APP, "autopilot": True}
    )
    assert answer.status == 201
    due = answer.body["next_change"]
    clock.now = due + 1.0  # nothing asks the API from here on
    (got,) = await rig.receiver.wait_for(1)
    body = json.loads(got.body)
    assert (body["streamId"], body["status"]) == (answer.body["id"], "INVOKED")
    assert rig.sim.webhook_log[0].changed_at == due
    requests = dict(rig.sim.state.requests)
    assert requests == {("add_webhook", 201): 1}


async def test_a_5xx_is_retried_with_the_same_uuid_until_a_2xx(
    start: Callable[..., Awaitable[Rig]],
) -> None:
    """A delivery answered 500 and 503 is retried with the same rtk-uuid and bytes until a
    2xx, and then not sent again."""
    rig = await start(receiver=Receiver(script=[500, 503, 204]))
    await rig.register()
    await rig.act(await rig.stream(), "live")
    got = await rig.receiver.wait_for(3)
    (record,) = await rig.settled()
    assert len(rig.receiver.requests) == 3
    assert {r.headers["rtk-uuid"] for r in got} == {record.uuid}
    assert {r.body for r in got} == {got[0].body}
    assert (record.outcome, record.attempts, record.response) == ("delivered", 3, 204)
    stats = rig.sim.webhook_stats()
    assert (stats["attempted"], stats["retried"]) == (3, 2)
    assert stats["responses"] == {"204": 1, "500": 1, "503": 1}


@pytest.mark.parametrize("status", [302, 400, 401, 404, 429])
async def test_other_non_2xx_answers_fail_without_a_retry(
    start: Callable[..., Awaitable[Rig]], status: int
) -> None:
    """A non-2xx answer below 500 (a redirect, which is not followed, included) fails the
    delivery at once: one request, no retry."""
    rig = await start(receiver=Receiver(status=status))
    await rig.register()
    await rig.act(await rig.stream(), "live")
    (record,) = await rig.settled()
    assert [r.path for r in rig.receiver.requests] == ["/hook"]
    assert (record.outcome, record.attempts, record.response) == ("failed", 1, status)
    assert rig.sim.webhook_stats()["retried"] == 0


async def test_network_errors_are_retried_five_times_then_given_up(rig: Rig) -> None:
    """A receiver that refuses connections gets the first attempt and five retries, after
    which the delivery is given up (exhausted)."""
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await rig.register(f"http://127.0.0.1:{port}/hook")
    await rig.act(await rig.stream(), "live")
    (record,) = await rig.settled()
    assert (record.outcome, record.attempts, record.response) == ("exhausted", 6, None)
    stats = rig.sim.webhook_stats()
    assert stats["responses"] == {"error": 6} and stats["retried"] == 5


async def test_a_receiver_slower_than_the_timeout_is_retried(
    start: Callable[..., Awaitable[Rig]],
) -> None:
    """An attempt that gets no answer within the timeout counts as a network error and
    is retried."""
    settings = DeliverySettings(retry_delay=0.01, timeout=0.2, retries=1, tick=0.02)
    rig = await start(settings=settings, receiver=Receiver(hang=True))
    await rig.register()
    await rig.act(await rig.stream(), "live")
    (record,) = await rig.settled()
    assert (record.outcome, record.attempts) == ("exhausted", 2)
    assert len(rig.receiver.requests) == 2


# -- registration ------------------------------------------------------------------------
async def test_registration_create_read_update_replace_delete(rig: Rig) -> None:
    """The seven webhook operations answer as RealtimeKit documents them: 201 with the
    Webhook on POST, the app's list, one by id, PATCH of some fields, PUT of all (enabled
    back to true), DELETE answering the deleted Webhook, then 404."""
    created = await rig.register()
    assert set(created) == WEBHOOK_KEYS and uuid.UUID(created["id"]).version == 4
    assert created["events"] == [STATUS_EVENT] and created["enabled"] is True
    assert ISO.match(created["created_at"]) and ISO.match(created["updated_at"])
    hook = f"/webhooks/{created['id']}"

    listed = await rig.api("GET", "/webhooks")
    assert listed.status == 200 and listed.body == {"success": True, "data": [created]}
    assert (await rig.api("GET", "/webhooks", app=OTHER_APP)).body["data"] == []
    assert (await rig.api("GET", hook)).body == {"success": True, "data": created}

    patched = await rig.api("PATCH", hook, {"name": "renamed", "enabled": False})
    assert patched.status == 200
    assert patched.body["data"]["name"] == "renamed" and patched.body["data"]["enabled"] is False
    assert patched.body["data"]["url"] == created["url"]

    events = ["meeting.started", STATUS_EVENT]
    url = rig.receiver.url("/replaced")
    replaced = await rig.api("PUT", hook, {"name": "again", "url": url, "events": events})
    assert replaced.status == 200
    data = replaced.body["data"]
    assert (data["name"], data["url"], data["events"], data["enabled"]) == (
        "again",
        url,
        events,
        True,
    )
    assert data["created_at"] == created["created_at"]
    missing = await rig.api("PUT", hook, {"name": "x", "url": url})
    assert "events" in assert_service_error(missing, 400)

    deleted = await rig.api("DELETE", hook)
    assert deleted.status == 200 and deleted.body == {"success": True, "data": data}
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        body = {"name": "x"} if method in ("PATCH", "PUT") else None
        assert_service_error(await rig.api(method, hook, body), 404)
    assert (await rig.api("GET", "/webhooks")).body["data"] == []
    assert dict(rig.sim.state.requests) == {
        ("add_webhook", 201): 1,
        ("webhooks", 200): 3,
        ("webhook", 200): 1,
        ("webhook", 404): 1,
        ("edit_webhook", 200): 1,
        ("edit_webhook", 404): 1,
        ("replace_webhook", 200): 1,
        ("replace_webhook", 400): 1,
        ("replace_webhook", 404): 1,
        ("delete_webhook", 200): 1,
        ("delete_webhook", 404): 1,
    }


async def test_all_lists_the_nine_events(rig: Rig) -> None:
    """GET /webhooks/all answers the nine supported event names (and is not taken for a
    webhook id)."""
    answer = await rig.api("GET", "/webhooks/all")
    assert answer.status == 200
    assert answer.body == {"success": True, "data": list(EVENTS)}
    assert len(set(EVENTS)) == 9 and STATUS_EVENT in EVENTS


GOOD = {"name": "n", "url": "http://127.0.0.1:9/hook", "events": [STATUS_EVENT]}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"url": GOOD["url"], "events": GOOD["events"]}, "name"),
        ({"name": "n", "events": GOOD["events"]}, "url"),
        ({"name": "n", "url": GOOD["url"]}, "events"),
        ({**GOOD, "name": ""}, "name"),
        ({**GOOD, "name": 7}, "name"),
        ({**GOOD, "events": []}, "events"),
        ({**GOOD, "events": "livestreaming.statusUpdate"}, "events"),
        ({**GOOD, "events": ["livestream.statusUpdate"]}, "events"),
        ({**GOOD, "events": [STATUS_EVENT, 1]}, "events"),
        ({**GOOD, "url": "ftp://127.0.0.1/hook"}, "http"),
        ({**GOOD, "url": "/hook"}, "http"),
        ({**GOOD, "url": "http://127.0.0.1:99999/"}, "url"),
        ({**GOOD, "url": 5}, "url"),
        ({**GOOD, "url": "https://example.com/hook"}, "loopback"),
        ({**GOOD, "url": "http://10.0.0.1/hook"}, "loopback"),
        ({**GOOD, "url": "http://127.0.0.1.nip.io/hook"}, "loopback"),
        ({**GOOD, "url": "http://[2001:db8::1]/hook"}, "loopback"),
        ({**GOOD, "enabled": "yes"}, "enabled"),
        ({**GOOD, "secret": "s"}, "secret"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v,
)
async def test_bad_registrations_are_400_and_register_nothing(
    rig: Rig, body: dict[str, Any], named: str
) -> None:
    """A registration missing a field, with a bad value, an unknown field, or a URL that
    is not http(s) on a loopback host is a 400 in RealtimeKit's envelope whose message
    says why; nothing is registered."""
    message = assert_service_error(await rig.api("POST", "/webhooks", body), 400)
    assert named in message
    if named == "loopback":
        assert "127.0.0.0/8" in message
    assert (await rig.api("GET", "/webhooks")).body["data"] == []


@pytest.mark.parametrize("raw", [b"{oops", b"[1]", b""], ids=["not-json", "array", "empty"])
async def test_registration_bodies_that_are_not_objects_are_400(rig: Rig, raw: bytes) -> None:
    """A body that is not a JSON object is a 400 on POST, PATCH and PUT alike."""
    assert_service_error(await rig.api("POST", "/webhooks", raw=raw), 400)
    hook = await rig.register()
    for method in ("PATCH", "PUT"):
        assert_service_error(await rig.api(method, f"/webhooks/{hook['id']}", raw=raw), 400)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:9/hook", "http://127.3.2.1:9/", "http://[::1]:9/x", "https://LOCALHOST/"],
)
async def test_loopback_urls_are_accepted(rig: Rig, url: str) -> None:
    """Every loopback form (127.0.0.0/8, ::1, localhost) may be registered."""
    assert (await rig.register(url))["url"] == url


def test_python_registration_is_checked_the_same_way() -> None:
    """Simulator.add_webhook refuses what the API refuses (a host beyond loopback)."""
    world = World()
    world.populate(ACCOUNT, APP, 1)
    sim = Simulator(world, token=TOKEN)
    with pytest.raises(WebhookError, match="loopback"):
        sim.add_webhook(ACCOUNT, APP, url="http://192.0.2.1/hook")
    hook = sim.add_webhook(ACCOUNT, APP, url="http://127.0.0.1:9/hook")
    assert hook.events == (STATUS_EVENT,) and hook.enabled


async def test_webhook_endpoints_go_through_the_gate(rig: Rig) -> None:
    """The webhook endpoints need the token (401), are closed by webhooks_forbidden with
    the gateway's 403 as for a token without the permission, and answer 404 for an
    unknown app."""
    hook = await rig.register()
    assert_gateway_error(await rig.api("GET", "/webhooks", token=None), 401)
    assert_gateway_error(await rig.api("POST", "/webhooks", GOOD, token="wrong"), 401)
    await rig.faults(webhooks_forbidden=True)
    for method, path, body in (
        ("GET", "/webhooks", None),
        ("POST", "/webhooks", GOOD),
        ("GET", "/webhooks/all", None),
        ("GET", f"/webhooks/{hook['id']}", None),
        ("PATCH", f"/webhooks/{hook['id']}", {"name": "x"}),
        ("PUT", f"/webhooks/{hook['id']}", GOOD),
        ("DELETE", f"/webhooks/{hook['id']}", None),
    ):
        assert_gateway_error(await rig.api(method, path, body), 403)
    await rig.faults(webhooks_forbidden=False)
    assert (await rig.api("GET", f"/webhooks/{hook['id']}")).body["data"] == hook
    assert_service_error(await rig.api("GET", "/webhooks", app="no-such-app"), 404)


# -- delivery faults ---------------------------------------------------------------------
async def test_webhook_delay_and_jitter_hold_the_first_attempt(rig: Rig) -> None:
    """webhook_delay (plus up to webhook_jitter) passes between the change and the first
    attempt."""
    await rig.register()
    await rig.faults(webhook_delay=0.3, webhook_jitter=0.2)
    stream_id = await rig.stream()
    before = asyncio.get_running_loop().time()
    await rig.act(stream_id, "live")
    (got,) = await rig.receiver.wait_for(1)
    (record,) = await rig.settled()
    assert 0.3 <= record.delay <= 0.5
    assert got.at - before >= record.delay
    assert record.first_attempt_at is not None
    assert record.first_attempt_at - record.changed_at >= record.delay - 0.01


async def test_webhook_duplicate_sends_the_same_delivery_twice(rig: Rig) -> None:
    """With webhook_duplicate_rate 1 a delivered change is sent a second time with the
    same rtk-uuid, bytes and signature."""
    await rig.register()
    await rig.faults(webhook_duplicate_rate=1)
    await rig.act(await rig.stream(), "live")
    first, second = await rig.receiver.wait_for(2)
    (record,) = await rig.settled()
    assert first.body == second.body
    for name in ("rtk-uuid", "rtk-signature", "rtk-webhook-id"):
        assert first.headers[name] == second.headers[name]
    assert record.duplicated and record.attempts == 1
    assert rig.sim.webhook_stats()["duplicated"] == 1 and len(rig.receiver.requests) == 2


async def test_webhook_reorder_lets_a_later_delivery_overtake(rig: Rig) -> None:
    """A delivery held back by webhook_reorder_rate arrives after a later change's."""
    await rig.register()
    first_stream, second_stream = await rig.stream(), await rig.stream()
    await rig.faults(webhook_reorder_rate=1, webhook_reorder_delay=0.5)
    await rig.act(first_stream, "live")
    await rig.faults(webhook_reorder_rate=0)
    await rig.act(second_stream, "live")
    arrived = await rig.receiver.wait_for(2)
    assert [json.loads(r.body)["streamId"] for r in arrived] == [second_stream, first_stream]
    held, overtaking = await rig.settled()
    assert held.reordered and not overtaking.reordered and held.delay == 0.5
    assert held.changed_at <= overtaking.changed_at


async def test_webhook_unsigned_sends_no_signature(rig: Rig) -> None:
    """With webhook_unsigned_rate 1 a delivery carries no rtk-signature, its other headers
    as usual."""
    hook = await rig.register()
    await rig.faults(webhook_unsigned_rate=1)
    await rig.act(await rig.stream(), "live")
    (got,) = await rig.receiver.wait_for(1)
    assert "rtk-signature" not in got.headers
    assert got.headers["rtk-webhook-id"] == hook["id"] and got.headers["rtk-uuid"]
    assert (await rig.settled())[0].signature == "none"


async def test_webhook_wrong_key_signs_with_a_key_not_served(rig: Rig) -> None:
    """With webhook_wrong_key_rate 1 a delivery is validly signed, but by a key pair the
    document does not serve: it fails verification with the served key."""
    await rig.register()
    await rig.faults(webhook_wrong_key_rate=1)
    await rig.act(await rig.stream(), "live")
    (got,) = await rig.receiver.wait_for(1)
    signature = got.headers["rtk-signature"]
    assert len(base64.b64decode(signature, validate=True)) == 256
    assert not verifies(await rig.key(), got.body, signature)
    assert verifies(rig.sim.state.deliveries.wrong_key().public_pem, got.body, signature)


async def test_webhook_drop_never_sends(rig: Rig) -> None:
    """A delivery hit by webhook_drop_rate is never sent, and is counted as dropped; the
    next change, without the fault, is delivered."""
    await rig.register()
    stream_id = await rig.stream()
    await rig.faults(webhook_drop_rate=1)
    await rig.act(stream_id, "live")
    (dropped,) = await rig.settled()
    await rig.faults(webhook_drop_rate=0)
    await rig.act(stream_id, "stop")
    (got,) = await rig.receiver.wait_for(1)
    assert json.loads(got.body)["status"] == "IDLE"
    assert (dropped.status, dropped.outcome, dropped.attempts) == ("LIVE", "dropped", 0)
    stats = (await rig.control("GET", "/stats")).body["webhooks"]
    assert stats["outcomes"]["dropped"] == 1 and stats["attempted"] == 1


async def test_a_full_backlog_overflows_and_is_counted(
    start: Callable[..., Awaitable[Rig]],
) -> None:
    """Beyond ``backlog`` deliveries under way, a new one is not sent and is counted as
    overflowed."""
    rig = await start(settings=DeliverySettings(backlog=1, tick=0.02, retry_delay=0.01))
    await rig.register()
    stream_id = await rig.stream()
    await rig.faults(webhook_delay=0.3)
    await rig.act(stream_id, "live")
    await rig.act(stream_id, "stop")
    held, lost = await rig.settled()
    assert (held.outcome, lost.outcome) == ("delivered", "overflowed")
    assert rig.sim.webhook_stats()["outcomes"]["overflowed"] == 1
    assert len(rig.receiver.requests) == 1


def test_world_observers_see_every_change_and_cannot_stop_the_autopilot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """World.on_status observers get (stream, previous status, world time) for manual and
    autopilot changes, not for a status set to what it was; one that raises is logged and
    the autopilot carries on; cancelled, an observer hears nothing more."""
    clock = FakeClock(time.time())
    world = World(seed=1, clock=clock)
    seen: list[tuple[str, str, str, float]] = []

    def broken(*_: object) -> None:
        raise RuntimeError("observer bug")

    stop_seeing = world.on_status(
        lambda s, previous, at: seen.append((s.id, previous, s.status, at))
    )
    world.on_status(broken)
    world.create(ACCOUNT, APP, livestream_id="manual")
    world.set_status("manual", "OFFLINE")  # what it is: no change
    started = clock.now
    world.go_live("manual")
    clock.now += 10
    world.stop("manual", status="IDLE")
    cycling = world.create(ACCOUNT, APP, livestream_id="cycling", manual=False)
    due = cycling.next_change
    assert due is not None
    clock.now = due + 3600  # INVOKED, LIVE and more, every one applied
    world.now()
    assert seen[:2] == [
        ("manual", "OFFLINE", "LIVE", started),
        ("manual", "LIVE", "IDLE", started + 10),
    ]
    assert seen[2] == ("cycling", "OFFLINE", "INVOKED", due)
    assert [s[2] for s in seen[3:4]] == ["LIVE"] and cycling.next_change is not None
    assert "observer bug" in caplog.text
    stop_seeing()
    count = len(seen)
    world.go_live("manual")
    assert len(seen) == count


def test_delivery_dice_are_seeded_and_independent() -> None:
    """The delivery faults follow from the seed alone, and turning one fault on does not
    change which deliveries another one hits."""

    def drops(seed: int, faults: Faults) -> list[bool]:
        dice = DeliveryDice(seed)
        return [dice.roll(faults).drop for _ in range(200)]

    half = Faults(webhook_drop_rate=0.5)
    assert drops(1, half) == drops(1, half) != drops(2, half)
    assert 60 < sum(drops(1, half)) < 140
    more = Faults(webhook_drop_rate=0.5, webhook_duplicate_rate=0.5, webhook_unsigned_rate=0.3)
    assert drops(1, more) == drops(1, half)


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook_drop_rate": 1.5},
        {"webhook_duplicate_rate": -0.1},
        {"webhook_delay": 86401},
        {"webhook_reorder_delay": "2"},
        {"webhook_jitter": True},
        {"webhooks_forbidden": "yes"},
        {"key_document_unavailable": 1},
    ],
    ids=lambda c: ",".join(c),
)
async def test_bad_webhook_fault_settings_are_400(rig: Rig, changes: dict[str, Any]) -> None:
    """The webhook faults are checked like the others: shares 0..1, seconds 0..86400,
    switches true or false; a bad one changes nothing."""
    answer = await rig.control("PUT", "/faults", changes)
    assert answer.status == 400 and next(iter(changes)) in answer.body["error"]
    assert rig.sim.state.faults == Faults()


# -- the key over time, stats, close ---------------------------------------------------
async def test_a_rotated_key_signs_and_is_served_from_then_on(rig: Rig) -> None:
    """After POST /-/simulator/webhooks/rotate-key, deliveries are signed with the new key,
    which the document serves; they no longer verify with the old one."""
    await rig.register()
    old = await rig.key()
    stream_id = await rig.stream()
    await rig.act(stream_id, "live")
    (before,) = await rig.receiver.wait_for(1)
    rotated = await rig.control("POST", "/webhooks/rotate-key")
    assert rotated.status == 200
    new = rotated.body["publicKey"].encode()
    assert new != old and new == rig.sim.public_key_pem == await rig.key()
    await rig.act(stream_id, "stop")
    _, after = await rig.receiver.wait_for(2)
    assert verifies(old, before.body, before.headers["rtk-signature"])
    assert verifies(new, after.body, after.headers["rtk-signature"])
    assert not verifies(old, after.body, after.headers["rtk-signature"])
    assert rig.sim.webhook_stats()["key_rotations"] == 1
    assert rig.sim.rotate_key() not in (old, new)


async def test_stats_show_webhooks_once_used(rig: Rig) -> None:
    """The stats have no webhooks block until webhooks are used (their shape before
    webhooks existed); then it counts, and /-/simulator/webhooks lists every app's."""
    assert "webhooks" not in (await rig.control("GET", "/stats")).body
    hook = await rig.register()
    await rig.act(await rig.stream(), "live")
    await rig.receiver.wait_for(1)
    await rig.settled()
    stats = (await rig.control("GET", "/stats")).body["webhooks"]
    assert stats == {
        "registered": 1,
        "deliveries": 1,
        "attempted": 1,
        "retried": 0,
        "duplicated": 0,
        "outcomes": {
            "pending": 0,
            "delivered": 1,
            "failed": 0,
            "exhausted": 0,
            "dropped": 0,
            "overflowed": 0,
            "cancelled": 0,
        },
        "responses": {"200": 1},
        "key_rotations": 0,
        "key_document": {},
    }
    listed = (await rig.control("GET", "/webhooks")).body
    assert listed["webhooks"] == [{"account_id": ACCOUNT, "app_id": APP, **hook}]
    assert listed["stats"] == stats


def delivery_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").startswith("Deliveries.")
    ]


async def test_close_cancels_every_delivery_and_the_ticker(
    start: Callable[..., Awaitable[Rig]],
) -> None:
    """Simulator.close() cancels and awaits every delivery (in flight, or waiting for its
    delay) and the world ticker: no task of theirs is left, the records say cancelled."""
    rig = await start(receiver=Receiver(hang=True))
    await rig.register()
    first, second = await rig.stream(), await rig.stream()
    await rig.act(first, "live")
    await rig.receiver.wait_for(1)  # in flight: the receiver holds its answer
    await rig.faults(webhook_delay=60)
    await rig.act(second, "live")  # waiting for its delay
    assert len(delivery_tasks()) == 3  # two deliveries and the ticker
    await asyncio.wait_for(rig.sim.close(), WAIT)
    assert delivery_tasks() == []
    assert [r.outcome for r in rig.sim.webhook_log] == ["cancelled", "cancelled"]
    assert rig.sim.webhook_stats()["outcomes"]["cancelled"] == 2
