"""The simulator's livestream analytics: the app's sessions added up, overall and by day."""

from __future__ import annotations

import calendar
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import pytest

from exporter.budget import RequestBudget
from exporter.client import (
    ENDPOINT_ANALYTICS,
    ENDPOINT_ANALYTICS_DAYS,
    ApiError,
    RealtimeKitClient,
)
from exporter.config import Secret
from exporter.model import Totals
from exporter.simulator import Simulator, World
from exporter.simulator.world import MAX_SESSIONS, SimSession
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, API_T0, APP, TOKEN, add_stream, go_live

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

OTHER_APP: Final = "app-2"
DAY: Final = 86400
# API_T0 is 2026-11-27 10:00:00 UTC.
MIDNIGHT: Final = calendar.timegm((2026, 11, 27, 0, 0, 0))


@dataclass
class Answer:
    status: int
    body: Any


class Rig:
    def __init__(self, sim: Simulator, http: aiohttp.ClientSession, clock: FakeClock) -> None:
        self.sim = sim
        self.http = http
        self.clock = clock

    async def get(
        self, which: str, query: Mapping[str, str | int] | None = None, *, app: str = APP
    ) -> Answer:
        url = f"{self.sim.base_url}/accounts/{ACCOUNT}/realtime/kit/{app}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        params = {k: str(v) for k, v in (query or {}).items()}
        async with self.http.get(
            f"{url}/analytics/livestreams/{which}", params=params, headers=headers
        ) as r:
            return Answer(r.status, json.loads(await r.text()))

    async def overall(self, app: str = APP, **query: str | int) -> dict[str, Any]:
        answer = await self.get("overall", query, app=app)
        assert answer.status == 200, answer.body
        assert answer.body["success"] is True
        data: dict[str, Any] = answer.body["data"]
        return data

    async def days(self, start: int, end: int) -> list[dict[str, Any]]:
        answer = await self.get("daywise", {"start_time": start, "end_time": end})
        assert answer.status == 200, answer.body
        rows: list[dict[str, Any]] = answer.body["data"]
        return rows

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.sim.control_url + path, json=body) as r:
            return r.status, await r.json() if r.content_length else None


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """The conftest's simulator (an empty app at API_T0), a second app, and its clock."""
    clock = FakeClock(API_T0)
    world = World(clock=clock)
    for app in (APP, OTHER_APP):
        world.populate(ACCOUNT, app, 0)
    async with (
        Simulator(world, token=TOKEN, ip_limiter="off") as sim,
        aiohttp.ClientSession() as http,
    ):
        yield Rig(sim, http, clock)


def expected(sessions: Iterable[SimSession], now: float) -> dict[str, int]:
    """What the analytics should say of ``sessions`` at ``now``: their count, and the sums
    of their values rounded down."""
    held = list(sessions)
    return {
        "count": len(held),
        "total_ingest_seconds": math.floor(sum(s.ingest_seconds(now) for s in held)),
        "total_viewer_seconds": math.floor(sum(s.viewer_seconds(now) for s in held)),
    }


def session_of(rig: Rig, livestream_id: str) -> list[SimSession]:
    return list(rig.sim.world.find(livestream_id).sessions)


async def test_overall_adds_up_the_apps_ended_and_live_sessions(rig: Rig) -> None:
    """count is every session of the app, the totals the sums of their values now: the
    ended ones' final values and the live one's, which grow as it goes on."""
    add_stream(rig.sim, "a")
    add_stream(rig.sim, "b")
    add_stream(rig.sim, "elsewhere", app=OTHER_APP)
    go_live(rig.sim, "a", ingest=100, viewer=250.5)
    rig.clock.advance(60)
    rig.sim.world.stop("a")
    go_live(rig.sim, "a", ingest=10, viewer=20)
    go_live(rig.sim, "b", ingest=5.25, viewer=7.75)
    go_live(rig.sim, "elsewhere", ingest=1000, viewer=1000)
    mine = session_of(rig, "a") + session_of(rig, "b")
    first = await rig.overall()
    assert first == expected(mine, rig.clock.now)
    assert (first["count"], first["total_ingest_seconds"]) == (3, 175)  # 160 + 10 + 5.25
    rig.clock.advance(90)
    grown = await rig.overall()
    assert grown == expected(mine, rig.clock.now)
    assert grown["total_ingest_seconds"] == 175 + 2 * 90  # the two live ones grew
    assert grown["total_viewer_seconds"] > first["total_viewer_seconds"]
    assert await rig.overall(OTHER_APP) == expected(session_of(rig, "elsewhere"), rig.clock.now)


