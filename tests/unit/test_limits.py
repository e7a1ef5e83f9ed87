"""limits.max_livestreams and label lengths: what a runaway app cannot make the exporter hold.

- at most the limit of streams per process: configured ones always, discovered ones LIVE
  first, then those tracked the cycle before, then by id, so series do not flap; apps
  share what is left; the rest are counted in ``realtimekit_exporter_livestreams_dropped``
  and logged once;
- a listing is read only until it holds twice the limit, however long it is;
- every label value in /metrics is cut to its cap, whatever length the API sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter import decode, merge
from exporter.budget import RequestBudget
from exporter.client import ENDPOINTS, REASONS, RealtimeKitClient
from exporter.collector import SnapshotCollector
from exporter.config import (
    DEFAULT_MAX_LIVESTREAMS,
    MAX_LIVESTREAM_ID_LENGTH,
    AppConfig,
    Config,
    ConfigError,
    Limits,
    LivestreamConfig,
    Shard,
    loads,
)
from exporter.model import AppState, Listing, Livestream, StreamState
from exporter.poller import Poller
from exporter.server import Exporter, Server
from exporter.telemetry import ExporterMetrics
from tests.clock import FakeClock
from tests.conftest import ACCOUNT, APP, TOKEN, add_stream, make_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from exporter.model import Snapshot
    from exporter.simulator import Simulator

DROPPED = "realtimekit_exporter_livestreams_dropped"
NOT_WHOLE = "limits.max_livestreams: must be a whole number from 1 to 1,000,000"
LIMIT = "realtimekit_exporter_livestreams_limit"
OTHER = "app-2"


async def _no_sleep(seconds: float) -> None:
    return None


class Rig:
    """A poller on the real client, a private registry with the snapshot collector, and a
    hand-moved clock."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.http = http
        self.clock = FakeClock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.poller: Poller | None = None

    def start(self, config: Config) -> Poller:
        metrics = ExporterMetrics(registry=self.registry, endpoints=ENDPOINTS, reasons=REASONS)
        client = RealtimeKitClient(
            session=self.http,
            base_url=config.api.base_url,
            token=config.api.token,
            budget=RequestBudget(requests=1000, window=300),
            timeout=config.api.timeout,
            observer=metrics,
            sleep=_no_sleep,
        )
        self.poller = Poller(config=config, api=client, observer=metrics, clock=self.clock)
        poller = self.poller
        self.registry.register(SnapshotCollector(lambda: poller.snapshot))
        return poller

    async def poll(self) -> Snapshot:
        assert self.poller is not None
        self.clock.now += 30
        return await self.poller.poll_once()

    def value(self, name: str, app: str | None = APP) -> float | None:
        labels = {} if app is None else {"account_id": ACCOUNT, "app_id": app}
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def limited(config: Config, limit: int) -> Config:
    return dataclasses.replace(config, limits=Limits(max_livestreams=limit))


def ids(snapshot: Snapshot, app: str = APP) -> list[str]:
    state = snapshot.app(ACCOUNT, app)
    assert state is not None
    return [s.id for s in state.streams]


def limit_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, str]]:
    return [
        (r.levelno, r.getMessage(), getattr(r, "app_id", ""))
        for r in caplog.records
        if "livestream limit" in r.getMessage()
    ]


# -- config ---------------------------------------------------------------------------------
def document(limits: object = None, *, streams: int = 1, stream_id: str = "stream") -> str:
    doc: dict[str, Any] = {
        "apps": [
            {
                "account_id": ACCOUNT,
                "app_id": APP,
                "livestreams": [{"id": f"{stream_id}{i or ''}"} for i in range(streams)],
            }
        ]
    }
    if limits is not None:
        doc["limits"] = limits
    return yaml.safe_dump(doc)


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, environ={"CLOUDFLARE_API_TOKEN": "t"}, base_dir=tmp_path)
    return caught.value.problems


