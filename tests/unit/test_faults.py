"""The fault suite: the exporter against an API that hangs, resets, refuses, throttles,
rejects the token, or answers nonsense, and that echoes the token and stream keys back.

Each row of :data:`CASES` runs the same story on a :class:`~tests.faultrig.FaultRig` over
a :class:`~tests.faultapi.FaultApi` in front of the simulator: two healthy cycles, then the
fault for several cycles, then the API heals. Throughout, every poll cycle completes,
/metrics (text and OpenMetrics) and the status page answer, ``realtimekit_up`` and the
error counters say what happened, live streams stay ``live`` 1 with their last values,
values recover when the API does, the exporter logs once per state change however many
cycles the fault lasts, and neither the token nor any stream key shows up anywhere, at any
log level.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
import time
import tracemalloc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import pytest
from aioresponses import aioresponses

from exporter.budget import RequestBudget
from exporter.client import (
    ENDPOINT_LISTING,
    ENDPOINT_SESSION,
    MAX_BODY_BYTES,
    REASONS,
    ApiError,
    RealtimeKitClient,
)
from exporter.config import RateLimit, Secret
from exporter.server import Exporter, Server
from tests.conftest import (
    ACCOUNT,
    API_T0,
    APP,
    add_stream,
    api_simulator,
    go_live,
    make_config,
)
from tests.faultapi import (
    APP_PATH,
    ECHO,
    ECHO_HEADERS,
    SOME_KEY,
    TOKEN,
    Action,
    Cut,
    Fault,
    FaultApi,
    Hang,
    Reply,
    Request,
    Reset,
    Rewrite,
    Stall,
    Stream,
    hostile_envelope,
    hostile_html,
    on,
)
from tests.faultrig import HTTP_LIMIT, OPENMETRICS, FaultRig, Scrape, exporter_lines, samples

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from exporter.simulator import Simulator

LIVE_A: Final = "5e1a0000-7c2d-4f1e-9a0b-000000000000"
LIVE_B: Final = "5e1a0001-7c2d-4f1e-9a0b-000000000001"
IDLE: Final = "5e1a0002-7c2d-4f1e-9a0b-000000000002"
LIVE: Final = (LIVE_A, LIVE_B)
STARTED_AT: Final = API_T0  # when the live streams' sessions started
# Counters before the fault, and what the API says once it is healthy again.
BEFORE: Final = {LIVE_A: (100.0, 300.0), LIVE_B: (50.0, 20.0)}
AFTER: Final = {LIVE_A: (160.0, 420.0), LIVE_B: (110.0, 80.0)}
TIGHT: Final = 0.3  # api.timeout for rows where the API never answers (real seconds)
LIVE_GAUGE: Final = "realtimekit_livestream_live"
INGEST: Final = "realtimekit_livestream_ingest_seconds"
VIEWER: Final = "realtimekit_livestream_viewer_seconds"


def world(sim: Simulator) -> None:
    for n, sid in enumerate(LIVE):
        ingest, viewer = BEFORE[sid]
        go_live(sim, add_stream(sim, sid, name=f"stream {n}"), ingest=ingest, viewer=viewer)
    add_stream(sim, IDLE, name="stream 2")


def heal_counters(api: FaultApi) -> None:
    for sid, (ingest, viewer) in AFTER.items():
        api.sim.world.set_counters(sid, ingest_seconds=ingest, viewer_seconds=viewer)


# -- hostile answers ----------------------------------------------------------------------
def envelope(status: int, **headers: str) -> Reply:
    return Reply(status, hostile_envelope(status), headers={**ECHO_HEADERS, **headers})


def html(status: int) -> Reply:
    return Reply(
        status, raw=hostile_html(status).encode(), headers=ECHO_HEADERS, content_type="text/html"
    )


def raw(body: bytes) -> Reply:
    return Reply(200, raw=body, headers=ECHO_HEADERS)


def json_reply(body: Any) -> Reply:
    return Reply(200, body, headers=ECHO_HEADERS)


HUGE_PREFIX: Final = (
    b'{"success": true, "data": [' + json.dumps({"id": TOKEN, "stream_key": SOME_KEY}).encode()
)


def rewrite(
    endpoint: str, change: Callable[[FaultApi, Request, dict[str, Any]], None]
) -> Callable[[FaultApi], Fault]:
    """A fault that answers ``endpoint`` as the simulator does, after ``change`` has
    edited the answer's JSON (``change(api, request, doc)``)."""
    return lambda api: on(endpoint, Rewrite(lambda request, doc: change(api, request, doc)))


