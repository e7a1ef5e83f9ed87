"""The simulator over HTTP on 127.0.0.1: RealtimeKit's answers, rate limits, faults, control."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, overload

import aiohttp
import pytest

from exporter.simulator import REALISTIC, Canned, Faults, RateLimiter, Simulator, World
from exporter.simulator.api import Traffic
from exporter.simulator.webhooks import STATUS_EVENT
from exporter.simulator.world import FILTER_STATUSES
from tests.clock import FakeClock
from tests.conftest import shape

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from exporter.simulator.world import SimSession, SimStream

TOKEN = "sim-token-7c41d2e9b0"
ACCOUNT = "acc-1"
APP = "app-1"
OTHER_APP = "app-2"
T0 = 1_800_000_000.0
STREAMS = 45
LIVE = 6
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LIVESTREAM_KEYS = {
    "id",
    "name",
    "status",
    "meeting_id",
    "disabled",
    "ingest_server",
    "stream_key",
    "playback_url",
    "created_at",
    "updated_at",
}
SESSION_KEYS = {
    "id",
    "livestream_id",
    "err_message",
    "invoked_time",
    "started_time",
    "stopped_time",
    "created_at",
    "updated_at",
    "ingest_seconds",
    "viewer_seconds",
}


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    text: str
    content_type: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def remaining(self) -> int:
        found = re.fullmatch(r'"default";r=(\d+);t=(\d+)', self.headers["Ratelimit"])
        assert found is not None, self.headers["Ratelimit"]
        return int(found.group(1))


class Rig:
    def __init__(self, sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock) -> None:
        self.sim = sim
        self.http = http
        self.clock = clock

    @property
    def world(self) -> World:
        return self.sim.world

    def url(self, path: str = "", *, account: str = ACCOUNT, app: str = APP) -> str:
        return f"{self.sim.base_url}/accounts/{account}/realtime/kit/{app}/livestreams{path}"

    async def get(
        self,
        path: str = "",
        params: Mapping[str, str] | None = None,
        *,
        token: str | None = TOKEN,
        account: str = ACCOUNT,
        app: str = APP,
    ) -> Answer:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.http.get(
            self.url(path, account=account, app=app), params=params, headers=headers
        ) as r:
            return Answer(r.status, r.headers, await r.text(), r.content_type)

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {} if body is None else {"data": json.dumps(body)}
        async with self.http.request(method, self.sim.control_url + path, **kwargs) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    async def faults(self, **changes: Any) -> dict[str, Any]:
        status, body = await self.control("PUT", "/faults", changes)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    def streams(self, app: str = APP) -> list[SimStream]:
        self.world.now()
        return self.world.streams(ACCOUNT, app) or []

    def live(self) -> list[SimStream]:
        return [s for s in self.streams() if s.session is not None]

    def resting(self) -> list[SimStream]:
        return [s for s in self.streams() if s.session is None]


@pytest.fixture
async def start() -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """Starts simulators of a seeded world (45 streams, 6 live, plus a second app)."""
    sims: list[Simulator] = []
    async with aiohttp.ClientSession() as http:

        async def factory(
            *,
            seed: int = 5,
            limiter: RateLimiter | None = None,
            faults: Faults | None = None,
            max_per_page: int = 100,
        ) -> Rig:
            clock = FakeClock()
            world = World(seed=seed, profile=REALISTIC, clock=clock)
            world.populate(ACCOUNT, APP, STREAMS, live=LIVE)
            world.populate(ACCOUNT, OTHER_APP, 3, live=1)
            sim = Simulator(
                world, token=TOKEN, faults=faults, limiter=limiter, max_per_page=max_per_page
            )
            await sim.start()
            sims.append(sim)
            return Rig(sim, http, clock)

        try:
            yield factory
        finally:
            for sim in sims:
                await sim.close()


@pytest.fixture
async def rig(start: Callable[..., Awaitable[Rig]]) -> Rig:
    return await start()


def assert_service_error(answer: Answer, status: int) -> str:
    """RealtimeKit's own envelope; returns the message."""
    assert answer.status == status, answer.text
    body = answer.json
    assert set(body) == {"success", "error"}
    assert body["success"] is False and body["error"]["code"] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


def assert_gateway_error(answer: Answer, status: int, code: int) -> str:
    """The Cloudflare gateway's envelope; returns the message."""
    assert answer.status == status, answer.text
    body = answer.json
    assert set(body) == {"success", "errors", "messages", "result"}
    assert body["success"] is False and body["messages"] == [] and body["result"] is None
    (error,) = body["errors"]
    assert error["code"] == code and isinstance(error["message"], str)
    return str(error["message"])