def test_the_limit_defaults_to_20000_and_takes_a_whole_number(tmp_path: Path) -> None:
    """Without a limits section the limit is 20000; a whole number of at least 1 is taken."""
    env = {"CLOUDFLARE_API_TOKEN": "t"}
    assert loads(document(), environ=env).limits == Limits(DEFAULT_MAX_LIVESTREAMS)
    assert DEFAULT_MAX_LIVESTREAMS == 20_000
    assert loads(document({}), environ=env).limits.max_livestreams == 20_000
    assert loads(document({"max_livestreams": 1}), environ=env).limits.max_livestreams == 1


@pytest.mark.parametrize(
    ("limits", "streams", "expected"),
    [
        ({"max_livestreams": 0}, 1, NOT_WHOLE),
        ({"max_livestreams": -5}, 1, NOT_WHOLE),
        ({"max_livestreams": 1.5}, 1, NOT_WHOLE),
        ({"max_livestreams": "10"}, 1, NOT_WHOLE),
        ({"max_livestreams": True}, 1, NOT_WHOLE),
        ({"max_livestreams": None}, 1, NOT_WHOLE),
        (
            {"max_livestreams": 2},
            3,
            "limits.max_livestreams: must be at least the number of configured livestreams (3)",
        ),
        ({"max_streams": 5}, 1, "limits.max_streams: unknown key (allowed: max_livestreams)"),
        (5, 1, "limits: must be a mapping"),
    ],
    ids=["zero", "negative", "fraction", "string", "bool", "null", "below-configured",
         "unknown-key", "not-a-mapping"],
)  # fmt: skip
def test_bad_limits_are_reported_with_their_key_path(
    tmp_path: Path, limits: object, streams: int, expected: str
) -> None:
    """Each bad limits value is one problem naming limits.max_livestreams (or the key)."""
    assert problems(document(limits, streams=streams), tmp_path) == [expected]


def test_configured_livestream_ids_are_capped_like_label_values(tmp_path: Path) -> None:
    """A configured id may be as long as a label value may be, no longer: it could never
    match a listed id (cut to that length), and would reach /metrics as unlisted."""
    assert MAX_LIVESTREAM_ID_LENGTH == decode.MAX_LABEL_LENGTH
    env = {"CLOUDFLARE_API_TOKEN": "t"}
    config = loads(document(stream_id="i" * 256), environ=env)
    assert config.apps[0].livestreams == (LivestreamConfig("i" * 256),)
    assert problems(document(stream_id="i" * 300), tmp_path) == [
        "apps[0].livestreams[0].id: must be at most 256 characters"
    ]


# -- the choice, as pure rules --------------------------------------------------------------
DISCOVER = AppConfig(account_id="a", app_id="b", discover=True)


@pytest.mark.parametrize(
    ("apps", "limit", "wanted", "expected"),
    [
        ([("d1", True, 0)], 100, {}, {"d1": 100}),
        ([("d1", True, 0), ("c", False, 30)], 100, {}, {"d1": 70}),
        ([("d1", True, 0), ("d2", True, 0)], 101, {}, {"d1": 50, "d2": 51}),
        ([("d1", True, 0), ("d2", True, 0)], 100, {"d1": 10, "d2": 500}, {"d1": 10, "d2": 90}),
        ([("d1", True, 0), ("d2", True, 0)], 100, {"d1": 10, "d2": 20}, {"d1": 45, "d2": 55}),
        ([("d1", True, 5), ("d2", True, 0)], 100, {"d1": 500, "d2": 500}, {"d1": 47, "d2": 48}),
        ([("c", False, 10)], 10, {}, {}),
    ],
    ids=["one-app", "configured-first", "unknown-split-evenly", "small-want-met",
         "headroom-shared", "configured-in-discovering-app", "no-discovery"],
)  # fmt: skip
def test_rooms_share_the_limit_between_discovering_apps(
    apps: list[tuple[str, bool, int]], limit: int, wanted: dict[str, int], expected: dict[str, int]
) -> None:
    """Configured streams come off the limit first; an app wanting no more than an even
    share gets it, the others split the rest, leftover room is shared as headroom."""
    configs = [
        AppConfig(
            "a", name, discover=d, livestreams=tuple(LivestreamConfig(f"c{i}") for i in range(n))
        )
        for name, d, n in apps
    ]
    got = merge.rooms(configs, limit, {("a", k): v for k, v in wanted.items()})
    assert got == {("a", k): v for k, v in expected.items()}
    configured = sum(len(c.livestreams) for c in configs)
    assert sum(got.values()) <= limit - configured