def unknown_statuses(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
    statuses = {LIVE_A: "Streaming", LIVE_B: 42, IDLE: ""}
    for entry in doc["data"]:
        entry["status"] = statuses[entry["id"]]


def duplicated(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
    copies = [{**e, "status": "IDLE", "name": "a copy"} for e in doc["data"]]
    doc["data"] = doc["data"] + copies + doc["data"]


ODD_DATES: Final = (
    "2026-11-27 10:00:00",
    "2026-11-27T15:30:00+05:30",
    "2026-11-27T10:00:00.123456789Z",
    1_795_773_600,
    1_795_773_600_000,
    "1795773600",
    "27/11/2026 10:00",
    "yesterday",
    "2026-13-45T99:99:99Z",
    "",
    "+275760-09-13T00:00:00Z",
    -1,
)


def odd_dates(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
    odd = ODD_DATES[len(api.served) % len(ODD_DATES)]
    for key in ("started_time", "created_at", "updated_at", "invoked_time"):
        doc["data"]["session"][key] = odd
    for key in ("created_at", "updated_at"):
        doc["data"]["livestream"][key] = odd


def junk_counters(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
    session = doc["data"]["session"]
    session["ingest_seconds"] = str(session["ingest_seconds"])  # its declared type
    session["viewer_seconds"] = ["not", "a", "number", TOKEN]


def nulls_in_listing(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
    doc["paging"] = None
    doc["data"] = [
        {k: (v if k in ("id", "status") else None) for k, v in e.items()} for e in doc["data"]
    ]


def nulls_in_session(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
    doc["data"]["livestream"] = None
    doc["data"]["session"] = {
        k: (v if k == "id" else None) for k, v in doc["data"]["session"].items()
    }


def secrets_in_fields(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
    """Secrets in every field that is not the exported id or status, and in unknown ones."""
    entries = doc["data"] if isinstance(doc["data"], list) else [doc["data"]["livestream"]]
    for entry in entries:
        entry.update(
            meeting_id=None,
            playback_url=f"https://example.invalid/?token={TOKEN}",
            ingest_server=f"rtmps://{TOKEN}@live.example.invalid/live/{SOME_KEY}",
            token=TOKEN,
            secret={"stream_key": SOME_KEY},
        )
    session = doc["data"].get("session") if isinstance(doc["data"], dict) else None
    if session is not None:
        session.update(debug=ECHO, token=TOKEN)


# -- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One fault: how to cause it, and what the exporter shows while it lasts.

    ``reason`` is the poll error counted (None: nothing fails); ``code`` the
    ``api_requests_total`` code label that grows on ``endpoint``; ``pause`` how long the
    API paused the token (the clock moves past it before the API heals); ``sends`` the most
    requests the API may see while the fault lasts; ``logs`` the most log lines at INFO and
    above over the fault and the recovery (each state change: down, up again)."""

    id: str
    fault: Callable[[FaultApi], Fault] | None = None
    refuse: bool = False
    reason: str | None = None
    code: str | None = None
    endpoint: str = ENDPOINT_LISTING
    hangs: bool = False
    timeout: float = 5.0
    cycles: int = 6
    pause: float = 0.0
    sends: int | None = None
    logs: int = 2
    check: Callable[[Scrape], None] | None = None

    @property
    def up(self) -> bool:
        return self.reason is None


def answer(action: Action, endpoint: str = ENDPOINT_LISTING) -> Callable[[FaultApi], Fault]:
    return lambda api: on(endpoint, action)


def status_is(sid: str, status: str) -> Callable[[Scrape], None]:
    def check(scrape: Scrape) -> None:
        assert scrape.value("realtimekit_livestream_status", livestream_id=sid, status=status)

    return check


def unknown_idle(scrape: Scrape) -> None:
    """The session endpoint's status wins for live streams; the idle one, with a status
    that is not there, is asked about, found not live, and exported as UNKNOWN."""
    status_is(LIVE_A, "LIVE")(scrape)
    status_is(LIVE_B, "LIVE")(scrape)
    status_is(IDLE, "UNKNOWN")(scrape)


def one_series_per_stream(scrape: Scrape) -> None:
    for sid in (*LIVE, IDLE):
        for name in (LIVE_GAUGE, "realtimekit_livestream_info", "realtimekit_livestream_disabled"):
            assert scrape.count(name, livestream_id=sid) == 1
    assert scrape.value("realtimekit_exporter_livestreams_tracked") == 3
    status_is(LIVE_A, "LIVE")(scrape)


def counters_partly_read(scrape: Scrape) -> None:
    assert scrape.stream(INGEST, LIVE_A) == AFTER[LIVE_A][0]
    assert scrape.stream(VIEWER, LIVE_A) is None  # not a number: not exported


def counters_absent(scrape: Scrape) -> None:
    for sid in LIVE:
        assert scrape.stream(INGEST, sid) is None and scrape.stream(VIEWER, sid) is None


LISTING, SESSION = ENDPOINT_LISTING, ENDPOINT_SESSION
CASES: Final = [
    # No answer in time.
    Case(
        "hang",
        answer(Hang()),
        reason="timeout",
        code="timeout",
        hangs=True,
        timeout=TIGHT,
        cycles=3,
    ),
    Case(
        "stall-after-headers",
        answer(Stall()),
        reason="timeout",
        code="timeout",
        hangs=True,
        timeout=TIGHT,
        cycles=3,
    ),
    Case(
        "session-hang",
        answer(Hang(), SESSION),
        reason="timeout",
        code="timeout",
        endpoint=SESSION,
        hangs=True,
        timeout=TIGHT,
        cycles=3,
    ),
    # No connection, or one that breaks.
    Case("refused", refuse=True, reason="connection", code="connection_error"),
    Case("reset", answer(Reset()), reason="connection", code="connection_error"),
    Case("closed-without-answer", answer(Cut(b"")), reason="connection", code="connection_error"),
    Case(
        "closed-mid-headers",
        answer(Cut(b"HTTP/1.1 200 OK\r\nContent-Ty")),
        reason="connection",
        code="connection_error",
    ),
    Case("closed-mid-body", answer(Cut()), reason="connection", code="connection_error"),
    Case(
        "session-reset",
        answer(Reset(), SESSION),
        reason="connection",
        code="connection_error",
        endpoint=SESSION,
    ),
    # Error statuses.
    Case("500", answer(envelope(500)), reason="http_error", code="500"),
    Case("502-html", answer(html(502)), reason="http_error", code="502"),
    Case("503", answer(envelope(503, **{"Retry-After": "120"})), reason="http_error", code="503"),
    Case("504-html", answer(html(504)), reason="http_error", code="504"),
    Case("400", answer(envelope(400)), reason="http_error", code="400"),
    Case("404-gateway", answer(envelope(404)), reason="http_error", code="404"),
    Case(
        "302-redirect",
        answer(
            Reply(
                302,
                raw=b"",
                headers={**ECHO_HEADERS, "Location": f"https://evil.invalid/?t={TOKEN}"},
            )
        ),
        reason="http_error",
        code="302",
    ),
    Case(
        "session-500",
        answer(envelope(500), SESSION),
        reason="http_error",
        code="500",
        endpoint=SESSION,
    ),
    Case(
        "session-502-html",
        answer(html(502), SESSION),
        reason="http_error",
        code="502",
        endpoint=SESSION,
    ),
    # Throttling: one 429, then nothing is sent until the pause is over.
    Case(
        "429-retry-after",
        answer(envelope(429, **{"Retry-After": "30"})),
        reason="rate_limited",
        code="429",
        pause=30,
        sends=1,
    ),
    Case(
        "429-without-retry-after",
        answer(envelope(429)),
        reason="rate_limited",
        code="429",
        pause=60,
        sends=1,
    ),
    Case(
        "429-retry-after-date",
        answer(envelope(429, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})),
        reason="rate_limited",
        code="429",
        sends=6,
    ),
    Case(
        "429-retry-after-0",
        answer(envelope(429, **{"Retry-After": "0"})),
        reason="rate_limited",
        code="429",
        sends=6,
    ),
    Case(
        "429-retry-after-garbage",
        answer(envelope(429, **{"Retry-After": TOKEN})),
        reason="rate_limited",
        code="429",
        pause=60,
        sends=1,
    ),
    Case(
        "429-ratelimit-header",
        answer(envelope(429, Ratelimit='"default";r=0;t=45')),
        reason="rate_limited",
        code="429",
        pause=45,
        sends=1,
    ),
    Case(
        "session-429",
        answer(envelope(429, **{"Retry-After": "30"}), SESSION),
        reason="rate_limited",
        code="429",
        endpoint=SESSION,
        pause=30,
    ),
    # The token refused, mid-run.
    Case("401", answer(envelope(401)), reason="auth", code="401"),
    Case("403", answer(envelope(403)), reason="auth", code="403"),
    Case(
        "session-401", answer(envelope(401), SESSION), reason="auth", code="401", endpoint=SESSION
    ),
    # 200, but no answer.
    Case("not-json", answer(html(200)), reason="decode", code="200"),
    Case("truncated-json", answer(raw(HUGE_PREFIX[:60])), reason="decode", code="200"),
    Case("empty-body", answer(raw(b"")), reason="decode", code="200"),
    Case("json-null", answer(raw(b"null")), reason="decode", code="200"),
    Case("json-array", answer(json_reply(["success", True, ECHO])), reason="decode", code="200"),
    Case(
        "data-a-string",
        answer(json_reply({"success": True, "data": ECHO})),
        reason="decode",
        code="200",
    ),
    Case(
        "data-null",
        answer(json_reply({"success": True, "data": None, "paging": None})),
        reason="decode",
        code="200",
    ),
    Case(
        "no-data",
        answer(json_reply({"success": True, "result": {"token": TOKEN}})),
        reason="decode",
        code="200",
    ),
    Case("nested-too-deep", answer(raw(b"[" * 200_000)), reason="decode", code="200"),
    Case("success-false", answer(envelope(200)), reason="http_error", code="200"),
    Case(
        "huge-streamed",
        answer(Stream(prefix=HUGE_PREFIX, filler=b" ")),
        reason="decode",
        code="200",
        cycles=3,
    ),
    Case(
        "huge-declared",
        answer(Stream(declared=2**40, prefix=HUGE_PREFIX)),
        reason="decode",
        code="200",
    ),
    Case(
        "session-not-json",
        answer(html(200), SESSION),
        reason="decode",
        code="200",
        endpoint=SESSION,
    ),
    Case(
        "session-truncated",
        answer(raw(HUGE_PREFIX[:60]), SESSION),
        reason="decode",
        code="200",
        endpoint=SESSION,
    ),
    Case(
        "session-a-string",
        answer(json_reply({"success": True, "data": {"session": ECHO}}), SESSION),
        reason="decode",
        code="200",
        endpoint=SESSION,
    ),
    Case(
        "session-huge",
        answer(Stream(prefix=HUGE_PREFIX), SESSION),
        reason="decode",
        code="200",
        endpoint=SESSION,
        cycles=3,
    ),
    Case(
        "session-success-false",
        answer(envelope(200), SESSION),
        reason="http_error",
        code="200",
        endpoint=SESSION,
    ),
    # Odd but readable answers: nothing fails.
    Case("unknown-statuses", rewrite(LISTING, unknown_statuses), logs=0, check=unknown_idle),
    Case("duplicate-ids", rewrite(LISTING, duplicated), logs=0, check=one_series_per_stream),
    Case("odd-dates", rewrite(SESSION, odd_dates), logs=0, cycles=len(ODD_DATES)),
    Case(
        "counters-as-text-and-junk",
        rewrite(SESSION, junk_counters),
        logs=0,
        check=counters_partly_read,
    ),
    Case("nulls-in-listing", rewrite(LISTING, nulls_in_listing), logs=0),
    Case("nulls-in-session", rewrite(SESSION, nulls_in_session), logs=0, check=counters_absent),
    Case("secrets-in-unexported-fields", rewrite(SESSION, secrets_in_fields), logs=0),
    Case("secrets-in-listing-fields", rewrite(LISTING, secrets_in_fields), logs=0),
]


@pytest.fixture
async def api() -> AsyncIterator[FaultApi]:
    async with api_simulator(TOKEN) as sim, FaultApi(sim) as fake:
        world(sim)
        yield fake


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_fault_is_survived_reported_and_recovered_from(
    api: FaultApi, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """Under the fault every cycle completes and /metrics answers; up and the error counters
    name it; live streams stay live with their last values; the API's recovery shows at
    once; logs are one line per state change; no secret appears anywhere."""
    caplog.set_level(logging.DEBUG)
    async with FaultRig(api.base_url, token=TOKEN, timeout=case.timeout) as rig:
        for _ in range(2):
            healthy = await rig.cycle()
        assert healthy.value("realtimekit_up") == 1
        for sid in LIVE:
            assert healthy.stream(LIVE_GAUGE, sid) == 1
            assert (healthy.stream(INGEST, sid), healthy.stream(VIEWER, sid)) == BEFORE[sid]
        assert healthy.stream(LIVE_GAUGE, IDLE) == 0
        logged = len(caplog.records)

        # The fault, for several cycles; meanwhile the streams' counters move on.
        heal_counters(api)
        if case.refuse:
            await api.refuse()
        if case.fault is not None:
            api.fault = case.fault(api)
        served = len(api.served)
        for _ in range(case.cycles):
            scrape = await rig.cycle(stuck=api.stuck if case.hangs else None)
            assert scrape.value("realtimekit_up") == (1 if case.up else 0)
            for sid in LIVE:
                assert scrape.stream(LIVE_GAUGE, sid) == 1, sid
                if not case.up:  # the last values stand
                    assert (scrape.stream(INGEST, sid), scrape.stream(VIEWER, sid)) == BEFORE[sid]
            assert scrape.stream(LIVE_GAUGE, IDLE) == 0
            if case.check is not None:
                case.check(scrape)
        assert rig.internal_errors() == []
        if case.sends is not None:
            assert len(api.served) - served <= case.sends
        for reason in REASONS:
            counted = scrape.errors(reason) - healthy.errors(reason)
            if reason == case.reason:
                assert counted >= case.cycles, reason
            else:
                assert counted == 0, reason
        if case.code is not None:
            grew = scrape.requests(case.endpoint, case.code) - healthy.requests(
                case.endpoint, case.code
            )
            assert grew >= 1
        if not case.up:
            assert scrape.value(
                "realtimekit_exporter_last_success_timestamp_seconds"
            ) == healthy.value("realtimekit_exporter_last_success_timestamp_seconds")

        # The API heals: the next cycle shows it all.
        api.fault = None
        if case.refuse:
            await api.listen()
        rig.clock.now += case.pause
        healed = await rig.cycle()
        assert healed.value("realtimekit_up") == 1
        for sid in LIVE:
            assert healed.stream(LIVE_GAUGE, sid) == 1
            assert (healed.stream(INGEST, sid), healed.stream(VIEWER, sid)) == AFTER[sid]
        assert healed.value("realtimekit_exporter_last_success_timestamp_seconds") == rig.clock.now
        await rig.cycle()

        lines = exporter_lines(caplog.records[logged:])
        assert len(lines) <= case.logs, lines
        assert rig.leaks([*api.secrets(), SOME_KEY], caplog.records) == []


# -- one field at a time ------------------------------------------------------------------
WRONG: Final = (
    None,
    True,
    -1,
    10**400,
    math.nan,
    "",
    "garbage",
    "x" * 5000,
    "\ud800",
    [1, "two"],
    {"nested": {"deeper": [None]}},
)
LIVESTREAM_FIELDS: Final = ("status", "name", "meeting_id", "disabled")
SESSION_FIELDS: Final = (
    "id",
    "started_time",
    "stopped_time",
    "ingest_seconds",
    "viewer_seconds",
    "err_message",
    "livestream_id",
)
FIELD_CASES: Final = [
    *(("listing", f, v) for f in LIVESTREAM_FIELDS for v in WRONG),
    *(("session.livestream", f, v) for f in LIVESTREAM_FIELDS for v in WRONG),
    *(("session", f, v) for f in SESSION_FIELDS for v in WRONG),
]


def _field_fault(api: FaultApi, where: str, name: str, value: Any) -> Fault:
    def change(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
        if where == "listing":
            target = next(e for e in doc["data"] if e["id"] == LIVE_A)
        elif request.target != LIVE_A:
            return
        elif where == "session":
            target = doc["data"]["session"]
        else:
            target = doc["data"]["livestream"]
        target[name] = value

    endpoint = LISTING if where == "listing" else SESSION
    return rewrite(endpoint, change)(api)


@pytest.mark.parametrize(
    ("where", "name", "value"),
    FIELD_CASES,
    ids=[f"{w}.{n}={json.dumps(v)[:12]}" for w, n, v in FIELD_CASES],
)
async def test_a_wrong_type_in_any_field_fails_nothing_else(
    api: FaultApi, where: str, name: str, value: Any
) -> None:
    """A field of the wrong type, null or absurd is read as absent (or as text), the cycle
    completes, /metrics stays valid, and the live streams stay live, except where the API
    says a session has stopped (any stop time but null or empty)."""
    async with FaultRig(api.base_url, token=TOKEN) as rig:
        await rig.cycle()
        api.fault = _field_fault(api, where, name, value)
        scrape = await rig.cycle()
        assert rig.internal_errors() == []
        assert scrape.value("realtimekit_up") == 1
        assert scrape.value("realtimekit_exporter_livestreams_tracked") == 3
        stopped = (where, name) == ("session", "stopped_time") and value not in (None, "")
        assert scrape.stream(LIVE_GAUGE, LIVE_A) == (0 if stopped else 1)
        assert scrape.stream(LIVE_GAUGE, LIVE_B) == 1
        assert (scrape.stream(INGEST, LIVE_B), scrape.stream(VIEWER, LIVE_B)) == BEFORE[LIVE_B]
        for gauge in (INGEST, VIEWER, "realtimekit_livestream_session_start_timestamp_seconds"):
            got = scrape.stream(gauge, LIVE_A)
            assert got is None or (math.isfinite(got) and got >= 0)
        api.fault = None
        healed = await rig.cycle()
        assert healed.stream(LIVE_GAUGE, LIVE_A) == 1
        assert (healed.stream(INGEST, LIVE_A), healed.stream(VIEWER, LIVE_A)) == BEFORE[LIVE_A]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-27T10:00:00.000Z", STARTED_AT),
        ("2026-11-27T10:00:00Z", STARTED_AT),
        ("2026-11-27T10:00:00.123456789Z", STARTED_AT + 0.123456),  # cut to microseconds
        ("2026-11-27 10:00:00", STARTED_AT),
        ("2026-11-27T15:30:00+05:30", STARTED_AT),
        ("2026-11-27T10:00:00", STARTED_AT),  # no zone: UTC
        (1_795_773_600, STARTED_AT),
        (1_795_773_600_000, STARTED_AT),
        ("1795773600", STARTED_AT),
        ("27/11/2026 10:00", None),
        ("yesterday", None),
        ("2026-13-45T99:99:99Z", None),
        ("", None),
        (0, None),
        (-1, None),
        ("1969-12-31T23:59:59Z", None),
    ],
)
async def test_dates_in_odd_formats_are_read_or_left_out(
    api: FaultApi, value: Any, expected: float | None
) -> None:
    """A session start in any ISO 8601 form or as epoch seconds or milliseconds is exported
    as Unix time; anything else is left out, and the stream stays live."""

    def change(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
        if request.target == LIVE_A:
            doc["data"]["session"]["started_time"] = value

    api.fault = rewrite(SESSION, change)(api)
    async with FaultRig(api.base_url, token=TOKEN) as rig:
        scrape = await rig.cycle()
    start = scrape.stream("realtimekit_livestream_session_start_timestamp_seconds", LIVE_A)
    assert start == (pytest.approx(expected) if expected is not None else None)
    assert scrape.stream(LIVE_GAUGE, LIVE_A) == 1 and scrape.value("realtimekit_up") == 1


@pytest.mark.parametrize("value", [None, [], {}, 1.5], ids=["null", "list", "object", "float"])
async def test_an_unreadable_id_does_not_drop_a_live_stream(api: FaultApi, value: Any) -> None:
    """A listing entry whose id is not readable is a decode error, and the live stream it
    probably was stays exported as live, with its last values."""

    def change(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
        next(e for e in doc["data"] if e["id"] == LIVE_A)["id"] = value

    async with FaultRig(api.base_url, token=TOKEN) as rig:
        await rig.cycle()
        api.fault = rewrite(LISTING, change)(api)
        scrape = await rig.cycle()
    assert scrape.errors("decode") == 1 and scrape.value("realtimekit_up") == 0
    assert scrape.stream(LIVE_GAUGE, LIVE_A) == 1
    assert scrape.stream(INGEST, LIVE_A) == BEFORE[LIVE_A][0]


async def test_a_failing_listing_does_not_flap_the_budget_warning(
    api: FaultApi, caplog: pytest.LogCaptureFixture
) -> None:
    """With polling over api.rate_limit, the warning is logged once, however often the
    listing fails in between."""
    caplog.set_level(logging.INFO)
    # Three requests every 2 s: 450 per 5 minutes, over a budget of 300.
    async with FaultRig(api.base_url, token=TOKEN, rate_limit=RateLimit(300, 300.0)) as rig:
        await rig.cycle()
        for _ in range(3):
            api.fault = on(LISTING, envelope(500))
            await rig.cycle()
            api.fault = None
            await rig.cycle()
    budget = [line for line in exporter_lines(caplog.records) if "api.rate_limit" in line]
    assert len(budget) == 1, budget


# -- the 8 MiB cap ----------------------------------------------------------------------------
@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield session


def _client(http: aiohttp.ClientSession, base_url: str) -> RealtimeKitClient:
    return RealtimeKitClient(
        session=http,
        base_url=base_url,
        token=Secret(TOKEN),
        budget=RequestBudget(requests=100, window=300),
        timeout=20,
        retries=0,
    )


@pytest.mark.parametrize(
    "stream",
    [Stream(prefix=HUGE_PREFIX), Stream(declared=2**40, prefix=HUGE_PREFIX)],
    ids=["endless-chunked", "declared-1TiB"],
)
async def test_a_huge_body_is_cut_at_8_mib_and_memory_stays_flat(
    api: FaultApi, http: aiohttp.ClientSession, stream: Stream
) -> None:
    """An endless (or 1 TiB) answer is a decode error once past 8 MiB (or at once, by its
    Content-Length), the client stops reading it, and it never holds much more than 8 MiB."""
    api.fault = on(LISTING, stream)
    client = _client(http, api.base_url)
    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as caught:
            await asyncio.wait_for(client.list_livestreams(ACCOUNT, APP), 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (caught.value.reason, caught.value.status) == ("decode", 200)
    assert "limit" in str(caught.value)
    assert MAX_BODY_BYTES == 8 * 1024 * 1024
    assert peak < MAX_BODY_BYTES + 4 * 1024 * 1024
    if stream.declared is not None:
        assert peak < 1024 * 1024  # refused by the header, nothing read
    # The server stopped when the client closed: what it got out is the cap plus what
    # the sockets' buffers on both sides hold, not the endless rest.
    await asyncio.sleep(0)
    assert api.streamed < MAX_BODY_BYTES + 32 * 1024 * 1024


async def test_a_body_of_exactly_8_mib_is_read(api: FaultApi, http: aiohttp.ClientSession) -> None:
    """The cap is 8 MiB, not less: a listing padded to exactly 8 MiB is read."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get(api.sim.origin + APP_PATH, headers=headers) as response:
        body = await response.read()
    padded = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    api.fault = on(LISTING, Reply(200, raw=padded))
    listing = await asyncio.wait_for(_client(http, api.base_url).list_livestreams(ACCOUNT, APP), 30)
    assert {s.id for s in listing.livestreams} == {*LIVE, IDLE}


# -- secrets in exported fields -------------------------------------------------------------
def _quoting(field: str, secret: str) -> Callable[[FaultApi, Request, dict[str, Any]], None]:
    """A change making ``field`` of every livestream quote ``secret`` ("own key": the
    livestream's own stream key)."""

    def change(api: FaultApi, request: Request, doc: dict[str, Any]) -> None:
        entries = doc["data"] if isinstance(doc["data"], list) else [doc["data"]["livestream"]]
        for entry in entries:
            value = entry["stream_key"] if secret == "own key" else secret
            entry[field] = value if field == "status" else f"{field} {value}"

    return change


# The session endpoint's livestream gives only the status (name and meeting id come from
# the listing), so its other fields are not exported and not tested here.
EXPORTED_FIELDS: Final = [
    pytest.param(endpoint, field, secret, id=f"{endpoint}-{field}-{name}")
    for endpoint, fields in ((LISTING, ("name", "meeting_id", "status")), (SESSION, ("status",)))
    for field in fields
    for name, secret in (("token", TOKEN), ("own-stream-key", "own key"))
]


@pytest.mark.parametrize(("endpoint", "field", "secret"), EXPORTED_FIELDS)
async def test_a_secret_in_an_exported_field_is_not_exported(
    api: FaultApi, endpoint: str, field: str, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Livestreams whose name, meeting id or status quote the token or their own stream key
    (a buggy or hostile API) do not put that secret, in any letter case, in /metrics, on
    the status page or in a log line, and stay live."""
    caplog.set_level(logging.DEBUG)
    async with FaultRig(api.base_url, token=TOKEN) as rig:
        await rig.cycle()
        api.fault = rewrite(endpoint, _quoting(field, secret))(api)
        for _ in range(2):
            scrape = await rig.cycle()
            assert [scrape.stream(LIVE_GAUGE, sid) for sid in (*LIVE, IDLE)] == [1, 1, 0]
        assert rig.leaks(api.secrets(), caplog.records) == []


# -- error text, against aioresponses ---------------------------------------------------------
class _SentWriter:
    """Stands in for the stream writer of a request that was already sent."""

    output_size = 0


class _MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 does not pass ``stream_writer``, required since aiohttp 3.14
    (pnuckowski/aioresponses#289), as in tests/unit/test_client.py."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        if "stream_writer" in inspect.signature(aiohttp.ClientResponse).parameters:
            kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(method, url, **kwargs)


class MockServer(aioresponses):
    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _MockResponse)
        super().add(url, method, *args, **kwargs)


MOCK_BASE: Final = "https://api.example.test/client/v4"
MOCK_LISTING: Final = re.compile(r"^https://api\.example\.test/client/v4/.*/livestreams\b.*$")
TOKENS: Final = {
    "40-chars": TOKEN,
    "20-chars": "tok_mid_length_2026x",
    "12-chars": "tok_short_12",
}


def _hostile_responses(token: str) -> dict[str, dict[str, Any]]:
    echo = f"Bearer {token} rejected for {SOME_KEY}; token='{token}'"
    gateway = {"success": False, "errors": [{"code": 10000, "message": echo}], "result": None}
    service = {"success": False, "error": {"code": 500, "message": echo}}
    headers = {"WWW-Authenticate": f'Bearer error="{token}"', "X-Token": token}
    return {
        "401": {"status": 401, "payload": gateway, "headers": headers},
        "403": {"status": 403, "payload": gateway, "headers": headers},
        "429": {"status": 429, "payload": gateway, "headers": {**headers, "Retry-After": token}},
        "500": {"status": 500, "payload": service, "headers": headers},
        "502-html": {"status": 502, "body": f"<p>{echo}</p>", "headers": headers},
        "400": {"status": 400, "payload": gateway, "headers": headers},
        "404-gateway": {"status": 404, "payload": gateway, "headers": headers},
        "error-as-text": {"status": 500, "payload": {"success": False, "error": echo}},
        "success-false": {"status": 200, "payload": service, "headers": headers},
        "redirect": {"status": 302, "body": "", "headers": {"Location": f"/x?t={token}"}},
        "not-json": {"status": 200, "body": echo},
        "data-a-string": {"status": 200, "payload": {"success": True, "data": echo}},
    }


RESPONSE_IDS: Final = list(_hostile_responses(TOKEN))


@pytest.mark.parametrize("response", RESPONSE_IDS)
@pytest.mark.parametrize("token", list(TOKENS.values()), ids=list(TOKENS))
async def test_api_error_text_never_holds_a_secret(
    http: aiohttp.ClientSession, token: str, response: str
) -> None:
    """Whatever an error answer quotes (the token, of any length, or a stream key, in
    messages or headers), the ApiError's str, repr and args, and the client's repr, do not."""
    client = RealtimeKitClient(
        session=http,
        base_url=MOCK_BASE,
        token=Secret(token),
        budget=RequestBudget(requests=100, window=300),
        retries=0,
    )
    with MockServer() as server:
        server.get(MOCK_LISTING, repeat=True, **_hostile_responses(token)[response])
        with pytest.raises(ApiError) as caught:
            await client.list_livestreams(ACCOUNT, APP)
    error = caught.value
    texts = [str(error), repr(error), *map(repr, error.args), repr(client), str(client)]
    for linked in (error.__cause__, error.__context__):
        texts += [str(linked), repr(linked)]
    for secret in (token, SOME_KEY):
        assert not [t for t in texts if secret.lower() in t.lower()], error


# -- the real process loop, on real clocks --------------------------------------------------
async def _scrape_real(session: aiohttp.ClientSession, origin: str) -> tuple[Scrape, float]:
    """A scrape of the real server, and how long /metrics took to answer."""
    timeout = aiohttp.ClientTimeout(total=HTTP_LIMIT)
    texts = []
    started = time.monotonic()
    for path, headers in (
        ("/metrics", {"Accept-Encoding": "identity"}),
        ("/metrics", {"Accept": OPENMETRICS}),
        ("/", {}),
    ):
        async with session.get(origin + path, headers=headers, timeout=timeout) as response:
            assert response.status == 200, (path, response.status)
            texts.append(await response.text())
        if not texts[1:]:
            took = time.monotonic() - started
    text, openmetrics, page = texts
    return Scrape(text=text, openmetrics=openmetrics, page=page, samples=samples(text)), took


REAL_PHASES: Final = [
    ("hang", on(LISTING, Hang()), "timeout"),
    ("refused", None, "connection"),
    ("429", on(LISTING, envelope(429, **{"Retry-After": "1"})), "rate_limited"),
    ("401", on(LISTING, envelope(401)), "auth"),
    ("huge", on(LISTING, Stream(prefix=HUGE_PREFIX)), "decode"),
]


async def test_the_running_exporter_rides_out_every_kind_of_fault(
    api: FaultApi, caplog: pytest.LogCaptureFixture
) -> None:
    """The real Exporter and Server, on real clocks, poll through an API that hangs, refuses
    connections, resets them, throttles, rejects the token and sends a huge body, in turn:
    the poll task never ends, /metrics and / answer at once during every fault, live
    streams stay live, each fault is counted under its reason, the app is up again after
    each, and the logs hold two lines per fault and no secret."""
    caplog.set_level(logging.DEBUG)
    # A budget that the cycles' three requests every 0.5 s fit in (see the xfail above).
    config = make_config(
        api.base_url,
        discover=True,
        interval=0.5,
        token=TOKEN,
        timeout=0.3,
        rate_limit=RateLimit(3000, 300.0),
    )
    scrapes: list[Scrape] = []
    async with (
        Exporter(config, process_metrics=False) as exporter,
        aiohttp.ClientSession(trust_env=False) as session,
    ):
        server = Server(exporter, host="127.0.0.1", port=0)
        await server.start()
        try:
            host, port = server.addresses[0]
            origin = f"http://{host}:{port}"

            async def until(done: Callable[[Scrape], bool], what: str) -> Scrape:
                async def poll() -> Scrape:
                    while True:
                        scrape, took = await _scrape_real(session, origin)
                        scrapes.append(scrape)
                        # Generous, for a shared machine: it catches a scrape that hangs.
                        assert took < 5.0, f"/metrics took {took:.2f}s"
                        assert server.failure is None
                        if done(scrape):
                            return scrape
                        await asyncio.sleep(0.05)

                try:
                    return await asyncio.wait_for(poll(), 15)
                except TimeoutError:
                    pytest.fail(f"never saw {what}")

            def healthy(scrape: Scrape) -> bool:
                return scrape.value("realtimekit_up") == 1 and all(
                    scrape.stream(LIVE_GAUGE, sid) == 1 for sid in LIVE
                )

            await until(healthy, "the first good cycle")
            logged, first = len(caplog.records), len(scrapes)
            for name, fault, reason in REAL_PHASES:
                before = scrapes[-1].errors(reason)
                if fault is None:
                    await api.refuse()
                api.fault = fault

                def failed_twice(s: Scrape, r: str = reason, b: float = before) -> bool:
                    return s.errors(r) >= b + 2

                faulty = await until(failed_twice, f"{name}: 2 errors")
                assert faulty.value("realtimekit_up") == 0, name
                assert [faulty.stream(LIVE_GAUGE, sid) for sid in LIVE] == [1, 1], name
                api.fault = None
                if fault is None:
                    await api.listen()
                await until(healthy, f"{name}: recovery")
            assert server.failure is None
            assert [e for e in exporter.poller.recent_errors if e.reason == "internal"] == []
        finally:
            await server.close()
    lines = exporter_lines(caplog.records[logged:])
    assert len(lines) <= 2 * len(REAL_PHASES), lines
    assert all(s.stream(LIVE_GAUGE, sid) == 1 for s in scrapes[first:] for sid in LIVE)
    texts = [t for s in scrapes for t in (s.text, s.openmetrics, s.page)]
    texts += [f"{r.getMessage()} {r.args!r} {r.exc_text}" for r in caplog.records]
    for secret in api.secrets():
        assert not [t for t in texts if secret.lower() in t.lower()]