def iso(t: float) -> str:
    """A whole second in RealtimeKit's format."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z"


def parse(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- the listing ------------------------------------------------------------------------
async def test_listing_shape(rig: Rig) -> None:
    """``data`` is an array, ``paging`` sits beside it, and the secrets are in the body."""
    answer = await rig.get()
    assert answer.status == 200 and answer.content_type == "application/json"
    body = answer.json
    assert set(body) == {"success", "data", "paging"} and body["success"] is True
    assert isinstance(body["data"], list) and len(body["data"]) == 20  # the default page
    assert body["paging"] == {"start_offset": 1, "end_offset": 20, "total_count": STREAMS}
    world = {s.id: s for s in rig.streams()}
    for item in body["data"]:
        assert set(item) == LIVESTREAM_KEYS
        stream = world[item["id"]]
        assert item["stream_key"] == stream.stream_key and item["stream_key"]
        assert (item["status"], item["name"], item["meeting_id"]) == (
            stream.status,
            stream.name,
            stream.meeting_id,
        )
        assert item["disabled"] is False
        assert ISO.match(item["created_at"]) and ISO.match(item["updated_at"])


async def test_paging_covers_every_stream_exactly_once(rig: Rig) -> None:
    seen: list[str] = []
    for page_no in range(1, 8):
        body = (await rig.get(params={"page_no": str(page_no), "per_page": "7"})).json
        first = (page_no - 1) * 7 + 1
        assert body["paging"] == {
            "start_offset": first,
            "end_offset": first + len(body["data"]) - 1,
            "total_count": STREAMS,
        }
        assert len(body["data"]) == (7 if page_no < 7 else STREAMS - 42)
        seen += [item["id"] for item in body["data"]]
    assert len(seen) == len(set(seen)) == STREAMS
    assert set(seen) == {s.id for s in rig.streams()}
    past = (await rig.get(params={"page_no": "8", "per_page": "7"})).json
    assert past["data"] == [] and past["paging"]["total_count"] == STREAMS


async def test_per_page_is_clamped_at_max_per_page(start: Callable[..., Awaitable[Rig]]) -> None:
    rig = await start(max_per_page=25)
    body = (await rig.get(params={"per_page": "1000"})).json
    assert len(body["data"]) == 25
    assert body["paging"] == {"start_offset": 1, "end_offset": 25, "total_count": STREAMS}
    second = (await rig.get(params={"per_page": "1000", "page_no": "2"})).json
    assert len(second["data"]) == STREAMS - 25
    assert second["paging"]["start_offset"] == 26


async def test_sort_order(rig: Rig) -> None:
    """Newest ``created_at`` first by default (DSC), oldest first with ASC."""
    oldest_first = [s.id for s in rig.world.by_creation_time(ACCOUNT, APP) or []]
    params = {"per_page": "100"}
    default = (await rig.get(params=params)).json["data"]
    dsc = (await rig.get(params={**params, "sort_order": "DSC"})).json["data"]
    asc = (await rig.get(params={**params, "sort_order": "ASC"})).json["data"]
    assert [i["id"] for i in default] == [i["id"] for i in dsc] == oldest_first[::-1]
    assert [i["id"] for i in asc] == oldest_first
    created = [i["created_at"] for i in asc]
    assert created == sorted(created) and len(set(created)) == STREAMS


@pytest.mark.parametrize("status", FILTER_STATUSES)
async def test_status_filter(rig: Rig, status: str) -> None:
    if status == "ERRORED":
        rig.world.fail(rig.resting()[0].id)
    while status == "INVOKED" and not any(s.status == status for s in rig.streams()):
        rig.clock.now += 1  # until the autopilot invokes a stream
        assert rig.clock.now < T0 + 3600
    expected = {s.id for s in rig.streams() if s.status == status}
    body = (await rig.get(params={"status": status, "per_page": "100"})).json
    assert {i["id"] for i in body["data"]} == expected and expected
    assert {i["status"] for i in body["data"]} == {status}
    assert body["paging"]["total_count"] == len(expected)
    if status == "LIVE":
        assert len(expected) == LIVE


async def test_exclude_meetings_and_time_filters(rig: Rig) -> None:
    streams = rig.streams()
    standalone = {s.id for s in streams if s.meeting_id is None}
    assert 0 < len(standalone) < STREAMS
    body = (await rig.get(params={"exclude_meetings": "true", "per_page": "100"})).json
    assert {i["id"] for i in body["data"]} == standalone
    assert body["paging"]["total_count"] == len(standalone)
    everything = (await rig.get(params={"exclude_meetings": "false", "per_page": "100"})).json
    assert everything["paging"]["total_count"] == STREAMS

    created = sorted(s.created_at for s in streams)
    start = (created[10] + created[11]) / 2
    end = (created[30] + created[31]) / 2
    window = {s.id for s in streams if start <= s.created_at <= end}
    assert len(window) == 20
    params = {"start_time": iso(start), "end_time": iso(end), "per_page": "100"}
    body = (await rig.get(params=params)).json
    assert {i["id"] for i in body["data"]} == window
    only_start = (await rig.get(params={"start_time": iso(start), "per_page": "100"})).json
    assert only_start["paging"]["total_count"] == STREAMS - 11
    only_end = (await rig.get(params={"end_time": iso(end), "per_page": "100"})).json
    assert only_end["paging"]["total_count"] == 31
    combined = {**params, "exclude_meetings": "true", "sort_order": "ASC"}
    body = (await rig.get(params=combined)).json
    assert [i["id"] for i in body["data"]] == [
        s.id
        for s in rig.world.by_creation_time(ACCOUNT, APP) or []
        if s.id in window and s.id in standalone
    ]


async def test_a_time_without_zone_is_utc_whatever_the_local_zone(rig: Rig) -> None:
    """The answer does not depend on the time zone of the machine the simulator runs on."""
    created = sorted(s.created_at for s in rig.streams())
    naive = iso(created[20] + 1).removesuffix(".000Z")  # just after the 21st oldest stream
    old = os.environ.get("TZ")
    try:
        os.environ["TZ"] = "XXX-14"  # 14 hours ahead of UTC
        time.tzset()
        body = (await rig.get(params={"start_time": naive, "per_page": "100"})).json
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
    assert body["paging"]["total_count"] == STREAMS - 21


@pytest.mark.parametrize(
    "params",
    [
        {"page_no": "0"},
        {"page_no": "-1"},
        {"page_no": "one"},
        {"page_no": "²"},
        {"per_page": "0"},
        {"per_page": "2.5"},
        {"status": "OFFLINE"},
        {"status": "live"},
        {"sort_order": "DESC"},
        {"sort_order": "asc"},
        {"exclude_meetings": "yes"},
        {"start_time": "yesterday"},
        {"end_time": "2023-13-45T00:00:00.000Z"},
        # Beyond Python's 4300-digit limit for int(), and just beyond the 9-digit cap.
        {"page_no": "9" * 4301},
        {"per_page": "1" * 5000},
        {"page_no": "1234567890"},
    ],
    ids=lambda p: "-".join(f"{k}={v[:12]}" for k, v in p.items()),
)
async def test_bad_listing_queries_are_400(rig: Rig, params: dict[str, str]) -> None:
    answer = await rig.get(params=params)
    message = assert_service_error(answer, 400)
    assert next(iter(params)) in message
    assert "Ratelimit" in answer.headers


async def test_bad_paging_of_sessions_is_400(rig: Rig) -> None:
    stream = rig.streams()[0]
    assert_service_error(await rig.get(f"/{stream.id}", {"page_no": "0"}), 400)
    assert_service_error(await rig.get(f"/{stream.id}", {"per_page": "x"}), 400)
    assert_service_error(await rig.get(f"/{stream.id}", {"page_no": "7" * 4400}), 400)
    assert_service_error(await rig.get(f"/{stream.id}", {"per_page": "1" * 10}), 400)


async def test_nine_digit_pages_are_answered(rig: Rig) -> None:
    """The cap refuses nothing a client could mean: page 999,999,999 is just empty."""
    body = (await rig.get(params={"page_no": "999999999", "per_page": "999999999"})).json
    assert body["data"] == [] and body["paging"]["total_count"] == STREAMS
    stream = rig.streams()[0]
    assert (await rig.get(f"/{stream.id}", {"page_no": "999999999"})).status == 200


class CountingSequence(Sequence["SimStream"]):
    """A stream list that counts how many of its items a request reads."""

    def __init__(self, items: list[SimStream]) -> None:
        self.items = items
        self.read = 0

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> SimStream: ...
    @overload
    def __getitem__(self, index: slice) -> list[SimStream]: ...
    def __getitem__(self, index: int | slice) -> SimStream | list[SimStream]:
        if isinstance(index, slice):
            got = self.items[index]
            self.read += len(got)
            return got
        self.read += 1
        return self.items[index]


@pytest.mark.parametrize("order", ["DSC", "ASC"])
async def test_a_listing_page_reads_only_its_streams(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """A page of 5 newest-first reads 5 streams of the app, not a reversed copy of all
    of them (at 100,000 streams that copy was most of a page's time)."""
    ordered = rig.world.by_creation_time(ACCOUNT, APP) or []
    counting = CountingSequence(list(ordered))
    monkeypatch.setattr(rig.world, "by_creation_time", lambda *_: counting)
    body = (await rig.get(params={"page_no": "3", "per_page": "5", "sort_order": order})).json
    expected = list(ordered) if order == "ASC" else list(reversed(ordered))
    assert [i["id"] for i in body["data"]] == [s.id for s in expected[10:15]]
    assert counting.read == 5


async def test_requests_do_not_copy_the_apps_streams(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking that the app exists is a lookup, not a copy of its streams per request."""

    def no_copies(*_: object) -> None:
        raise AssertionError("copied an app's streams")

    monkeypatch.setattr(rig.world, "streams", no_copies)
    monkeypatch.setattr(rig.world, "all_streams", no_copies)
    live = next(s for s in rig.world.by_creation_time(ACCOUNT, APP) or [] if s.session)
    assert (await rig.get()).status == 200
    assert (await rig.get(f"/{live.id}/active-livestream-session")).status == 200
    assert_service_error(await rig.get(app="no-such-app"), 404)
    assert rig.world.has_app(ACCOUNT, APP) and not rig.world.has_app(ACCOUNT, "no-such-app")
    assert not rig.world.has_app("no-such-account", APP)


# -- sessions ---------------------------------------------------------------------------
def session_values(session: SimSession, now: float) -> tuple[float, float]:
    return session.ingest_seconds(now), session.viewer_seconds(now)


async def test_active_session_of_a_live_stream(rig: Rig) -> None:
    stream = rig.live()[0]
    session = stream.session
    assert session is not None
    rig.clock.now += 12.5
    answer = await rig.get(f"/{stream.id}/active-livestream-session")
    assert answer.status == 200
    body = answer.json
    assert set(body) == {"success", "data"} and body["success"] is True
    assert set(body["data"]) == {"livestream", "session"}
    livestream, got = body["data"]["livestream"], body["data"]["session"]
    assert set(livestream) == LIVESTREAM_KEYS and livestream["id"] == stream.id
    assert livestream["status"] == "LIVE" and livestream["stream_key"] == stream.stream_key
    assert set(got) == SESSION_KEYS
    assert (got["id"], got["livestream_id"], got["stopped_time"]) == (session.id, stream.id, None)
    assert got["err_message"] is None
    assert (got["ingest_seconds"], got["viewer_seconds"]) == session_values(session, rig.clock.now)
    assert parse(got["started_time"]) == pytest.approx(session.started_time, abs=0.001)
    assert parse(got["updated_at"]) == rig.clock.now
    assert all(ISO.match(got[k]) for k in ("started_time", "created_at", "updated_at"))


async def test_no_active_session_is_a_404_envelope(rig: Rig) -> None:
    resting = rig.resting()[0]
    message = assert_service_error(await rig.get(f"/{resting.id}/active-livestream-session"), 404)
    assert "No active session" in message
    assert_service_error(await rig.get("/nope/active-livestream-session"), 404)
    # A stream that just stopped has no active session either.
    live = rig.live()[0]
    rig.world.stop(live.id)
    assert_service_error(await rig.get(f"/{live.id}/active-livestream-session"), 404)


async def test_livestream_by_id_lists_its_sessions_newest_first(rig: Rig) -> None:
    stream = rig.resting()[0]
    for _ in range(3):
        rig.clock.now += 60
        rig.world.go_live(stream.id)
        rig.clock.now += 120
        rig.world.stop(stream.id)
    rig.clock.now += 60
    rig.world.go_live(stream.id)
    total = len(stream.sessions)
    assert total >= 4

    body = (await rig.get(f"/{stream.id}")).json
    assert set(body) == {"success", "data", "paging"}
    assert set(body["data"]) == {"livestream", "sessions"}
    assert body["data"]["livestream"]["id"] == stream.id
    assert body["data"]["livestream"]["status"] == "LIVE"
    sessions = body["data"]["sessions"]
    assert [s["id"] for s in sessions] == [s.id for s in reversed(stream.sessions)]
    assert all(set(s) == SESSION_KEYS for s in sessions)
    assert sessions[0]["stopped_time"] is None
    assert all(s["stopped_time"] is not None for s in sessions[1:])
    started = [s["started_time"] for s in sessions]
    assert started == sorted(started, reverse=True)
    assert body["paging"] == {"start_offset": 1, "end_offset": total, "total_count": total}

    page = (await rig.get(f"/{stream.id}", {"per_page": "2", "page_no": "2"})).json
    assert [s["id"] for s in page["data"]["sessions"]] == [s["id"] for s in sessions[2:4]]
    assert page["paging"] == {"start_offset": 3, "end_offset": 4, "total_count": total}
    assert_service_error(await rig.get("/nope"), 404)


async def test_session_by_id(rig: Rig) -> None:
    stream = rig.live()[0]
    live = stream.session
    assert live is not None
    body = (await rig.get(f"/sessions/{live.id}")).json
    assert set(body) == {"success", "data"} and set(body["data"]) == SESSION_KEYS
    assert body["data"]["id"] == live.id and body["data"]["stopped_time"] is None

    rig.clock.now += 30
    rig.world.fail(stream.id, message="Encoder gone")
    final = session_values(live, rig.clock.now)
    rig.clock.now += 300
    data = (await rig.get(f"/sessions/{live.id}")).json["data"]
    assert data["stopped_time"] == iso(T0 + 30)
    assert data["err_message"] == "Encoder gone"
    assert (data["ingest_seconds"], data["viewer_seconds"]) == final
    assert data["updated_at"] == iso(T0 + 30)

    assert_service_error(await rig.get("/sessions/nope"), 404)
    # Another app's session is not found through this app.
    other = next(s for s in rig.streams(OTHER_APP) if s.session is not None)
    assert other.session is not None
    assert_service_error(await rig.get(f"/sessions/{other.session.id}"), 404)
    assert (await rig.get(f"/sessions/{other.session.id}", app=OTHER_APP)).status == 200


# -- routing and auth -------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["", "/x", "/x/active-livestream-session", "/sessions/x"],
    ids=["listing", "livestream", "active-session", "session"],
)
async def test_unknown_app_and_account(rig: Rig, path: str) -> None:
    message = assert_service_error(await rig.get(path, app="no-such-app"), 404)
    assert "App not found" in message
    assert_gateway_error(await rig.get(path, account="no-such-account"), 403, 10000)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "longer", "basic", "no-scheme", "empty"],
)
async def test_a_bad_token_is_a_401_gateway_answer(rig: Rig, headers: dict[str, str]) -> None:
    for path in ("", f"/{rig.live()[0].id}/active-livestream-session"):
        async with rig.http.get(rig.url(path), headers=headers) as r:
            assert r.status == 401
            body = await r.json()
        assert body == {
            "success": False,
            "errors": [{"code": 10000, "message": "Authentication error"}],
            "messages": [],
            "result": None,
        }


async def test_rate_limit_headers_count_down_on_every_answer(rig: Rig) -> None:
    live, resting = rig.live()[0], rig.resting()[0]
    assert live.session is not None
    requests: list[tuple[str, dict[str, str], str]] = [
        ("", {}, APP),
        (f"/{live.id}/active-livestream-session", {}, APP),
        (f"/{resting.id}/active-livestream-session", {}, APP),
        (f"/{live.id}", {}, APP),
        (f"/sessions/{live.session.id}", {}, APP),
        ("", {"sort_order": "DESC"}, APP),
        ("", {}, "no-such-app"),
        ("/nope", {}, APP),
    ]
    seen = []
    for path, params, app in requests:
        answer = await rig.get(path, params, app=app)
        assert answer.headers["Ratelimit-Policy"] == '"burst";q=1200;w=300'
        seen.append((answer.status, answer.remaining()))
        assert re.fullmatch(r'"default";r=\d+;t=([1-9]\d*)', answer.headers["Ratelimit"])
    assert [status for status, _ in seen] == [200, 200, 404, 200, 200, 400, 404, 404]
    assert [left for _, left in seen] == list(range(1199, 1199 - len(requests), -1))


async def test_overrunning_the_rate_limit_blocks_the_token_for_a_window(
    start: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await start(limiter=RateLimiter(3, 60))
    left = []
    for offset in (0, 1, 2):
        rig.clock.now = T0 + offset
        answer = await rig.get()
        assert answer.status == 200 and "Retry-After" not in answer.headers
        assert answer.headers["Ratelimit-Policy"] == '"burst";q=3;w=60'
        left.append(answer.remaining())
    assert left == [2, 1, 0]

    rig.clock.now = T0 + 10
    answer = await rig.get()
    message = assert_gateway_error(answer, 429, 971)
    assert message == "More than 3 requests per 60 seconds reached"
    assert answer.headers["Retry-After"] == "60" and answer.remaining() == 0
    # Still blocked after every counted request aged out of the window.
    for at, wait in ((T0 + 40, "30"), (T0 + 65, "5"), (T0 + 69.5, "1")):
        rig.clock.now = at
        answer = await rig.get(f"/{rig.live()[0].id}/active-livestream-session")
        assert_gateway_error(answer, 429, 971)
        assert answer.headers["Retry-After"] == wait
    rig.clock.now = T0 + 70
    answer = await rig.get()
    assert answer.status == 200 and answer.remaining() == 2


async def test_per_ip_limit_refuses_only_the_request_over_it(rig: Rig) -> None:
    """200 requests per second per address; the 201st is refused, the token stays usable."""
    for _ in range(200):
        assert (await rig.get("/nope")).status == 404
    answer = await rig.get()
    assert_gateway_error(answer, 429, 971)
    assert answer.headers["Retry-After"] == "1"
    rig.clock.now += 1
    answer = await rig.get()
    assert answer.status == 200 and answer.remaining() == 1200 - 201


# -- faults -----------------------------------------------------------------------------
def kind(answer: Answer) -> str:
    """What an answer is, for comparing sequences of them."""
    if answer.status != 200:
        return str(answer.status)
    try:
        body = json.loads(answer.text)
    except ValueError:
        return "html" if answer.content_type == "text/html" else "truncated"
    if not isinstance(body, dict):
        return "not_an_object"
    if body.get("success") is not True:
        return "success_false"
    return "ok"


async def test_error_rate_gives_5xx(rig: Rig) -> None:
    faults = await rig.faults(error_rate=1)
    assert faults["error_rate"] == 1.0
    seen = set()
    for _ in range(40):
        answer = await rig.get()
        seen.add(answer.status)
        assert "Ratelimit" in answer.headers
        if answer.status in (502, 504):
            assert answer.content_type == "text/html"
            assert answer.text.startswith("<!DOCTYPE html>")
            assert f"Error {answer.status}" in answer.text
        else:
            assert_service_error(answer, answer.status)
    assert seen == {500, 502, 503, 504}
    await rig.faults(error_rate=0)
    assert (await rig.get()).status == 200


async def test_malformed_rate_gives_bodies_that_are_not_answers(rig: Rig) -> None:
    await rig.faults(malformed_rate=1)
    kinds = [kind(await rig.get()) for _ in range(40)]
    assert set(kinds) == {"truncated", "html", "not_an_object", "success_false"}


async def test_throttle_rate_gives_429_for_throttle_seconds(rig: Rig) -> None:
    await rig.faults(throttle_rate=1, throttle_seconds=45)
    answer = await rig.get()
    assert_gateway_error(answer, 429, 971)
    assert answer.headers["Retry-After"] == "45" and answer.remaining() == 0
    await rig.faults(throttle_rate=0)
    rig.clock.now += 44
    assert (await rig.get()).status == 429
    rig.clock.now += 1
    assert (await rig.get()).status == 200


async def test_numbers_as_strings(rig: Rig) -> None:
    await rig.faults(numbers_as_strings=True)
    stream = rig.live()[0]
    session = stream.session
    assert session is not None
    rig.clock.now += 7.25
    expected = session_values(session, rig.clock.now)
    answers = [
        (await rig.get(f"/{stream.id}/active-livestream-session")).json["data"]["session"],
        (await rig.get(f"/sessions/{session.id}")).json["data"],
        (await rig.get(f"/{stream.id}")).json["data"]["sessions"][0],
    ]
    for got in answers:
        assert isinstance(got["ingest_seconds"], str) and isinstance(got["viewer_seconds"], str)
        assert (float(got["ingest_seconds"]), float(got["viewer_seconds"])) == expected


async def test_reject_token(rig: Rig) -> None:
    await rig.faults(reject_token=True)
    assert_gateway_error(await rig.get(), 401, 10000)
    await rig.faults(reject_token=False)
    assert (await rig.get()).status == 200


@pytest.mark.parametrize(
    "changes",
    [
        {"bogus": 1},
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"error_rate": "0.5"},
        {"error_rate": True},
        {"reject_token": 1},
        {"numbers_as_strings": "yes"},
        {"latency": 86401},
        {"throttle_seconds": -1},
        {"error_rate": 0.5, "bogus": 1},
        {"malformed_rate": 0.5, "throttle_rate": 2},
    ],
    ids=lambda c: ",".join(c),
)
async def test_bad_fault_settings_are_400_and_change_nothing(
    rig: Rig, changes: dict[str, Any]
) -> None:
    before = await rig.faults(numbers_as_strings=True)
    status, body = await rig.control("PUT", "/faults", changes)
    assert status == 400 and isinstance(body["error"], str)
    bad = [k for k, v in changes.items() if k == "bogus" or v != 0.5]
    assert any(k in body["error"] for k in bad)
    assert await rig.control("GET", "/faults") == (200, before)
    assert rig.sim.state.faults == Faults(numbers_as_strings=True)


async def test_fault_bodies_that_are_not_objects_are_400(rig: Rig) -> None:
    assert (await rig.control("PUT", "/faults", [1]))[0] == 400
    async with rig.http.put(rig.sim.control_url + "/faults", data="{oops") as r:
        assert r.status == 400
    assert rig.sim.state.faults == Faults()


async def test_fault_dice_are_deterministic_per_seed(start: Callable[..., Awaitable[Rig]]) -> None:
    mixed = Faults(error_rate=0.3, malformed_rate=0.3)
    runs = []
    for seed in (5, 5, 6):
        rig = await start(seed=seed, faults=mixed)
        runs.append([kind(await rig.get()) for _ in range(30)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert "ok" in runs[0] and len(set(runs[0])) >= 4


# -- control ----------------------------------------------------------------------------
async def test_throttle_blocks_the_token(rig: Rig) -> None:
    status, body = await rig.control("POST", "/throttle", {"seconds": 90})
    assert (status, body) == (200, {"blocked_for": 90})
    answer = await rig.get()
    assert_gateway_error(answer, 429, 971)
    assert answer.headers["Retry-After"] == "90"
    rig.clock.now += 89
    assert (await rig.get()).status == 429
    rig.clock.now += 1
    assert (await rig.get()).status == 200
    # Without a body: throttle_seconds.
    assert (await rig.control("POST", "/throttle"))[1] == {"blocked_for": 30.0}
    assert (await rig.get()).headers["Retry-After"] == "30"


@pytest.mark.parametrize("seconds", [0, -5, "10", True, None, float("inf"), 1e9])
async def test_throttle_rejects_bad_seconds(rig: Rig, seconds: Any) -> None:
    status, body = await rig.control("POST", "/throttle", {"seconds": seconds})
    assert status == 400 and "seconds" in body["error"]
    assert (await rig.get()).status == 200


async def test_control_lifecycle_of_a_stream(rig: Rig) -> None:
    base = "/livestreams"
    status, view = await rig.control("POST", base, {"id": "mine", "name": "Mine"})
    assert status == 201
    assert view["id"] == "mine" and view["status"] == "OFFLINE" and view["manual"] is True
    assert (view["account_id"], view["app_id"], view["live"], view["session"]) == (
        ACCOUNT,
        APP,
        False,
        None,
    )
    assert (await rig.control("POST", base, {"id": "mine"}))[0] == 400
    assert (await rig.control("POST", base, {"name": 5}))[0] == 400

    status, view = await rig.control("POST", f"{base}/mine/live", {"viewers": 25})
    assert status == 200 and view["live"] and view["status"] == "LIVE"
    assert rig.world.find("mine").sessions[-1].viewers == 25
    assert (await rig.get("/mine/active-livestream-session")).status == 200
    assert (await rig.control("POST", f"{base}/mine/live"))[0] == 409

    rig.clock.now += 60
    assert (await rig.control("POST", f"{base}/mine/stall"))[0] == 200
    rig.clock.now += 30
    status, view = await rig.control("POST", f"{base}/mine/unstall")
    assert status == 200 and view["session"]["ingest_seconds"] == pytest.approx(60.0)

    assert (await rig.control("POST", f"{base}/mine/stop", {"status": "ERRORED"}))[0] == 400
    status, view = await rig.control("POST", f"{base}/mine/stop", {"status": "OFFLINE"})
    assert status == 200 and view["status"] == "OFFLINE" and not view["live"]
    assert view["session"]["stopped_time"] is not None
    assert_service_error(await rig.get("/mine/active-livestream-session"), 404)
    assert (await rig.control("POST", f"{base}/mine/stall"))[0] == 409
    assert (await rig.control("POST", f"{base}/mine/unstall"))[0] == 409

    for viewers in ("many", -1, 1e300):
        assert (await rig.control("POST", f"{base}/mine/live", {"viewers": viewers}))[0] == 400
    assert rig.world.find("mine").session is None  # a refused request changes nothing
    assert (await rig.control("POST", f"{base}/mine/live"))[0] == 200
    status, view = await rig.control("POST", f"{base}/mine/error", {"message": "Encoder gone"})
    assert status == 200 and view["status"] == "ERRORED"
    assert view["session"]["err_message"] == "Encoder gone"

    status, view = await rig.control("POST", f"{base}/mine/autopilot")
    assert status == 200 and view["manual"] is False and view["next_change"] is not None
    assert (await rig.control("POST", f"{base}/mine/dance"))[0] == 404

    status, listed = await rig.control("GET", base)
    assert status == 200 and "mine" in {s["id"] for s in listed["livestreams"]}
    assert len(listed["livestreams"]) == STREAMS + 3 + 1

    assert (await rig.control("DELETE", f"{base}/mine"))[0] == 204
    assert (await rig.control("DELETE", f"{base}/mine"))[0] == 404
    assert_service_error(await rig.get("/mine"), 404)


@pytest.mark.parametrize("action", ["live", "stop", "error", "stall", "unstall", "autopilot"])
async def test_control_of_an_unknown_stream_is_404(rig: Rig, action: str) -> None:
    status, body = await rig.control("POST", f"/livestreams/ghost/{action}")
    assert status == 404 and "ghost" in body["error"]


async def test_control_can_list_a_stream_with_any_status(rig: Rig) -> None:
    """A status the docs do not name is listed as given; the session is left alone."""
    live = rig.live()[0]
    status, view = await rig.control("POST", f"/livestreams/{live.id}/status", {"status": "PAUSED"})
    assert status == 200 and view["status"] == "PAUSED" and view["live"] and view["manual"]
    listed = {
        s["id"]: s["status"] for s in (await rig.get(params={"per_page": "100"})).json["data"]
    }
    assert listed[live.id] == "PAUSED"
    assert (await rig.get(f"/{live.id}/active-livestream-session")).status == 200
    for bad in ({}, {"status": ""}, {"status": 5}, {"status": "X" * 65}):
        assert (await rig.control("POST", f"/livestreams/{live.id}/status", bad))[0] == 400


async def test_a_created_stream_is_new_and_listed_first(rig: Rig) -> None:
    """A stream created through control was created now: newest first in the listing."""
    status, _ = await rig.control("POST", "/livestreams", {"id": "fresh"})
    assert status == 201
    assert rig.world.find("fresh").created_at == rig.clock.now
    assert (await rig.get()).json["data"][0]["id"] == "fresh"


async def test_control_create_checks_autopilot_is_a_boolean(rig: Rig) -> None:
    status, body = await rig.control("POST", "/livestreams", {"autopilot": "false"})
    assert status == 400 and "autopilot" in body["error"]


async def test_control_create_in_another_app(rig: Rig) -> None:
    status, view = await rig.control(
        "POST", "/livestreams", {"account_id": ACCOUNT, "app_id": "app-3", "autopilot": True}
    )
    assert status == 201 and view["app_id"] == "app-3" and view["manual"] is False
    body = (await rig.get(app="app-3")).json
    assert [i["id"] for i in body["data"]] == [view["id"]]


async def test_stats_count_requests_by_endpoint_and_status(rig: Rig) -> None:
    live = rig.live()[0]
    assert live.session is not None
    await rig.get()
    await rig.get()
    await rig.get(params={"status": "OFFLINE"})
    await rig.get(token="wrong")
    await rig.get(f"/{live.id}/active-livestream-session")
    await rig.get(f"/{rig.resting()[0].id}/active-livestream-session")
    await rig.get(f"/{live.id}")
    await rig.get(f"/sessions/{live.session.id}")
    await rig.get("/sessions/nope")
    await rig.control("GET", "/faults")
    status, body = await rig.control("GET", "/stats")
    assert status == 200
    window = body.pop("busiest_window")
    by_token = body.pop("tokens")
    assert body == {
        "requests": {
            "livestreams": {"200": 2, "400": 1, "401": 1},
            "active_livestream_session": {"200": 1, "404": 1},
            "livestream": {"200": 1},
            "livestream_session": {"200": 1, "404": 1},
        },
        "total": 9,
    }
    # Every request the token made counts, the refused query too; the bad token's does not.
    assert window["requests"] == 8
    assert window["window_s"] == 300
    # The same, by the name of the token (the unknown one has none).
    assert by_token == {
        "default": {
            "requests": {"200": 5, "400": 1, "404": 2},
            "total": 8,
            "busiest_window": window,
        }
    }


def test_traffic_keeps_the_busiest_sliding_window() -> None:
    """Traffic counts requests over a sliding window and keeps the largest count seen,
    with when that window ended; requests that leave the window stop counting."""
    traffic = Traffic(10.0)
    for t in (0.0, 1.0, 2.0, 9.0):
        traffic.note(t)
    assert (traffic.busiest, traffic.busiest_at) == (4, 9.0)
    for t in (10.5, 11.5, 12.5):  # 0, 1 and 2 have left the window
        traffic.note(t)
    assert (traffic.busiest, traffic.busiest_at) == (4, 9.0)
    traffic.note(12.6)
    assert (traffic.busiest, traffic.busiest_at) == (5, 12.6)


async def test_ignore_status_filter_answers_every_status(rig: Rig) -> None:
    """With the fault ignore_status_filter, the listing asked for status=LIVE holds every
    stream, as from an API that does not know the filter; without it, only live ones."""
    everyone = len(rig.world.streams(ACCOUNT, APP) or [])
    answer = await rig.get(params={"status": "LIVE", "per_page": "100"})
    assert answer.status == 200
    assert {item["status"] for item in answer.json["data"]} == {"LIVE"}
    assert (await rig.faults(ignore_status_filter=True))["ignore_status_filter"] is True
    answer = await rig.get(params={"status": "LIVE", "per_page": "100"})
    assert answer.status == 200
    assert answer.json["paging"]["total_count"] == everyone > len(rig.live())
    assert {item["status"] for item in answer.json["data"]} > {"LIVE"}


async def test_control_list_filters_by_app_and_pages(rig: Rig) -> None:
    """GET /-/simulator/livestreams: every stream by default, one app's with app_id (and
    account_id), a page of them with per_page and page_no."""
    status, body = await rig.control("GET", "/livestreams")
    assert status == 200 and body["total_count"] == len(body["livestreams"]) == STREAMS + 3
    status, body = await rig.control("GET", f"/livestreams?app_id={OTHER_APP}")
    assert {s["app_id"] for s in body["livestreams"]} == {OTHER_APP}
    assert body["total_count"] == 3
    everyone = [
        s["id"] for s in (await rig.control("GET", f"/livestreams?app_id={APP}"))[1]["livestreams"]
    ]
    assert everyone == [s.id for s in rig.streams()]
    pages = []
    for page_no in (1, 2, 3, 4, 5):
        query = f"/livestreams?account_id={ACCOUNT}&app_id={APP}&per_page=10&page_no={page_no}"
        status, body = await rig.control("GET", query)
        assert status == 200 and body["total_count"] == STREAMS
        pages += [s["id"] for s in body["livestreams"]]
    assert pages == everyone
    assert (await rig.control("GET", "/livestreams?account_id=nobody"))[1] == {
        "livestreams": [],
        "total_count": 0,
    }
    for bad in ("per_page=0", "page_no=x", "per_page=" + "9" * 4400):
        status, body = await rig.control("GET", f"/livestreams?{bad}")
        assert status == 400 and "must be a positive integer" in body["error"]


async def test_control_list_marks_dormant_streams(rig: Rig) -> None:
    """Populated streams that do not cycle are listed as dormant; autopilot wakes one."""
    _, body = await rig.control("GET", f"/livestreams?app_id={APP}")
    dormant = [s for s in body["livestreams"] if s["dormant"]]
    cycling = [s for s in body["livestreams"] if not s["dormant"]]
    # REALISTIC's live share is 2100 / 3162.5: round(6 / 0.664) = 9 of the 45 cycle.
    assert len(cycling) == 9 and len(dormant) == STREAMS - 9
    assert all(s["next_change"] is None and not s["live"] for s in dormant)
    status, view = await rig.control("POST", f"/livestreams/{dormant[0]['id']}/autopilot")
    assert status == 200 and not view["dormant"] and view["next_change"] is not None


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{}",  # not UTF-8
        b'{"viewers": "\xc3\x28"}',  # an invalid UTF-8 sequence inside JSON
        b'{"viewers": ' + b"1" * 5000 + b"}",  # beyond Python's digit limit
        b"[" * 100_000 + b"]" * 100_000,  # nested beyond the recursion limit
    ],
    ids=["not-utf8", "bad-utf8-in-string", "huge-integer", "deep-nesting"],
)
async def test_control_bodies_that_cannot_be_read_are_400(rig: Rig, body: bytes) -> None:
    """Bodies that are not UTF-8 JSON the simulator can hold are a 400, not a 500."""
    stream = rig.resting()[0]
    for method, path in (
        ("PUT", "/faults"),
        ("POST", "/livestreams"),
        ("POST", f"/livestreams/{stream.id}/live"),
        ("POST", "/throttle"),
    ):
        async with rig.http.request(method, rig.sim.control_url + path, data=body) as r:
            assert r.status == 400, (path, await r.text())
            assert (await r.json())["error"] == "body is not JSON"
    assert rig.sim.state.faults == Faults() and stream.session is None


async def test_control_create_with_null_app_uses_the_default(rig: Rig) -> None:
    status, view = await rig.control(
        "POST", "/livestreams", {"account_id": None, "app_id": None, "id": "nulls"}
    )
    assert status == 201 and (view["account_id"], view["app_id"]) == (ACCOUNT, APP)


async def test_the_simulators_own_failures_are_counted(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug answering a request is a 500 in RealtimeKit's envelope, logged and counted in
    the stats like every other answer."""
    from exporter.simulator import api

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(api, "livestream_body", broken)
    answer = await rig.get()
    assert_service_error(answer, 500)
    assert "simulated bug" in caplog.text
    await rig.get(f"/sessions/{rig.live()[0].sessions[-1].id}")  # needs no livestream body
    _, stats = await rig.control("GET", "/stats")
    assert stats["requests"] == {"livestreams": {"500": 1}, "livestream_session": {"200": 1}}
    assert stats["total"] == 2


# -- documented variants, integral counters, a lagging listing -------------------------
async def test_variant_rate_answers_in_every_documented_shape(rig: Rig) -> None:
    """At variant_rate 1 every answer takes one of the other shapes the docs publish, by
    the seeded dice; each shape holds the same facts as the usual one."""
    stream = rig.resting()[0]
    stream.disabled = True
    for _ in range(3):  # a few sessions for the by-id endpoint
        rig.world.go_live(stream.id)
        rig.clock.now += 120
        rig.world.stop(stream.id)
    usual_listing = (await rig.get(params={"per_page": "100"})).json
    usual_by_id = (await rig.get(f"/{stream.id}")).json
    await rig.faults(variant_rate=1)
    seen: dict[str, set[str]] = {}
    for _ in range(30):
        listing = (await rig.get(params={"per_page": "100"})).json
        kind = shape(listing)
        seen.setdefault("listing", set()).add(kind)
        if kind == "listing_object":
            assert set(listing) == {"success", "data"}
            assert listing["data"]["livestreams"] == usual_listing["data"]
            assert listing["data"]["paging"] == usual_listing["paging"]
        else:
            assert kind == "disabled_text"
            assert {i["disabled"] for i in listing["data"]} == {"true", "false"}
            assert [i["id"] for i in listing["data"]] == [i["id"] for i in usual_listing["data"]]

        by_id = (await rig.get(f"/{stream.id}")).json
        kind = shape(by_id)
        seen.setdefault("livestream", set()).add(kind)
        if kind == "single_session":
            assert by_id["data"]["session"] == usual_by_id["data"]["sessions"][0]
            assert by_id["data"]["paging"]["total_count"] == len(stream.sessions)
        else:
            assert kind == "disabled_text" and by_id["data"]["livestream"]["disabled"] == "true"

        answer = await rig.get(f"/{stream.id}/active-livestream-session")
        if answer.status == 404:
            seen.setdefault("active", set()).add("404")
        else:
            body = answer.json
            assert body["success"] is True and body["data"]["session"] is None
            assert body["data"]["livestream"]["id"] == stream.id
            seen.setdefault("active", set()).add(shape(body))
        live = await rig.get(f"/{rig.live()[0].id}/active-livestream-session")
        assert live.status == 200 and live.json["data"]["livestream"]["disabled"] == "false"
    assert seen == {
        "listing": {"listing_object", "disabled_text"},
        "livestream": {"single_session", "disabled_text"},
        "active": {"null_session", "404"},
    }
    await rig.faults(variant_rate=0)
    assert shape((await rig.get()).json) == "usual"


async def test_variant_dice_are_deterministic_per_seed(
    start: Callable[..., Awaitable[Rig]],
) -> None:
    runs = []
    for seed in (5, 5, 6):
        rig = await start(seed=seed, faults=Faults(variant_rate=0.5))
        runs.append([shape((await rig.get()).json) for _ in range(30)])
    assert runs[0] == runs[1] != runs[2]
    assert set(runs[0]) == {"usual", "listing_object", "disabled_text"}


async def test_integral_counters_are_json_integers(rig: Rig) -> None:
    """The placeholder is ``60`` as in the examples, not ``60.0``; so is any whole value."""
    stream = rig.resting()[0]
    session = rig.world.go_live(stream.id)
    rig.clock.now += 1
    answer = await rig.get(f"/{stream.id}/active-livestream-session")
    assert re.search(r'"ingest_seconds": 60[,}]', answer.text)
    assert re.search(r'"viewer_seconds": 60[,}]', answer.text)
    got = answer.json["data"]["session"]
    assert type(got["ingest_seconds"]) is int and type(got["viewer_seconds"]) is int
    rig.clock.now = session.started_time + 100
    rig.world.stop(stream.id)
    data = (await rig.get(f"/sessions/{session.id}")).json["data"]
    assert data["ingest_seconds"] == 100 and type(data["ingest_seconds"]) is int
    assert type(data["viewer_seconds"]) is float  # a fractional value stays one
    await rig.faults(numbers_as_strings=True)
    data = (await rig.get(f"/sessions/{session.id}")).json["data"]
    assert data["ingest_seconds"] == "100"
    assert float(data["viewer_seconds"]) == session.viewer_seconds(rig.clock.now)


async def test_status_lag_delays_the_listed_status_but_not_the_sessions(rig: Rig) -> None:
    """With status_lag, the listing, its status filter and the livestream objects show a
    stream's previous status until the lag is over; the session endpoints are current."""
    lag = 30.0
    await rig.faults(status_lag=lag)
    rig.clock.now += lag  # whatever changed before the test has settled
    resting, live = rig.resting()[0], rig.live()[0]
    before = resting.status
    session = rig.world.go_live(resting.id)
    rig.world.stop(live.id)

    async def listed() -> dict[str, str]:
        body = (await rig.get(params={"per_page": "100"})).json
        return {i["id"]: i["status"] for i in body["data"]}

    async def filtered(status: str) -> set[str]:
        body = (await rig.get(params={"per_page": "100", "status": status})).json
        return {i["id"] for i in body["data"]}

    for _ in range(2):
        seen = await listed()
        assert (seen[resting.id], seen[live.id]) == (before, "LIVE")
        assert live.id in await filtered("LIVE") and resting.id not in await filtered("LIVE")
        active = await rig.get(f"/{resting.id}/active-livestream-session")
        assert active.json["data"]["session"]["id"] == session.id
        assert active.json["data"]["livestream"]["status"] == before
        assert_service_error(await rig.get(f"/{live.id}/active-livestream-session"), 404)
        by_id = (await rig.get(f"/{resting.id}")).json["data"]
        assert by_id["livestream"]["status"] == before
        assert by_id["sessions"][0]["id"] == session.id
        rig.clock.now += lag - 0.5
    rig.clock.now += 0.5 - (lag - 0.5)  # exactly lag seconds after the changes
    seen = await listed()
    assert (seen[resting.id], seen[live.id]) == ("LIVE", "IDLE")
    assert resting.id in await filtered("LIVE") and live.id not in await filtered("LIVE")


# -- limits and the command line --------------------------------------------------------
async def test_ip_limit_can_be_changed_or_switched_off() -> None:
    """The per-address limit is a parameter: off, nothing is refused; 5 per second, the
    sixth request is."""
    clock = FakeClock()
    world = World(seed=1, profile=REALISTIC, clock=clock)
    world.populate(ACCOUNT, APP, 3, live=1)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    cases: list[tuple[RateLimiter | Literal["off"] | None, int]] = [
        ("off", 0),
        (RateLimiter(5, 1.0, block=False), 245),
        (None, 50),
    ]
    async with aiohttp.ClientSession(headers=headers) as http:
        for limiter, refused in cases:
            sim = Simulator(
                world, token=TOKEN, limiter=RateLimiter(10_000, 300), ip_limiter=limiter
            )
            async with sim:
                url = f"{sim.base_url}/accounts/{ACCOUNT}/realtime/kit/{APP}/livestreams"
                statuses = []
                for _ in range(250):
                    async with http.get(url) as r:
                        statuses.append(r.status)
            assert statuses.count(429) == refused, limiter


def test_max_per_page_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_per_page"):
        Simulator(World(), token=TOKEN, max_per_page=0)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--max-per-page", "0"], "--max-per-page"),
        (["--ip-rate-limit", "lots"], "--ip-rate-limit"),
        (["--ip-rate-limit", "0/1s"], "--ip-rate-limit"),
        (["--fault.variant-rate", "1.5"], "--fault.variant-rate"),
        (["--fault.status-lag", "soon"], "--fault.status-lag"),
        (["--fault.status-lag", "2q"], "--fault.status-lag"),  # no such unit (2d is 2 days)
        (["--fault.status-lag", "90000s"], "status_lag"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else None,
)
def test_simulate_refuses_bad_flags(
    args: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad simulate flags exit 2 with a one-line reason naming the flag (or setting)."""
    from exporter import cli

    assert cli.main(["simulate", "--listen", "127.0.0.1:0", *args]) == 2
    err = capsys.readouterr().err
    assert names in err and err.startswith("realtimekit-exporter: usage error:")
    assert err.count("\n") == 1


EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 (binding every interface is what is tested)


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        (EVERY_INTERFACE, True),
        (None, True),
    ],
    ids=str,
)
async def test_listening_beyond_loopback_warns_that_control_has_no_auth(
    host: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sim = Simulator(World(), token=TOKEN)
    try:
        await sim.start(host, 0)
    except OSError:
        pytest.skip(f"cannot listen on {host}")
    try:
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert bool(warnings) == warned
        if warned:
            assert "no auth" in warnings[0].getMessage()
    finally:
        await sim.close()


# -- test hooks: fixed answers, the request log, hold, counters ------------------------------
async def test_answers_replace_the_next_requests_and_can_be_cleared(rig: Rig) -> None:
    """POST /answers gives a fixed answer to the next ``times`` requests to an endpoint (of
    one app, or of any), after auth and the rate limit; DELETE forgets what is left."""
    fixed = {"endpoint": "livestreams", "status": 503, "body": {"success": False}, "times": 2}
    status, _ = await rig.control("POST", "/answers", {**fixed, "headers": {"Retry-After": "7"}})
    assert status == 201
    for _ in range(2):
        answer = await rig.get()
        assert (answer.status, answer.json, answer.headers["Retry-After"]) == (
            503,
            {"success": False},
            "7",
        )
        assert "Ratelimit" in answer.headers
    assert (await rig.get()).status == 200
    assert (await rig.get(token="wrong")).status == 401  # the gate comes first
    other = {"endpoint": "livestreams", "status": 200, "text": "{not json", "app_id": OTHER_APP}
    assert (await rig.control("POST", "/answers", {**other, "times": None}))[0] == 201
    assert (await rig.get()).status == 200
    for _ in range(2):
        assert (await rig.get(app=OTHER_APP)).text == "{not json"
    assert (await rig.control("DELETE", "/answers"))[0] == 204
    assert (await rig.get(app=OTHER_APP)).json["success"] is True


@pytest.mark.parametrize(
    "body",
    [
        {"endpoint": "nope", "status": 500},
        {"endpoint": "livestreams", "status": 99},
        {"endpoint": "livestreams", "status": 500, "times": 0},
        {"endpoint": "livestreams", "status": 500, "headers": {"Content-Type": "text/html"}},
        {"endpoint": "livestreams", "status": 500, "colour": "red"},
    ],
    ids=["endpoint", "status", "times", "content-type-header", "unknown-key"],
)
async def test_bad_answers_are_400(rig: Rig, body: dict[str, Any]) -> None:
    status, answer = await rig.control("POST", "/answers", body)
    assert status == 400 and answer["error"]
    assert (await rig.get()).status == 200


async def test_an_applied_answer_carries_the_request_out(rig: Rig) -> None:
    """An answer lost on the way back: the webhook is registered, the client sees a 502."""
    rig.sim.state.answer_next("add_webhook", Canned(502, {"success": False}, applied=True))
    hook = {"name": "h", "url": "http://127.0.0.1:9/hook", "events": [STATUS_EVENT]}
    url = f"{rig.sim.base_url}/accounts/{ACCOUNT}/realtime/kit/{APP}/webhooks"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with rig.http.post(url, json=hook, headers=headers) as response:
        assert response.status == 502
    assert [h.url for h in rig.sim.state.webhooks.of_app(ACCOUNT, APP)] == [hook["url"]]
    assert rig.sim.state.log[-1].body == hook  # logged with its body


async def test_requests_are_logged_as_they_arrive(rig: Rig) -> None:
    """GET /requests lists the API requests, with whether they carried the token; a path
    no route takes is logged and counted as unrouted, control requests are not logged."""
    await rig.get(params={"page_no": "2"})
    await rig.get(token="wrong")
    async with rig.http.get(rig.sim.base_url + "/nowhere") as response:
        assert response.status == 404
    status, body = await rig.control("GET", "/requests")
    assert status == 200
    path = f"/client/v4/accounts/{ACCOUNT}/realtime/kit/{APP}/livestreams"
    keys = ("endpoint", "method", "path", "query", "authorized", "body")
    assert [tuple(r[k] for k in keys) for r in body["requests"]] == [
        ("livestreams", "GET", path, {"page_no": "2"}, True, None),
        ("livestreams", "GET", path, {}, False, None),
        ("unrouted", "GET", "/client/v4/nowhere", {}, False, None),
    ]
    assert (await rig.control("GET", "/stats"))[1]["requests"]["unrouted"] == {"404": 1}


async def test_hold_keeps_answers_back_until_lifted(rig: Rig) -> None:
    """With the hold fault on, a request arrives (and is logged) but gets no answer until
    the fault is off again."""
    await rig.faults(hold=True)
    waiting = asyncio.ensure_future(rig.get())
    async with asyncio.timeout(5):
        while not rig.sim.state.log:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await rig.faults(hold=False)
    assert (await asyncio.wait_for(waiting, 5)).status == 200


async def test_counters_can_be_set_and_grow_from_there(rig: Rig) -> None:
    """The counters action makes the live session read the values given, ends its
    placeholder phase, and the counters grow on from them; bad values are 400."""
    live = rig.live()[0]
    body = {"ingest_seconds": 5, "viewer_seconds": 7.5}
    status, _ = await rig.control("POST", f"/livestreams/{live.id}/counters", body)
    assert status == 200
    session = (await rig.get(f"/{live.id}/active-livestream-session")).json["data"]["session"]
    assert (session["ingest_seconds"], session["viewer_seconds"]) == (5, 7.5)
    rig.clock.now += 10
    session = (await rig.get(f"/{live.id}/active-livestream-session")).json["data"]["session"]
    assert session["ingest_seconds"] == 15 and session["viewer_seconds"] > 7.5
    for bad in (-1, "5", True):
        status, _ = await rig.control(
            "POST", f"/livestreams/{live.id}/counters", {"ingest_seconds": bad}
        )
        assert status == 400, bad