def test_a_cut_listing_counts_its_unread_entries_as_this_shards_share() -> None:
    """Unread entries cannot be told apart: unsharded all are counted, on a shard of N a
    1/N share (rounded up)."""
    listing = Listing(livestreams=(Livestream("x", "IDLE"),), complete=False, unread=10)
    assert merge.discovered(DISCOVER, listing) == 11
    assert (
        merge.discovered(DISCOVER, listing, Shard(0, 3)) == (1 if Shard(0, 3).owns("x") else 0) + 4
    )
    assert merge.discovered(AppConfig("a", "b", livestreams=(LivestreamConfig("x"),)), listing) == 0


def test_a_failed_listing_keeps_no_more_than_the_room() -> None:
    """When the room has shrunk since the last good listing, a failed listing keeps only the
    room's worth of the last streams (LIVE first, then by id), and counts the rest."""
    t0 = 1_000.0
    app = AppConfig("a", "b", discover=True, livestreams=(LivestreamConfig("z-conf"),))
    streams = tuple(
        StreamState(Livestream(i, "LIVE" if i == "s4" else "IDLE"), live=i == "s4", session=None,
                    last_update=t0)
        for i in ("s1", "s2", "s3", "s4", "z-conf")
    )  # fmt: skip
    prev = AppState("a", "b", up=True, last_success=t0, streams=streams, dropped=7)
    state = merge.merge_app(app, prev, None, {}, now=t0 + 30, max_staleness=300, ok=False, room=2)
    assert [s.id for s in state.streams] == ["s1", "s4", "z-conf"]
    assert state.dropped == 7 + 2
    same = merge.merge_app(app, prev, None, {}, now=t0 + 30, max_staleness=300, ok=False, room=4)
    assert len(same.streams) == 5 and same.dropped == 7