async def test_an_app_without_sessions_has_zero_totals(rig: Rig) -> None:
    add_stream(rig.sim, "quiet")
    zero = {"count": 0, "total_ingest_seconds": 0, "total_viewer_seconds": 0}
    assert await rig.overall() == zero
    assert await rig.days(MIDNIGHT, MIDNIGHT + DAY) == []


async def test_sessions_the_streams_no_longer_keep_still_count(rig: Rig) -> None:
    """A stream keeps its last MAX_SESSIONS sessions; the totals keep every one, and those
    of a deleted stream too (a session live at the deletion with its values then)."""
    add_stream(rig.sim, "busy")
    runs = MAX_SESSIONS + 5
    for _ in range(runs):
        go_live(rig.sim, "busy", ingest=10, viewer=3)
        rig.clock.advance(5)
        rig.sim.world.stop("busy")
    assert len(session_of(rig, "busy")) == MAX_SESSIONS
    every = {"count": runs, "total_ingest_seconds": 15 * runs}
    assert (await rig.overall()).items() >= every.items()
    add_stream(rig.sim, "gone")
    go_live(rig.sim, "gone", ingest=7, viewer=0)
    rig.clock.advance(3)
    rig.sim.world.delete("gone")
    rig.clock.advance(100)  # it grows no more
    after = await rig.overall()
    assert (after["count"], after["total_ingest_seconds"]) == (runs + 1, 15 * runs + 10)


async def test_daywise_gives_one_row_per_utc_day_with_sessions(rig: Rig) -> None:
    """Rows for the UTC days (of the range's start to its end, whole days) on which
    sessions started, oldest first, each adding up that day's sessions; none for a day
    without sessions."""
    add_stream(rig.sim, "s")
    go_live(rig.sim, "s", ingest=100, viewer=200)  # 2026-11-27 10:00
    rig.clock.advance(3600)
    rig.sim.world.stop("s")
    rig.clock.now = MIDNIGHT + 3 * DAY - 30  # 2026-11-28: nothing; 2026-11-29 23:59:30
    go_live(rig.sim, "s", ingest=50, viewer=60)  # live across midnight: counted on the 29th
    rig.clock.advance(60)
    add_stream(rig.sim, "t")
    go_live(rig.sim, "t", ingest=1, viewer=2)  # 2026-11-30 00:00:30
    first, second = session_of(rig, "s")[:2]
    (third,) = session_of(rig, "t")
    now = rig.clock.now
    rows = await rig.days(MIDNIGHT + 3600, int(now))  # from 01:00: still the whole day
    assert rows == [
        {"date": "2026-11-27", **expected([first], now)},
        {"date": "2026-11-29", **expected([second], now)},
        {"date": "2026-11-30", **expected([third], now)},
    ]
    assert rows[1]["total_ingest_seconds"] == 110  # the live one grew by 60 s
    assert await rig.days(MIDNIGHT + DAY, MIDNIGHT + 2 * DAY) == rows[1:2]
    assert await rig.days(MIDNIGHT + DAY, MIDNIGHT + DAY) == []
    # The overall totals are the rows' sums; with a range, those of its days.
    overall = await rig.overall()
    for key in ("count", "total_ingest_seconds"):
        assert overall[key] == sum(row[key] for row in rows)
    ranged = await rig.overall(start_time=MIDNIGHT + 2 * DAY, end_time=int(now))
    assert ranged["count"] == 2