# -- whole cycles against the loopback fake ---------------------------------------------------
async def test_the_limit_keeps_the_same_streams_and_says_so_once(
    sim: Simulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Limit 10 over a listing of 30 with 2 configured: exactly 10 tracked, configured ones
    always, the same ones each cycle, dropped says 20; a new stream does not push a tracked
    one out, one going LIVE does; one warning, then one info line when the listing shrinks."""
    for i in range(30):
        add_stream(sim, f"s{i:03d}")
    configured = ("s025", "s028")
    rig = Rig(sim.base_url, http)
    rig.start(limited(make_config(sim.base_url, streams=configured, discover=True), 10))
    caplog.set_level(logging.INFO, logger="exporter")
    first = [f"s{i:03d}" for i in range(8)] + list(configured)

    for _ in range(3):
        snapshot = await rig.poll()
        assert ids(snapshot) == first
        assert rig.value(DROPPED) == 30 - 10
    assert rig.value(LIMIT, app=None) == 10
    assert rig.value("realtimekit_exporter_livestreams_tracked") == 10

    add_stream(sim, "a-new")  # first by id, but all places are held
    assert ids(await rig.poll()) == first
    assert rig.value(DROPPED) == 31 - 10

    sim.world.go_live("s020")
    after_live = [f"s{i:03d}" for i in range(7)] + ["s020", *configured]
    for _ in range(2):
        assert ids(await rig.poll()) == after_live  # s007 (not LIVE, last by id) gave way

    assert limit_lines(caplog) == [
        (
            logging.WARNING,
            "livestream limit reached: 20 listed livestreams of the app are not tracked "
            "(10 are; limits.max_livestreams is 10 for the process)",
            APP,
        )
    ]
    streams = [s.id for s in sim.world.all_streams()]
    for sid in [s for s in streams if s not in after_live][:-1]:
        sim.world.delete(sid)  # 11 listed, 10 of them tracked already: still one over
    assert ids(await rig.poll()) == after_live and rig.value(DROPPED) == 1
    sim.world.delete("s000")
    snapshot = await rig.poll()
    assert len(ids(snapshot)) == 10 and rig.value(DROPPED) == 0
    await rig.poll()
    assert [line[0] for line in limit_lines(caplog)] == [logging.WARNING, logging.INFO]
    assert limit_lines(caplog)[-1][1:] == (
        "livestream limit no longer reached: every listed livestream of the app is tracked (10)",
        APP,
    )


async def test_discovering_apps_share_the_limit(
    sim: Simulator, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Two discovering apps, one small and one runaway, under one limit: the first cycle
    splits it evenly, the next gives the small app what it lists and the other the rest;
    the total never passes the limit, and the runaway app keeps the streams it had."""
    for i in range(10):
        add_stream(sim, f"a{i:03d}")
    for i in range(200):
        add_stream(sim, f"b{i:03d}", app=OTHER)
    base = make_config(sim.base_url, discover=True)
    apps = (base.apps[0], dataclasses.replace(base.apps[0], app_id=OTHER))
    rig = Rig(sim.base_url, http)
    rig.start(limited(dataclasses.replace(base, apps=apps), 100))
    caplog.set_level(logging.INFO, logger="exporter")

    first = await rig.poll()
    assert (len(ids(first)), len(ids(first, OTHER))) == (10, 50)
    assert (rig.value(DROPPED), rig.value(DROPPED, OTHER)) == (0, 150)
    for _ in range(2):
        snapshot = await rig.poll()
        assert (len(ids(snapshot)), len(ids(snapshot, OTHER))) == (10, 90)
        assert set(ids(first, OTHER)) <= set(ids(snapshot, OTHER))
        assert rig.value(DROPPED, OTHER) == 110
    assert [(level, app) for level, _, app in limit_lines(caplog)] == [(logging.WARNING, OTHER)]


# -- a listing of millions is not read to its end ---------------------------------------------
class HugeListing:
    """A listing that claims ``total`` streams and makes each page up on request (100 per
    page at most), plus one livestream by id; counts what it was asked. (Not the
    simulator: it holds every stream it lists, and ten million would not fit.)"""

    def __init__(self, total: int, *, paging: bool = True) -> None:
        self.total = total
        self.paging = paging
        self.pages: list[int] = []
        self.by_id: list[str] = []
        self.server: TestServer | None = None

    async def __aenter__(self) -> HugeListing:
        app = web.Application()
        base = "/client/v4/accounts/{account}/realtime/kit/{app}/livestreams"
        app.router.add_get(base, self.listing)
        app.router.add_get(base + "/{livestream_id}", self.one)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.close()

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/client/v4"))

    async def listing(self, request: web.Request) -> web.Response:
        page_no = int(request.query["page_no"])
        per_page = min(100, int(request.query["per_page"]))
        self.pages.append(page_no)
        start = (page_no - 1) * per_page
        data = [
            {"id": f"ls-{i:08d}", "status": "IDLE"}
            for i in range(start, min(start + per_page, self.total))
        ]
        body: dict[str, Any] = {"success": True, "data": data}
        if self.paging:
            body["paging"] = {"total_count": self.total, "start_offset": start + 1}
        return web.json_response(body)

    async def one(self, request: web.Request) -> web.Response:
        sid = request.match_info["livestream_id"]
        self.by_id.append(sid)
        return web.json_response(
            {"success": True, "data": {"livestream": {"id": sid, "status": "IDLE"}}}
        )


async def test_the_client_stops_reading_at_max_entries(http: aiohttp.ClientSession) -> None:
    """With max_entries the listing stops after the page that reaches it, incomplete, and
    says how many entries it left unread (when the paging block tells the total)."""
    for paging, unread in ((True, 10_000_000 - 300), (False, 0)):
        async with HugeListing(10_000_000, paging=paging) as api:
            client = RealtimeKitClient(
                session=http,
                base_url=api.base_url,
                token=make_config(api.base_url).api.token,
                budget=RequestBudget(requests=1000, window=300),
                sleep=_no_sleep,
            )
            listing = await client.list_livestreams(ACCOUNT, APP, max_entries=250)
            assert api.pages == [1, 2, 3]
            assert (len(listing.livestreams), listing.pages) == (300, 3)
            assert (listing.complete, listing.unread) == (False, unread)


async def test_a_listing_of_millions_is_read_only_to_twice_the_limit(
    http: aiohttp.ClientSession,
) -> None:
    """Ten million listed, limit 150: three pages of 100 are read (twice the limit), the
    configured stream beyond them is looked up by id, 150 are tracked (it among them),
    and dropped counts the other 9,999,850 from the listing's total."""
    async with HugeListing(10_000_000) as api:
        rig = Rig(api.base_url, http)
        config = make_config(api.base_url, streams=("deep-1",), discover=True)
        rig.start(limited(config, 150))
        for _ in range(2):
            snapshot = await rig.poll()
            tracked = ids(snapshot)
            assert tracked == ["deep-1", *(f"ls-{i:08d}" for i in range(149))]
            assert rig.value(DROPPED) == 10_000_000 - 150
        assert api.pages == [1, 2, 3] * 2
        assert api.by_id == ["deep-1"] * 2


# -- label values ---------------------------------------------------------------------------
HUGE = 100_000


async def test_huge_values_from_the_api_are_cut_in_metrics(sim: Simulator) -> None:
    """100 kB ids, names, meeting ids, statuses and session ids from the API reach /metrics
    (text and OpenMetrics) cut to 256 characters, the status to 64."""
    add_stream(sim, "i" * HUGE, name="n" * HUGE, meeting_id="m" * HUGE)
    add_stream(sim, "odd", status="Q" * HUGE)
    live = add_stream(sim, "live", name="\u00e9" * HUGE)
    sim.world.go_live(live).id = "s" * HUGE  # as the active session endpoint gives it
    config = make_config(sim.base_url, discover=True)
    async with (
        Exporter(config, registry=CollectorRegistry(), process_metrics=False) as exporter,
        aiohttp.ClientSession() as http,
    ):
        server = Server(exporter, host="127.0.0.1", port=0)
        await server.start()
        try:
            host, port = server.addresses[0]
            async with asyncio.timeout(10):
                while not exporter.poller.ready:
                    await asyncio.sleep(0.01)
            bodies = []
            for accept in ("text/plain", "application/openmetrics-text;version=1.0.0"):
                async with http.get(
                    f"http://{host}:{port}/metrics", headers={"Accept": accept}
                ) as r:
                    assert r.status == 200
                    bodies.append((accept, await r.text()))
        finally:
            await server.close()
    for accept, body in bodies:
        parse = text_string_to_metric_families if accept == "text/plain" else openmetrics_families
        seen: dict[str, int] = {}
        for family in parse(body):
            for sample in family.samples:
                for name, value in sample.labels.items():
                    seen[name] = max(seen.get(name, 0), len(value))
        assert seen["livestream_id"] == seen["name"] == seen["meeting_id"] == 256, accept
        assert seen["session_id"] == 256 and seen["status"] == 64, accept
        assert max(seen.values()) <= 256, accept
    assert TOKEN not in bodies[0][1]


def test_streams_kept_for_an_unreadable_entry_stay_within_the_room() -> None:
    """A listing with an entry whose id cannot be read keeps the streams it seems to lack,
    but discovered ones only as far as the app's room allows."""
    app = AppConfig(account_id="a", app_id="b", discover=True)
    prev = AppState(
        account_id="a",
        app_id="b",
        up=True,
        last_success=0.0,
        streams=tuple(
            StreamState(Livestream(id=i, status="IDLE"), live=False, session=None, last_update=0.0)
            for i in ("a1", "a2")
        ),
    )
    listing = Listing(
        livestreams=(Livestream(id="d", status="IDLE"), Livestream(id="e", status="IDLE")),
        skipped=1,
        unknown=frozenset({"a1", "a2"}),
    )
    for room, expected in ((2, ["d", "e"]), (3, ["a1", "d", "e"]), (None, ["a1", "a2", "d", "e"])):
        state = merge.merge_app(
            app, prev, listing, {}, now=10.0, max_staleness=300.0, ok=False, room=room
        )
        assert [s.id for s in state.streams] == expected, room