@pytest.mark.parametrize(
    ("which", "query"),
    [
        ("daywise", {}),
        ("daywise", {"start_time": MIDNIGHT}),
        ("daywise", {"end_time": MIDNIGHT}),
        ("daywise", {"start_time": "yesterday", "end_time": MIDNIGHT}),
        ("daywise", {"start_time": -1, "end_time": MIDNIGHT}),
        ("daywise", {"start_time": "1.5", "end_time": MIDNIGHT}),
        ("daywise", {"start_time": "\u0661", "end_time": MIDNIGHT}),  # an Arabic-Indic 1
        ("daywise", {"start_time": "9" * 12, "end_time": "9" * 12}),
        ("daywise", {"start_time": MIDNIGHT + 1, "end_time": MIDNIGHT}),
        ("overall", {"start_time": "2026-11-27T00:00:00Z"}),
        ("overall", {"end_time": ""}),
    ],
    ids=repr,
)
async def test_bad_ranges_are_400_in_realtimekits_envelope(
    rig: Rig, which: str, query: dict[str, str | int]
) -> None:
    answer = await rig.get(which, query)
    assert answer.status == 400
    assert answer.body["success"] is False and answer.body["error"]["code"] == 400
    assert "_time" in answer.body["error"]["message"]


async def test_numbers_as_strings_sends_the_totals_as_strings(rig: Rig) -> None:
    add_stream(rig.sim, "s")
    go_live(rig.sim, "s", ingest=12.5, viewer=3)
    await rig.control("PUT", "/faults", {"numbers_as_strings": True})
    assert await rig.overall() == {
        "count": "1",
        "total_ingest_seconds": "12",
        "total_viewer_seconds": "3",
    }
    assert await rig.days(MIDNIGHT, MIDNIGHT + DAY) == [
        {
            "date": "2026-11-27",
            "count": "1",
            "total_ingest_seconds": "12",
            "total_viewer_seconds": "3",
        }
    ]


async def test_the_client_reads_what_the_simulator_adds_up(rig: Rig) -> None:
    """End to end: the exporter's client gets the sessions' totals, as Totals."""
    add_stream(rig.sim, "s")
    go_live(rig.sim, "s", ingest=40, viewer=90.5)
    await rig.control("PUT", "/faults", {"numbers_as_strings": True})
    client = RealtimeKitClient(
        session=rig.http,
        base_url=rig.sim.base_url,
        token=Secret(TOKEN),
        budget=RequestBudget(requests=100, window=300.0),
    )
    assert await client.livestream_analytics(ACCOUNT, APP) == Totals(1, 40.0, 90.0)
    assert await client.livestream_analytics_days(
        ACCOUNT, APP, start=MIDNIGHT, end=int(rig.clock.now)
    ) == (Totals(1, 40.0, 90.0, day="2026-11-27"),)


@pytest.mark.parametrize(
    ("endpoint", "status", "body"),
    [
        (
            ENDPOINT_ANALYTICS,
            403,
            {
                "success": False,
                "errors": [{"code": 10000, "message": "Authentication error"}],
                "messages": [],
                "result": None,
            },
        ),
        (
            ENDPOINT_ANALYTICS_DAYS,
            404,
            {"success": False, "error": {"code": 404, "message": "Not found"}},
        ),
    ],
    ids=["overall-403", "daywise-404"],
)
async def test_fixed_answers_make_one_apps_analytics_forbidden_or_missing(
    rig: Rig, endpoint: str, status: int, body: dict[str, Any]
) -> None:
    """POST /answers takes the analytics endpoints by the client's names: one app's
    analytics can answer 403 or 404 while the other app's answer as usual."""
    fixed = {"endpoint": endpoint, "status": status, "body": body, "app_id": APP, "times": None}
    assert (await rig.control("POST", "/answers", fixed))[0] == 201
    client = RealtimeKitClient(
        session=rig.http,
        base_url=rig.sim.base_url,
        token=Secret(TOKEN),
        budget=RequestBudget(requests=100, window=300.0),
    )

    async def read(app: str) -> Totals | tuple[Totals, ...]:
        if endpoint == ENDPOINT_ANALYTICS:
            return await client.livestream_analytics(ACCOUNT, app)
        return await client.livestream_analytics_days(ACCOUNT, app, start=MIDNIGHT, end=MIDNIGHT)

    with pytest.raises(ApiError) as caught:
        await read(APP)
    assert (caught.value.status, caught.value.endpoint) == (status, endpoint)
    assert await read(OTHER_APP) in (Totals(0, 0.0, 0.0), ())
    _, stats = await rig.control("GET", "/stats")
    assert stats["requests"][endpoint] == {str(status): 1, "200": 1}
