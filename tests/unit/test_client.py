"""The API client against a mocked server: paths, pages, retries, throttling, errors."""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from exporter import client as client_module
from exporter import decode
from exporter.budget import CycleDeadline, RequestBudget
from exporter.client import (
    ENDPOINT_ANALYTICS,
    ENDPOINT_ANALYTICS_DAYS,
    ENDPOINT_LISTING,
    ENDPOINT_LIVESTREAM,
    ENDPOINT_SESSION,
    ENDPOINT_SESSION_BY_ID,
    ENDPOINT_WEBHOOK,
    ENDPOINT_WEBHOOKS,
    ApiError,
    RealtimeKitClient,
)
from exporter.config import Secret
from exporter.model import ActiveSession, Livestream, Session, Totals, Webhook, addressable
from tests.clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Iterator

    from yarl import URL

TOKEN = "tok_Zx9-very-secret-token-value-0123456789"
BASE = "https://api.example.test/client/v4"
ACCOUNT = "acc1"
APP = "app1"
APP_URL = f"{BASE}/accounts/{ACCOUNT}/realtime/kit/{APP}"
LIST_URL = f"{APP_URL}/livestreams"
STREAM_ID = "b60ef3da-fbbb-441b-9168-8235b0035248"
SESSION_URL = f"{LIST_URL}/{STREAM_ID}/active-livestream-session"
SESSION_ID = "cf55a850-c3fd-46b5-b5d2-25b3b9aa1686"
SESSION_BY_ID_URL = f"{LIST_URL}/sessions/{SESSION_ID}"
LIVESTREAM_URL = f"{LIST_URL}/{STREAM_ID}"
WEBHOOKS_URL = f"{APP_URL}/webhooks"
HOOK_ID = "0b5d4f2e-2f3c-4a61-9a36-3a4f1c2b7d10"
HOOK_URL = f"{WEBHOOKS_URL}/{HOOK_ID}"
ANALYTICS_URL = f"{APP_URL}/analytics/livestreams/overall"
DAYS_START = 1_689_379_200  # 2023-07-15T00:00:00Z
DAYS_END = DAYS_START + 2 * 86400 - 1
DAYS_URL = f"{APP_URL}/analytics/livestreams/daywise?start_time={DAYS_START}&end_time={DAYS_END}"
# The published examples of the two analytics endpoints.
ANALYTICS_EXAMPLE: dict[str, Any] = {
    "data": {"count": 4, "total_ingest_seconds": 531, "total_viewer_seconds": 116},
    "success": True,
}
DAYS_EXAMPLE: dict[str, Any] = {
    "data": [
        {"count": 4, "date": "2023-07-15", "total_ingest_seconds": 531, "total_viewer_seconds": 116}
    ],
    "success": True,
}
HOOK: dict[str, Any] = {
    "id": HOOK_ID,
    "name": "realtimekit-exporter",
    "url": "https://exporter.example.com/webhooks/realtimekit",
    "events": ["livestreaming.statusUpdate"],
    "enabled": True,
    "created_at": "2026-01-01T00:00:00.000Z",
    "updated_at": "2026-01-01T00:00:00.000Z",
}
HOOK_DECODED = Webhook(
    id=HOOK_ID,
    url="https://exporter.example.com/webhooks/realtimekit",
    name="realtimekit-exporter",
    events=("livestreaming.statusUpdate",),
    enabled=True,
)
NOW = 1000.0

SESSION_EXAMPLE: dict[str, Any] = {
    "success": True,
    "data": {
        "livestream": {
            "id": STREAM_ID,
            "name": None,
            "ingest_server": "rtmps://2ec802dd47b0.global-contribute.live-video.net:443/app/",
            "stream_key": "sk_ap-south-1_x3lKBdJa8UDN_3q6PPLMJnqnbnhyrkXrOG504MUsxnZ",
            "status": "LIVE",
            "meeting_id": "bbb87945-df1c-49d9-8159-262a7ae6cfde",
            "disabled": False,
        },
        "session": {
            "id": "cf55a850-c3fd-46b5-b5d2-25b3b9aa1686",
            "livestream_id": STREAM_ID,
            "err_message": None,
            "started_time": "2023-07-15T07:08:39.000Z",
            "stopped_time": None,
            "ingest_seconds": 60,
            "viewer_seconds": 60,
        },
    },
}
# The published example of GET .../livestreams/sessions/{livestream-session-id}.
SESSION_BY_ID_EXAMPLE: dict[str, Any] = {
    "data": {
        "created_at": "2023-07-15T07:08:40.742Z",
        "err_message": None,
        "id": SESSION_ID,
        "ingest_seconds": 60,
        "invoked_time": None,
        "livestream_id": STREAM_ID,
        "started_time": "2023-07-15T07:08:39.000Z",
        "stopped_time": None,
        "updated_at": "2023-07-15T07:08:40.742Z",
        "viewer_seconds": 60,
    },
    "success": True,
}
EXAMPLE_SESSION = Session(
    id=SESSION_ID,
    started_time=1689404919.0,  # 2023-07-15T07:08:39Z
    stopped_time=None,
    err_message=None,
    ingest_seconds=60.0,
    viewer_seconds=60.0,
)
NOT_FOUND: dict[str, Any] = {
    "success": False,
    "error": {"code": 404, "message": f"No active session found for {STREAM_ID}"},
}
AUTH_ERROR: dict[str, Any] = {
    "success": False,
    "errors": [{"code": 10000, "message": "Authentication error"}],
    "messages": [],
    "result": None,
}
BAD_REQUEST: dict[str, Any] = {
    "success": False,
    "errors": [{"code": 6003, "message": "Invalid request headers"}],
    "messages": [],
    "result": None,
}
THROTTLED: dict[str, Any] = {
    "success": False,
    "errors": [{"code": 971, "message": "More than 1200 requests per 300 seconds reached"}],
    "messages": [],
    "result": None,
}


class _SentWriter:
    """Stands in for the stream writer of a request that was already sent."""

    output_size = 0


class _MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 does not pass ``stream_writer``, required since aiohttp 3.14.

    See pnuckowski/aioresponses#289; drop this once aioresponses passes it itself.
    """

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if _NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", _SentWriter())
        super().__init__(method, url, **kwargs)


_NEEDS_STREAM_WRITER = "stream_writer" in inspect.signature(aiohttp.ClientResponse).parameters


class MockServer(aioresponses):
    """aioresponses whose responses can be built with the installed aiohttp."""

    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _MockResponse)
        super().add(url, method, *args, **kwargs)


class FakeJitter:
    """Hands out the given jitter fractions in order, then repeats the last one."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def __call__(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


class RecordingBudget(RequestBudget):
    """A budget that notes the clock's time at every grant."""

    def __init__(self, clock: FakeClock, *, requests: int, window: float) -> None:
        super().__init__(requests=requests, window=window, clock=clock, sleep=clock.sleep)
        self.grants: list[float] = []
        self._now = clock

    async def acquire(
        self, *, deadline: float | Callable[[], float] | None = None, priority: int = 0
    ) -> float:
        waited = await super().acquire(deadline=deadline, priority=priority)
        self.grants.append(self._now())
        return waited


class SlowServer:
    """Its ``respond`` (an aioresponses callback) notes each arrival, then takes ``seconds``.

    It yields to the event loop once, so requests queued behind it really wait.
    """

    def __init__(self, clock: FakeClock, seconds: float = 0.0) -> None:
        self.clock = clock
        self.seconds = seconds
        self.arrivals: list[float] = []

    async def respond(self, url: URL, **kwargs: Any) -> CallbackResult | None:
        self.arrivals.append(self.clock.now)
        await asyncio.sleep(0)
        self.clock.now += self.seconds
        return None


class RecordingObserver:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.remaining: list[int] = []

    def request(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.append((endpoint, code))

    def rate_limit_remaining(self, remaining: int) -> None:
        self.remaining.append(remaining)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession()
    yield session
    await session.close()


@pytest.fixture
def server() -> Iterator[aioresponses]:
    with MockServer() as mocked:
        yield mocked


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


MakeClient = Callable[..., RealtimeKitClient]


@pytest.fixture
def make_client(
    http: aiohttp.ClientSession, clock: FakeClock, observer: RecordingObserver
) -> MakeClient:
    def make(**overrides: Any) -> RealtimeKitClient:
        options: dict[str, Any] = {
            "session": http,
            "base_url": BASE + "/",
            "token": Secret(TOKEN),
            "budget": RequestBudget(requests=1200, window=300.0, clock=clock, sleep=clock.sleep),
            "timeout": 10.0,
            "retries": 2,
            "backoff": 0.5,
            "observer": observer,
            "clock": clock,
            "sleep": clock.sleep,
            "jitter": FakeJitter(0.5),
        }
        options.update(overrides)
        return RealtimeKitClient(**options)

    return make


def sent(server: aioresponses) -> list[tuple[URL, dict[str, Any]]]:
    """Every request the mock received, as (URL with query, request kwargs)."""
    return [(url, call.kwargs) for (_, url), calls in server.requests.items() for call in calls]


class PagingFields(TypedDict, total=False):
    """The ``paging`` object of a listing page (each field may be left out)."""

    total_count: int
    start_offset: int
    end_offset: int


def page(*ids: str, status: str = "IDLE", **paging: Unpack[PagingFields]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "success": True,
        "data": [{"id": i, "status": status, "stream_key": "sk"} for i in ids],
    }
    if paging:
        body["paging"] = paging
    return body


def session_call(client: RealtimeKitClient) -> Any:
    return client.session(ACCOUNT, APP, SESSION_ID)


def active_call(client: RealtimeKitClient) -> Any:
    return client.active_session(ACCOUNT, APP, STREAM_ID)


ASK = client_module.LISTING_PAGE_ASK


def page_url(page_no: int, per_page: int) -> str:
    return f"{LIST_URL}?page_no={page_no}&per_page={per_page}"


async def fail(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value


# --- request shape ----------------------------------------------------------------------


async def test_sends_the_token_as_a_bearer_header(
    server: aioresponses, make_client: MakeClient
) -> None:
    """Every request carries ``Authorization: Bearer <token>`` and does not follow redirects."""
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    await make_client().active_session(ACCOUNT, APP, STREAM_ID)
    [(_, kwargs)] = sent(server)
    assert kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert kwargs["allow_redirects"] is False


async def test_set_token_replaces_the_bearer_token(
    server: aioresponses, make_client: MakeClient
) -> None:
    """After set_token, requests carry the new token."""
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    client = make_client()
    client.set_token(Secret("rotated"))
    await client.active_session(ACCOUNT, APP, STREAM_ID)
    [(_, kwargs)] = sent(server)
    assert kwargs["headers"]["Authorization"] == "Bearer rotated"


@pytest.mark.parametrize(
    ("account", "app", "stream", "raw_path"),
    [
        (
            "acc1",
            "app1",
            STREAM_ID,
            f"/client/v4/accounts/acc1/realtime/kit/app1/livestreams/{STREAM_ID}"
            "/active-livestream-session",
        ),
        (
            "acc/1",
            "app 1",
            "ls/../x?y#z",
            "/client/v4/accounts/acc%2F1/realtime/kit/app%201/livestreams/ls%2F..%2Fx%3Fy%23z"
            "/active-livestream-session",
        ),
    ],
    ids=["plain", "special-characters"],
)
async def test_session_path_holds_the_quoted_ids(
    server: aioresponses,
    make_client: MakeClient,
    account: str,
    app: str,
    stream: str,
    raw_path: str,
) -> None:
    """Account, app and livestream ids each fill one path segment, quoted whole."""
    server.get(re.compile(r".*"), payload={"success": True, "data": None})
    await make_client().active_session(account, app, stream)
    [(url, _)] = sent(server)
    assert url.raw_path == raw_path
    assert not url.query
    assert url.host == "api.example.test"


@pytest.mark.parametrize(
    ("account", "app", "session_id", "raw_path"),
    [
        (
            "acc1",
            "app1",
            SESSION_ID,
            f"/client/v4/accounts/acc1/realtime/kit/app1/livestreams/sessions/{SESSION_ID}",
        ),
        (
            "acc/1",
            "app 1",
            "s/../x?y#z",
            "/client/v4/accounts/acc%2F1/realtime/kit/app%201/livestreams/sessions/s%2F..%2Fx%3Fy%23z",
        ),
    ],
    ids=["plain", "special-characters"],
)
async def test_session_by_id_path_holds_the_quoted_ids(
    server: aioresponses,
    make_client: MakeClient,
    account: str,
    app: str,
    session_id: str,
    raw_path: str,
) -> None:
    """The session-by-id request puts account, app and session id each in one quoted segment."""
    server.get(re.compile(r".*"), payload={"success": True, "data": None})
    await make_client().session(account, app, session_id)
    [(url, kwargs)] = sent(server)
    assert url.raw_path == raw_path
    assert not url.query
    assert kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


# --- listing pages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "with_end_offset", [True, False], ids=["end-offset", "counted-without-end-offset"]
)
async def test_listing_follows_pages_until_total_count_is_reached(
    server: aioresponses, make_client: MakeClient, with_end_offset: bool
) -> None:
    """Full pages are followed until total_count is reached, and no further."""

    def paging(end: int) -> PagingFields:
        fields = PagingFields(total_count=6, start_offset=end - 1)
        if with_end_offset:
            fields["end_offset"] = end
        return fields

    server.get(page_url(1, 2), payload=page("a", "b", **paging(2)))
    server.get(page_url(2, 2), payload=page("c", "d", **paging(4)))
    server.get(page_url(3, 2), payload=page("e", "f", **paging(6)))
    listing = await make_client().list_livestreams(ACCOUNT, APP, per_page=2)
    assert [s.id for s in listing.livestreams] == ["a", "b", "c", "d", "e", "f"]
    assert listing.pages == 3
    requests = sent(server)
    assert [dict(url.query) for url, _ in requests] == [
        {"page_no": "1", "per_page": "2"},
        {"page_no": "2", "per_page": "2"},
        {"page_no": "3", "per_page": "2"},
    ]
    assert {url.path for url, _ in requests} == {
        f"/client/v4/accounts/{ACCOUNT}/realtime/kit/{APP}/livestreams"
    }


async def test_listing_uses_the_default_page_size(
    server: aioresponses, make_client: MakeClient
) -> None:
    """Without per_page, pages of LISTING_PAGE_SIZE are asked for."""
    server.get(page_url(1, ASK), payload=page("a", total_count=1, start_offset=1, end_offset=1))
    listing = await make_client().list_livestreams(ACCOUNT, APP)
    assert [s.id for s in listing.livestreams] == ["a"]
    assert len(sent(server)) == 1


@pytest.mark.parametrize(
    ("pages", "ids", "later"),
    [
        ([page("a", "b"), page("c"), page()], ["a", "b", "c"], 2),
        ([page("a", "b"), page()], ["a", "b"], 2),
        ([page("a"), page("b"), page("c"), page()], ["a", "b", "c"], 1),
        ([page("a", "b"), page("c"), page("c")], ["a", "b", "c"], 2),
    ],
    ids=["short-page-then-empty", "full-page-then-empty", "capped-pages", "short-page-repeated"],
)
async def test_listing_without_paging_goes_on_past_a_short_page(
    server: aioresponses,
    make_client: MakeClient,
    pages: list[dict[str, Any]],
    ids: list[str],
    later: int,
) -> None:
    """Without paging, a short page is not the end: reading stops at an empty or all-seen
    page. A short first page sets the page size of the pages after it (the API's cap)."""
    for n, body in enumerate(pages, start=1):
        server.get(page_url(n, 2 if n == 1 else later), payload=body)
    server.get(page_url(len(pages) + 1, later), payload=page("never asked"))
    listing = await make_client().list_livestreams(ACCOUNT, APP, per_page=2)
    assert [s.id for s in listing.livestreams] == ids
    assert listing.pages == len(pages)
    assert [url.query["page_no"] for url, _ in sent(server)] == [
        str(n) for n in range(1, len(pages) + 1)
    ]


@pytest.mark.parametrize(
    ("paging", "page_numbers"),
    [({}, ["1", "2", "3"]), ({"total_count": 3}, ["1", "2"])],
    ids=["no-paging", "total-count-without-end-offset"],
)
async def test_listing_entry_without_id_still_counts_towards_the_listing(
    server: aioresponses,
    make_client: MakeClient,
    paging: PagingFields,
    page_numbers: list[str],
) -> None:
    """An entry dropped for having no id still counts towards total_count (no paging: read on)."""
    first = page("a", **paging)
    first["data"].append({"status": "LIVE", "name": "no id"})
    server.get(page_url(1, 2), payload=first)
    server.get(page_url(2, 2), payload=page("c", **paging))
    server.get(page_url(3, 2), payload=page(**paging))
    listing = await make_client().list_livestreams(ACCOUNT, APP, per_page=2)
    assert [s.id for s in listing.livestreams] == ["a", "c"]
    assert [url.query["page_no"] for url, _ in sent(server)] == page_numbers
    assert listing.pages == len(page_numbers)


async def test_listing_stops_when_a_page_repeats_the_same_ids(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A server that ignores page_no (same page again) ends the listing instead of looping."""
    server.get(page_url(1, 2), payload=page("a", "b"))
    server.get(page_url(2, 2), payload=page("b", "a"))
    listing = await make_client().list_livestreams(ACCOUNT, APP, per_page=2)
    assert [s.id for s in listing.livestreams] == ["a", "b"]
    assert listing.pages == 2
    assert len(sent(server)) == 2


async def test_listing_deduplicates_ids_across_pages_first_wins(
    server: aioresponses, make_client: MakeClient
) -> None:
    """An id seen on an earlier page keeps its first record; later copies are dropped."""
    server.get(page_url(1, 2), payload=page("a", "b", status="IDLE", total_count=5))
    server.get(page_url(2, 2), payload=page("b", "c", status="LIVE", total_count=5))
    server.get(page_url(3, 2), payload=page("d", status="LIVE", total_count=5))
    listing = await make_client().list_livestreams(ACCOUNT, APP, per_page=2)
    assert listing.livestreams == (
        Livestream(id="a", status="IDLE"),
        Livestream(id="b", status="IDLE"),
        Livestream(id="c", status="LIVE"),
        Livestream(id="d", status="LIVE"),
    )
    assert len(sent(server)) == 3


@pytest.mark.parametrize(
    ("bodies", "per_page"),
    [
        (
            [
                {
                    "success": True,
                    "data": [{"id": "a", "status": "LIVE"}, {"id": "b", "status": "idle"}],
                    "paging": {"total_count": 3, "start_offset": 1, "end_offset": 2},
                },
                {
                    "success": True,
                    "data": [{"id": "c", "status": "OFFLINE"}],
                    "paging": {"total_count": 3, "start_offset": 3, "end_offset": 3},
                },
            ],
            2,
        ),
        (
            [
                {
                    "success": True,
                    "data": {
                        "livestreams": [
                            {"id": "a", "status": "LIVE"},
                            {"id": "b", "status": "idle"},
                        ],
                        "paging": {"total_count": 3, "start_offset": 1, "end_offset": 2},
                    },
                },
                {
                    "success": True,
                    "data": {
                        "livestreams": [{"id": "c", "status": "OFFLINE"}],
                        "paging": {"total_count": 3, "start_offset": 3, "end_offset": 3},
                    },
                },
            ],
            2,
        ),
        (
            [
                {
                    "success": True,
                    "data": {
                        "id": sid,
                        "status": status,
                        "stream_key": "sk",
                        "paging": {"total_count": 3, "start_offset": n, "end_offset": n},
                    },
                }
                for n, (sid, status) in enumerate(
                    [("a", "LIVE"), ("b", "idle"), ("c", "OFFLINE")], start=1
                )
            ],
            1,
        ),
    ],
    ids=["array-top-level-paging", "object-nested-list-paging-inside", "schema-single-object"],
)
async def test_listing_reads_every_published_shape_across_pages(
    server: aioresponses,
    make_client: MakeClient,
    bodies: list[dict[str, Any]],
    per_page: int,
) -> None:
    """Each lenient listing shape is followed page by page until its paging's total_count."""
    for n, body in enumerate(bodies, start=1):
        server.get(page_url(n, per_page), payload=body)
    server.get(page_url(len(bodies) + 1, per_page), payload=page("never asked"))
    listing = await make_client().list_livestreams(ACCOUNT, APP, per_page=per_page)
    assert [(s.id, s.status) for s in listing.livestreams] == [
        ("a", "LIVE"),
        ("b", "IDLE"),
        ("c", "OFFLINE"),
    ]
    assert listing.pages == len(bodies)
    assert len(sent(server)) == len(bodies)


async def test_listing_keeps_streams_with_a_missing_or_odd_status(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A stream with a null or unexpected status is listed as such; the listing does not fail."""
    body = page("a", "d", status="LIVE", total_count=4)
    body["data"][1:1] = [{"id": "b", "status": None}, {"id": "c", "status": "RE-CONNECTING"}]
    server.get(page_url(1, ASK), payload=body)
    listing = await make_client().list_livestreams(ACCOUNT, APP)
    assert listing.livestreams == (
        Livestream(id="a", status="LIVE"),
        Livestream(id="b", status="UNKNOWN"),
        Livestream(id="c", status="RE-CONNECTING"),
        Livestream(id="d", status="LIVE"),
    )


async def test_listing_that_never_ends_is_a_decode_error(
    server: aioresponses, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing that keeps producing new full pages is cut off at MAX_LISTING_PAGES."""
    monkeypatch.setattr(client_module, "MAX_LISTING_PAGES", 3)
    for n in range(1, 4):
        server.get(page_url(n, 1), payload=page(f"s{n}"))
    error = await fail(make_client().list_livestreams(ACCOUNT, APP, per_page=1))
    assert error.reason == "decode"
    assert len(sent(server)) == 3


# --- not found and failures in 2xx ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "call", "body"),
    [
        (SESSION_URL, active_call, NOT_FOUND),
        (
            SESSION_BY_ID_URL,
            session_call,
            {"success": False, "error": {"code": 404, "message": "Session not found"}},
        ),
        (SESSION_URL, active_call, {"success": False, "error": {}}),
    ],
    ids=["active-session", "session-by-id", "envelope-without-details"],
)
async def test_404_on_active_session_means_not_live(
    server: aioresponses, make_client: MakeClient, url: str, call: Any, body: dict[str, Any]
) -> None:
    """A 404 in RealtimeKit's own envelope from a session endpoint means "no such session"."""
    server.get(url, status=404, payload=body)
    result = await call(make_client())
    assert result == ActiveSession(livestream=None, session=None)
    assert len(sent(server)) == 1


GATEWAY_404: dict[str, Any] = {
    "success": False,
    "errors": [{"code": 7003, "message": "Could not route to /accounts/x"}],
    "messages": [],
    "result": None,
}


@pytest.mark.parametrize(
    ("url", "call", "body", "detail"),
    [
        (SESSION_URL, active_call, "", "body is not JSON"),
        (SESSION_URL, active_call, "not json", "body is not JSON"),
        (SESSION_URL, active_call, "<html><h1>404 Not Found</h1></html>", "body is not JSON"),
        (SESSION_URL, active_call, json.dumps(GATEWAY_404), "Could not route"),
        (
            SESSION_URL,
            active_call,
            json.dumps({"success": False, "error": "Not found"}),
            "Not found",
        ),
        (
            SESSION_URL,
            active_call,
            json.dumps({"error": {"code": 404, "message": "gone"}}),
            "gone (code 404)",
        ),
        (SESSION_BY_ID_URL, session_call, "", "body is not JSON"),
        (SESSION_BY_ID_URL, session_call, "<html>Not Found</html>", "body is not JSON"),
        (SESSION_BY_ID_URL, session_call, json.dumps(GATEWAY_404), "Could not route"),
    ],
    ids=[
        "empty",
        "junk",
        "html-page",
        "gateway-envelope",
        "error-string",
        "without-success-false",
        "session-by-id-empty",
        "session-by-id-html-page",
        "session-by-id-gateway-envelope",
    ],
)
async def test_404_without_realtimekits_envelope_is_an_error(
    server: aioresponses,
    make_client: MakeClient,
    url: str,
    call: Any,
    body: str,
    detail: str,
) -> None:
    """A 404 whose body is not RealtimeKit's error envelope is an http_error, never "not live"."""
    server.get(url, status=404, body=body)
    error = await fail(call(make_client()))
    assert (error.reason, error.status) == ("http_error", 404)
    assert detail in str(error)
    assert not error.transient
    assert len(sent(server)) == 1


async def test_gateway_404_on_active_session_is_an_error(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A 404 in Cloudflare's gateway envelope (bad route) is an error, not "not live"."""
    server.get(SESSION_URL, status=404, payload=GATEWAY_404)
    error = await fail(make_client().active_session(ACCOUNT, APP, STREAM_ID))
    assert (error.reason, error.status) == ("http_error", 404)
    assert "Could not route" in str(error)


async def test_active_session_decodes_a_live_session(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A 200 with the example body yields the LIVE stream and its active session."""
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    result = await make_client().active_session(ACCOUNT, APP, STREAM_ID)
    assert result.livestream is not None
    assert result.livestream.status == "LIVE"
    assert result.session is not None
    assert result.session.active
    assert result.session.ingest_seconds == 60.0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SESSION_BY_ID_EXAMPLE["data"], EXAMPLE_SESSION),
        ({"session": SESSION_BY_ID_EXAMPLE["data"]}, EXAMPLE_SESSION),
        (
            dict(SESSION_BY_ID_EXAMPLE["data"], stopped_time="2023-07-15T07:18:39Z"),
            Session(
                id=SESSION_ID,
                started_time=1689404919.0,
                stopped_time=1689405519.0,
                ingest_seconds=60.0,
                viewer_seconds=60.0,
            ),
        ),
        (None, None),
    ],
    ids=["example", "nested-under-session", "stopped", "data-null"],
)
async def test_session_by_id_decodes_the_session(
    server: aioresponses,
    make_client: MakeClient,
    data: dict[str, Any] | None,
    expected: Session | None,
) -> None:
    """A 200 from the session-by-id endpoint yields that session and no livestream."""
    server.get(SESSION_BY_ID_URL, payload={"success": True, "data": data})
    result = await make_client().session(ACCOUNT, APP, SESSION_ID)
    assert result == ActiveSession(livestream=None, session=expected)
    assert len(sent(server)) == 1


async def test_session_by_id_requests_are_reported_as_livestream_session(
    server: aioresponses, make_client: MakeClient, observer: RecordingObserver
) -> None:
    """Requests for a session by id carry the endpoint label ``livestream_session``."""
    server.get(SESSION_BY_ID_URL, payload=SESSION_BY_ID_EXAMPLE)
    server.get(SESSION_BY_ID_URL, status=404, payload=NOT_FOUND)
    server.get(SESSION_BY_ID_URL, status=500, body="boom", repeat=True)
    client = make_client(retries=0)
    await client.session(ACCOUNT, APP, SESSION_ID)
    await client.session(ACCOUNT, APP, SESSION_ID)
    error = await fail(client.session(ACCOUNT, APP, SESSION_ID))
    assert ENDPOINT_SESSION_BY_ID == error.endpoint == "livestream_session"
    assert observer.requests == [
        ("livestream_session", "200"),
        ("livestream_session", "404"),
        ("livestream_session", "500"),
    ]


async def test_404_on_listing_is_an_http_error(
    server: aioresponses, make_client: MakeClient
) -> None:
    """Only the session endpoint treats 404 as an answer; a missing listing is an error."""
    server.get(
        page_url(1, ASK),
        status=404,
        payload={"success": False, "error": {"code": 404, "message": "App not found"}},
    )
    error = await fail(make_client().list_livestreams(ACCOUNT, APP))
    assert (error.reason, error.status, error.endpoint) == ("http_error", 404, ENDPOINT_LISTING)
    assert "App not found (code 404)" in str(error)
    assert not error.transient
    assert len(sent(server)) == 1


@pytest.mark.parametrize(
    ("url", "call"),
    [
        (page_url(1, ASK), lambda c: c.list_livestreams(ACCOUNT, APP)),
        (SESSION_URL, active_call),
        (SESSION_BY_ID_URL, session_call),
    ],
    ids=["listing", "active-session", "session-by-id"],
)
async def test_200_with_success_false_is_an_http_error(
    server: aioresponses, make_client: MakeClient, url: str, call: Any
) -> None:
    """A 2xx body that says ``success: false`` is a failure and is not retried."""
    server.get(url, payload={"success": False, "error": {"code": 400, "message": "bad app"}})
    error = await fail(call(make_client()))
    assert (error.reason, error.status) == ("http_error", 200)
    assert "bad app" in str(error)
    assert len(sent(server)) == 1


# --- auth and retries -------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_reported_as_auth_and_not_retried(
    server: aioresponses, make_client: MakeClient, clock: FakeClock, status: int
) -> None:
    """401 and 403 (gateway envelope) are ``auth`` errors after exactly one request."""
    server.get(SESSION_URL, status=status, payload=AUTH_ERROR, repeat=True)
    error = await fail(make_client().active_session(ACCOUNT, APP, STREAM_ID))
    assert (error.reason, error.status) == ("auth", status)
    assert "Authentication error (code 10000)" in str(error)
    assert len(sent(server)) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retried_with_jittered_backoff(
    server: aioresponses, make_client: MakeClient, clock: FakeClock, status: int
) -> None:
    """5xx answers are retried after jitter * backoff * 2**attempt, then succeed."""
    server.get(SESSION_URL, status=status, body="upstream trouble")
    server.get(SESSION_URL, status=status, payload={"success": False, "error": {"code": status}})
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    client = make_client(retries=2, backoff=0.5, jitter=FakeJitter(0.5, 0.75))
    result = await client.active_session(ACCOUNT, APP, STREAM_ID, deadline=NOW + 60)
    assert result.session is not None
    assert len(sent(server)) == 3
    assert clock.sleeps == [pytest.approx(0.5 * 0.5 * 1), pytest.approx(0.75 * 0.5 * 2)]


@pytest.mark.parametrize("retries", [0, 1, 2, 4])
async def test_persistent_server_error_fails_after_retries_plus_one_attempts(
    server: aioresponses, make_client: MakeClient, clock: FakeClock, retries: int
) -> None:
    """A 503 that does not go away is an http_error after exactly retries + 1 attempts."""
    server.get(SESSION_URL, status=503, body="unavailable", repeat=True)
    error = await fail(make_client(retries=retries).active_session(ACCOUNT, APP, STREAM_ID))
    assert (error.reason, error.status) == ("http_error", 503)
    assert error.transient
    assert len(sent(server)) == retries + 1
    assert len(clock.sleeps) == retries


@pytest.mark.parametrize(
    ("deadline_in", "attempts"),
    [(1.0, 1), (1.2, 1), (1.3, 2), (60.0, 2)],
    ids=["no-time-left", "just-short", "just-enough", "plenty"],
)
async def test_retry_is_skipped_when_it_could_not_finish_before_the_deadline(
    server: aioresponses,
    make_client: MakeClient,
    clock: FakeClock,
    deadline_in: float,
    attempts: int,
) -> None:
    """A retry is only made if its delay plus the minimum request time fit before the deadline."""
    server.get(SESSION_URL, status=503, body="unavailable")
    server.get(SESSION_URL, status=503, body="unavailable")
    # delay 0.5 * 0.5 = 0.25s, minimum request time 1s: a retry needs 1.25s left
    client = make_client(retries=1, timeout=10.0, backoff=0.5, jitter=FakeJitter(0.5))
    error = await fail(client.active_session(ACCOUNT, APP, STREAM_ID, deadline=NOW + deadline_in))
    assert error.status == 503
    assert len(sent(server)) == attempts
    assert len(clock.sleeps) == attempts - 1


@pytest.mark.parametrize(
    ("exception", "reason", "code"),
    [
        (TimeoutError(), "timeout", "timeout"),
        (aiohttp.ServerTimeoutError("read timeout"), "timeout", "timeout"),
        (aiohttp.ClientConnectionError("connection reset"), "connection", "connection_error"),
        (aiohttp.ServerDisconnectedError(), "connection", "connection_error"),
        (aiohttp.ClientPayloadError("truncated"), "connection", "connection_error"),
    ],
    ids=["timeout", "server-timeout", "connection", "disconnected", "payload"],
)
async def test_transport_failures_have_their_own_reason(
    server: aioresponses,
    make_client: MakeClient,
    observer: RecordingObserver,
    exception: Exception,
    reason: str,
    code: str,
) -> None:
    """Timeouts are ``timeout`` and other transport failures ``connection``, both transient."""
    server.get(SESSION_URL, exception=exception)
    error = await fail(make_client(retries=0).active_session(ACCOUNT, APP, STREAM_ID))
    assert error.reason == reason
    assert error.status is None
    assert error.transient
    assert observer.requests == [(ENDPOINT_SESSION, code)]


@pytest.mark.parametrize(
    "exception",
    [TimeoutError(), aiohttp.ClientConnectionError("reset")],
    ids=["timeout", "connection"],
)
async def test_transport_failures_are_retried(
    server: aioresponses, make_client: MakeClient, clock: FakeClock, exception: Exception
) -> None:
    """A timeout or connection failure is retried and the retry's answer is used."""
    server.get(SESSION_URL, exception=exception)
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    result = await make_client(retries=1).active_session(ACCOUNT, APP, STREAM_ID)
    assert result.session is not None
    assert len(sent(server)) == 2
    assert clock.sleeps == [pytest.approx(0.25)]


# --- throttling -------------------------------------------------------------------------


async def test_429_pauses_the_budget_and_the_next_call_fails_fast(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """A 429 is rate_limited, not retried, pauses the whole budget for Retry-After seconds."""
    server.get(SESSION_URL, status=429, payload=THROTTLED, headers={"Retry-After": "30"})
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    client = make_client()
    error = await fail(client.active_session(ACCOUNT, APP, STREAM_ID, deadline=NOW + 20))
    assert (error.reason, error.status, error.retry_after) == ("rate_limited", 429, 30.0)
    assert not error.transient
    assert "971" in str(error)
    assert client.budget.paused_until == NOW + 30
    assert len(sent(server)) == 1

    again = await fail(client.active_session(ACCOUNT, APP, STREAM_ID, deadline=NOW + 20))
    assert again.reason == "rate_limited"
    assert again.status is None
    assert len(sent(server)) == 1  # nothing was sent
    assert clock.sleeps == []


async def test_a_call_without_deadline_waits_out_the_pause(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """Without a deadline, the call after a 429 waits until the pause ends, then sends."""
    server.get(SESSION_URL, status=429, payload=THROTTLED, headers={"Retry-After": "30"})
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    client = make_client()
    await fail(client.active_session(ACCOUNT, APP, STREAM_ID))
    result = await client.active_session(ACCOUNT, APP, STREAM_ID)
    assert result.session is not None
    assert clock.sleeps == [30.0]
    assert len(sent(server)) == 2


@pytest.mark.parametrize(
    ("headers", "wait", "paused"),
    [
        ({"Retry-After": "30"}, 30.0, 30.0),
        ({"Retry-After": "0"}, 0.0, 0.0),
        ({"Retry-After": "7", "Ratelimit": '"default";r=3;t=45'}, 7.0, 7.0),
        ({"Ratelimit": '"default";r=3;t=45'}, 45.0, 45.0),
        ({"Retry-After": "soon", "Ratelimit": '"default";r=3;t=45'}, 45.0, 45.0),
        ({}, 60.0, 60.0),
        ({"Retry-After": "soon"}, 60.0, 60.0),
        ({"Retry-After": "7", "Ratelimit": '"default";r=0;t=45'}, 7.0, 45.0),
    ],
    ids=[
        "retry-after",
        "retry-after-zero",
        "retry-after-beats-ratelimit-t",
        "ratelimit-t",
        "junk-retry-after-uses-ratelimit-t",
        "default",
        "junk-retry-after-default",
        "exhausted-ratelimit-keeps-the-longer-pause",
    ],
)
async def test_429_pause_length_comes_from_the_headers(
    server: aioresponses,
    make_client: MakeClient,
    headers: dict[str, str],
    wait: float,
    paused: float,
) -> None:
    """The pause is Retry-After, else the Ratelimit t value, else 60 seconds."""
    server.get(SESSION_URL, status=429, payload=THROTTLED, headers=headers)
    client = make_client()
    error = await fail(client.active_session(ACCOUNT, APP, STREAM_ID))
    assert error.reason == "rate_limited"
    assert error.retry_after == wait
    assert client.budget.paused_until == NOW + paused
    assert len(sent(server)) == 1


async def test_429_retry_after_as_http_date(server: aioresponses, make_client: MakeClient) -> None:
    """Retry-After given as an HTTP date pauses until that (wall-clock) time."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True)  # whole seconds
    server.get(SESSION_URL, status=429, payload=THROTTLED, headers={"Retry-After": when})
    client = make_client()
    error = await fail(client.active_session(ACCOUNT, APP, STREAM_ID))
    assert error.reason == "rate_limited"
    assert error.retry_after is not None
    assert 115.0 < error.retry_after <= 120.0
    assert client.budget.paused_until == pytest.approx(NOW + error.retry_after)


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a local time zone far from UTC, so a date read as local time shows."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 90.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, 90.0),
        ({"Retry-After": "Wed, 21 Oct 2015 09:28:00 +0200"}, 90.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:00:00 GMT"}, 0.0),
        ({"Retry-After": " 12 "}, 12.0),
        ({"retry-after": "12"}, 12.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "86400"}, 900.0),
    ],
    ids=[
        "gmt",
        "minus-zero-zone",
        "offset",
        "past",
        "padded",
        "lower-case-name",
        "fraction",
        "capped",
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    headers: dict[str, str], wait: float, local_time_not_utc: None
) -> None:
    """HTTP dates are read against the given wall-clock time, in any zone; the past is 0."""
    now = 1445412390.0  # Wed, 21 Oct 2015 07:26:30 GMT
    assert client_module.retry_after(CIMultiDict(headers), now=now) == pytest.approx(wait)


@pytest.mark.parametrize(
    ("ratelimit", "remaining", "paused_for"),
    [
        ('"default";r=0;t=42', [0], 42.0),
        ('"default";r=0', [0], 60.0),
        ('"default";r=17;t=42', [17], None),
        ('"default";t=42', [], None),
    ],
    ids=["exhausted", "exhausted-without-t", "some-left", "no-r"],
)
async def test_ratelimit_header_reports_remaining_and_pauses_at_zero(
    server: aioresponses,
    make_client: MakeClient,
    observer: RecordingObserver,
    ratelimit: str,
    remaining: list[int],
    paused_for: float | None,
) -> None:
    """The observer gets Ratelimit's r; r=0 pauses the budget for t seconds (default 60)."""
    server.get(SESSION_URL, payload=SESSION_EXAMPLE, headers={"Ratelimit": ratelimit})
    client = make_client()
    result = await client.active_session(ACCOUNT, APP, STREAM_ID)
    assert result.session is not None  # the answer itself is still good
    assert observer.remaining == remaining
    if paused_for is None:
        assert client.budget.available() > 0
    else:
        assert client.budget.paused_until == NOW + paused_for


async def test_a_short_budget_stretches_the_cycle_instead_of_failing(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """A request the budget cannot grant before the deadline waits for its grant and is
    sent; the cycle's deadline moves back by the wait, so the request gets its full time."""
    server.get(SESSION_URL, payload=SESSION_EXAMPLE, repeat=True)
    budget = RequestBudget(requests=1, window=300.0, clock=clock, sleep=clock.sleep)
    client = make_client(budget=budget)
    deadline = CycleDeadline(NOW + 10, clock)
    await client.active_session(ACCOUNT, APP, STREAM_ID, deadline=deadline)
    assert deadline.stretched == 0.0 and not deadline.budget_bound
    await client.active_session(ACCOUNT, APP, STREAM_ID, deadline=deadline)
    assert len(sent(server)) == 2
    assert clock.sleeps == [300.0]
    assert deadline.at == NOW + 310 and deadline.stretched == 300.0 and deadline.budget_bound


async def test_requests_queued_behind_a_429_are_not_sent(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """A 429 pauses requests already waiting for a connection slot: they fail unsent."""
    arrivals = SlowServer(clock)
    server.get(
        SESSION_URL,
        status=429,
        payload=THROTTLED,
        headers={"Retry-After": "300"},
        callback=arrivals.respond,
    )
    server.get(SESSION_URL, payload=SESSION_EXAMPLE, callback=arrivals.respond, repeat=True)
    client = make_client(max_concurrency=1)
    results = await asyncio.gather(
        *(client.active_session(ACCOUNT, APP, STREAM_ID, deadline=NOW + 60) for _ in range(5)),
        return_exceptions=True,
    )
    assert len(sent(server)) == 1
    assert arrivals.arrivals == [NOW]
    assert all(isinstance(r, ApiError) for r in results)
    errors = [r for r in results if isinstance(r, ApiError)]
    assert [(e.reason, e.status) for e in errors] == [("rate_limited", 429)] + [
        ("rate_limited", None)
    ] * 4
    assert client.budget.paused_until == NOW + 300
    assert clock.sleeps == []


async def test_budget_grants_requests_when_they_are_sent(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """The budget grants a request only when it can be sent, so its log holds the send times."""
    slow = SlowServer(clock, seconds=3.0)
    server.get(SESSION_URL, payload=SESSION_EXAMPLE, callback=slow.respond, repeat=True)
    budget = RecordingBudget(clock, requests=2, window=10.0)
    client = make_client(budget=budget, max_concurrency=1)
    results = await asyncio.gather(
        *(client.active_session(ACCOUNT, APP, STREAM_ID) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, ActiveSession) for r in results)
    # each answer takes 3 s; the third waits until the first grant leaves the 10 s window
    assert slow.arrivals == [NOW, NOW + 3.0, NOW + 10.0]
    assert budget.grants == slow.arrivals
    assert len(sent(server)) == 3


# --- observer ---------------------------------------------------------------------------


async def test_observer_sees_every_request_with_its_outcome(
    server: aioresponses, make_client: MakeClient, observer: RecordingObserver
) -> None:
    """Each request sent is reported once, as (endpoint, status code or failure kind)."""
    server.get(page_url(1, ASK), payload=page("a"))
    server.get(page_url(2, 1), payload=page())
    server.get(SESSION_URL, status=404, payload=NOT_FOUND)
    server.get(SESSION_URL, status=503, body="x")
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    server.get(SESSION_URL, exception=TimeoutError())
    server.get(SESSION_URL, exception=aiohttp.ClientConnectionError("reset"))
    server.get(SESSION_BY_ID_URL, exception=TimeoutError())
    server.get(SESSION_BY_ID_URL, payload=SESSION_BY_ID_EXAMPLE)
    server.get(f"{LIVESTREAM_URL}?page_no=1&per_page=1", status=404, payload=NOT_FOUND)
    server.get(WEBHOOKS_URL, payload={"success": True, "data": []})
    server.delete(HOOK_URL, status=404, payload=NOT_FOUND)
    server.get(ANALYTICS_URL, payload=ANALYTICS_EXAMPLE)
    server.get(DAYS_URL, status=403, payload=AUTH_ERROR)
    client = make_client(retries=1)
    await client.list_livestreams(ACCOUNT, APP)  # page 1, then an empty page 2
    await client.active_session(ACCOUNT, APP, STREAM_ID)  # 404
    await client.active_session(ACCOUNT, APP, STREAM_ID)  # 503, retried: 200
    await fail(client.active_session(ACCOUNT, APP, STREAM_ID))  # timeout, retried: connection
    await client.session(ACCOUNT, APP, SESSION_ID)  # timeout, retried: 200
    await client.livestream(ACCOUNT, APP, STREAM_ID)
    await client.list_webhooks(ACCOUNT, APP)
    await client.delete_webhook(ACCOUNT, APP, HOOK_ID)
    await client.livestream_analytics(ACCOUNT, APP)
    await fail(client.livestream_analytics_days(ACCOUNT, APP, start=DAYS_START, end=DAYS_END))
    assert observer.requests == [
        (ENDPOINT_LISTING, "200"),
        (ENDPOINT_LISTING, "200"),
        (ENDPOINT_SESSION, "404"),
        (ENDPOINT_SESSION, "503"),
        (ENDPOINT_SESSION, "200"),
        (ENDPOINT_SESSION, "timeout"),
        (ENDPOINT_SESSION, "connection_error"),
        (ENDPOINT_SESSION_BY_ID, "timeout"),
        (ENDPOINT_SESSION_BY_ID, "200"),
        (ENDPOINT_LIVESTREAM, "404"),
        (ENDPOINT_WEBHOOKS, "200"),
        (ENDPOINT_WEBHOOK, "404"),
        (ENDPOINT_ANALYTICS, "200"),
        (ENDPOINT_ANALYTICS_DAYS, "403"),
    ]
    # Every endpoint the client names is one it calls: a name added without its call (or a
    # call reported under another name) shows here.
    assert {endpoint for endpoint, _ in observer.requests} == set(client_module.ENDPOINTS)


# --- bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "call", "body"),
    [
        (SESSION_URL, lambda c: c.active_session(ACCOUNT, APP, STREAM_ID), "<html>oops</html>"),
        (
            SESSION_URL,
            lambda c: c.active_session(ACCOUNT, APP, STREAM_ID),
            json.dumps(SESSION_EXAMPLE)[:-10],
        ),
        (page_url(1, ASK), lambda c: c.list_livestreams(ACCOUNT, APP), "not json"),
        (page_url(1, ASK), lambda c: c.list_livestreams(ACCOUNT, APP), '{"data": [{"id": "a"'),
        (page_url(1, ASK), lambda c: c.list_livestreams(ACCOUNT, APP), "[]"),
        (page_url(1, ASK), lambda c: c.list_livestreams(ACCOUNT, APP), '{"success": true}'),
        (
            page_url(1, ASK),
            lambda c: c.list_livestreams(ACCOUNT, APP),
            '{"success": true, "data": {"items": [{"id": "a", "status": "LIVE"}]}}',
        ),
        (SESSION_BY_ID_URL, session_call, "<html>oops</html>"),
        (SESSION_BY_ID_URL, session_call, '{"success": true, "data": "running"}'),
    ],
    ids=[
        "session-html",
        "session-truncated",
        "listing-junk",
        "listing-truncated",
        "listing-not-object",
        "listing-without-data",
        "listing-list-under-a-guessed-key",
        "session-by-id-html",
        "session-by-id-data-string",
    ],
)
async def test_unreadable_2xx_body_is_a_decode_error(
    server: aioresponses, make_client: MakeClient, url: str, call: Any, body: str
) -> None:
    """A 200 whose body is not JSON, is cut short, or has no usable shape is ``decode``."""
    server.get(url, body=body, repeat=True)
    error = await fail(call(make_client()))
    assert error.reason == "decode"
    assert not error.transient
    assert len(sent(server)) == 1


@pytest.mark.parametrize(
    "declared", [True, False], ids=["content-length", "streamed-without-length"]
)
async def test_body_over_the_size_limit_is_a_decode_error(
    server: aioresponses,
    make_client: MakeClient,
    observer: RecordingObserver,
    declared: bool,
) -> None:
    """A body larger than max_body_bytes is refused (declared or counted while reading)."""
    body = json.dumps(SESSION_EXAMPLE)
    headers = {"Content-Length": str(len(body))} if declared else {}
    server.get(SESSION_URL, body=body, headers=headers, repeat=True)
    error = await fail(make_client(max_body_bytes=64).active_session(ACCOUNT, APP, STREAM_ID))
    assert (error.reason, error.status) == ("decode", 200)
    assert "limit" in str(error)
    # a declared length is refused before reading; otherwise the count while reading stops it
    assert (f"{len(body)} bytes" in str(error)) is declared
    assert len(sent(server)) == 1
    assert observer.requests == [(ENDPOINT_SESSION, "200")]


async def test_body_at_the_size_limit_is_read(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A body of exactly max_body_bytes is still accepted."""
    body = json.dumps(SESSION_EXAMPLE)
    server.get(SESSION_URL, body=body)
    result = await make_client(max_body_bytes=len(body)).active_session(ACCOUNT, APP, STREAM_ID)
    assert result.session is not None


# --- the token --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        {"status": 401, "payload": AUTH_ERROR},
        {"status": 403, "payload": AUTH_ERROR},
        {"status": 429, "payload": THROTTLED, "headers": {"Retry-After": "30"}},
        {"status": 500, "body": "boom"},
        {"status": 200, "body": "not json"},
        {"status": 200, "payload": {"success": False, "error": {"message": "no"}}},
        {"exception": TimeoutError()},
        {"exception": aiohttp.ClientConnectionError("reset")},
    ],
    ids=["401", "403", "429", "500", "decode", "success-false", "timeout", "connection"],
)
async def test_token_never_appears_in_error_text_or_client_repr(
    server: aioresponses, make_client: MakeClient, response: dict[str, Any]
) -> None:
    """Neither an ApiError (str, repr, args) nor the client's repr ever shows the token."""
    server.get(page_url(1, ASK), repeat=True, **response)
    client = make_client(retries=0)
    error = await fail(client.list_livestreams(ACCOUNT, APP))
    texts = [str(error), repr(error), *map(str, error.args), repr(client), str(client)]
    cause = error.__cause__ or error.__context__
    if cause is not None and not error.__suppress_context__:
        texts.append(repr(cause))
    for text in texts:
        assert TOKEN not in text
    assert len(sent(server)) == 1


async def test_no_request_starts_with_less_than_the_minimum_time_left(
    server: aioresponses, make_client: MakeClient
) -> None:
    """Too near the deadline nothing is sent (it could only time out) and no budget is spent."""
    client = make_client(min_request_time=1.0)
    error = await fail(client.active_session(ACCOUNT, APP, STREAM_ID, deadline=NOW + 0.5))
    assert error.reason == "timeout" and "ran out of time" in str(error)
    assert sent(server) == [] and client.budget.available() == 1200


async def test_a_pause_past_the_last_start_is_rate_limited(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """A pause (429, Ratelimit r=0) that ends after deadline minus the minimum time refuses
    the request at once: unlike a full window, a pause does not stretch the cycle."""
    server.get(SESSION_URL, payload=SESSION_EXAMPLE)
    client = make_client(min_request_time=1.0)
    client.budget.pause_for(300.0)
    deadline = CycleDeadline(NOW + 300.5, clock)
    error = await fail(client.active_session(ACCOUNT, APP, STREAM_ID, deadline=deadline))
    assert error.reason == "rate_limited" and not sent(server)
    assert clock.sleeps == [] and deadline.stretched == 0.0


async def test_requests_waiting_for_a_connection_slot_go_by_priority(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """With every connection slot taken, queued requests get one listing first, then
    sessions of possibly live streams, then the rest, and an app's analytics last,
    whatever order they were asked in."""
    arrivals: list[str] = []
    slow = SlowServer(clock)

    async def note(url: URL, **kwargs: Any) -> None:
        arrivals.append(url.path.rsplit("/", 1)[-1])
        await slow.respond(url, **kwargs)

    server.get(SESSION_URL, payload=SESSION_EXAMPLE, callback=note, repeat=True)
    server.get(SESSION_BY_ID_URL, payload=SESSION_BY_ID_EXAMPLE, callback=note, repeat=True)
    server.get(page_url(1, ASK), payload=page(), callback=note, repeat=True)
    server.get(ANALYTICS_URL, payload=ANALYTICS_EXAMPLE, callback=note)
    server.get(DAYS_URL, payload=DAYS_EXAMPLE, callback=note)
    client = make_client(max_concurrency=1)
    await asyncio.gather(
        client.session(ACCOUNT, APP, SESSION_ID),  # takes the only slot
        client.livestream_analytics(ACCOUNT, APP),
        client.session(ACCOUNT, APP, SESSION_ID),
        client.active_session(ACCOUNT, APP, STREAM_ID),
        client.livestream_analytics_days(ACCOUNT, APP, start=DAYS_START, end=DAYS_END),
        client.list_livestreams(ACCOUNT, APP),
        client.active_session(ACCOUNT, APP, STREAM_ID),
    )
    session_id, active = SESSION_ID, "active-livestream-session"
    assert arrivals == [
        *(session_id, "livestreams", active, active, session_id),
        *("overall", "daywise"),
    ]


async def test_requests_waiting_for_the_budget_go_by_priority(
    server: aioresponses, make_client: MakeClient, clock: FakeClock
) -> None:
    """When the budget is short, queued requests are sent listing first, then sessions of
    possibly live streams, then the rest, whatever order they were asked in."""
    arrivals: list[str] = []

    def note(url: URL, **kwargs: Any) -> None:
        arrivals.append(url.path.rsplit("/", 1)[-1])

    server.get(SESSION_URL, payload=SESSION_EXAMPLE, callback=note, repeat=True)
    server.get(SESSION_BY_ID_URL, payload=SESSION_BY_ID_EXAMPLE, callback=note, repeat=True)
    server.get(page_url(1, ASK), payload=page(), callback=note, repeat=True)

    async def sleep(seconds: float) -> None:  # lets every request queue before time moves
        await asyncio.sleep(0)
        clock.now += seconds

    budget = RequestBudget(requests=1, window=10.0, clock=clock, sleep=sleep)
    client = make_client(budget=budget, max_concurrency=8)
    await client.session(ACCOUNT, APP, SESSION_ID)  # spends the window
    await asyncio.gather(
        client.session(ACCOUNT, APP, SESSION_ID),
        client.active_session(ACCOUNT, APP, STREAM_ID),
        client.list_livestreams(ACCOUNT, APP),
        client.session(ACCOUNT, APP, SESSION_ID),
        client.active_session(ACCOUNT, APP, STREAM_ID),
    )
    session_id, active = SESSION_ID, "active-livestream-session"
    assert arrivals == [session_id, "livestreams", active, active, session_id, session_id]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HTTPS_PROXY": "http://proxy.test:3128"}, "http://proxy.test:3128"),
        ({"HTTPS_PROXY": "proxy.test:3128"}, "http://proxy.test:3128"),
        ({"https_proxy": ""}, None),
        ({"HTTP_PROXY": "http://proxy.test:3128"}, None),
        ({"HTTPS_PROXY": "http://proxy.test:3128", "NO_PROXY": "api.example.test"}, None),
    ],
    ids=["https", "no-scheme", "empty", "http-only", "no-proxy"],
)
def test_proxy_for_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str | None
) -> None:
    """The API's proxy comes from the environment like curl's: scheme optional, NO_PROXY obeyed."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert client_module.proxy_for(BASE) == expected


async def test_listing_ignores_an_end_offset_counted_from_the_asked_per_page(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A server that caps pages at 100 but reports end_offset as if it had given the 1000
    asked for must not end the listing after its first page."""
    ids = [f"s{i:03d}" for i in range(300)]

    def body(page_no: int, asked: int) -> dict[str, Any]:
        start = (page_no - 1) * asked
        return page(
            *ids[start : start + min(asked, 100)],
            total_count=300,
            start_offset=start + 1,
            end_offset=min(start + asked, 300),
        )

    server.get(page_url(1, ASK), payload=body(1, ASK))
    for n in (2, 3):
        server.get(page_url(n, 100), payload=body(n, 100))
    listing = await make_client().list_livestreams(ACCOUNT, APP)
    assert [s.id for s in listing.livestreams] == ids
    assert listing.pages == 3


async def test_a_refused_large_page_falls_back_to_100_and_keeps_to_it(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A 400 for per_page=1000 is answered by asking for 100; that being answered, later
    listings ask for 100 from the start."""
    client = make_client()
    server.get(page_url(1, ASK), status=400, payload=BAD_REQUEST)
    server.get(page_url(1, 100), payload=page("a", total_count=1), repeat=True)
    assert [s.id for s in (await client.list_livestreams(ACCOUNT, APP)).livestreams] == ["a"]
    await client.list_livestreams(ACCOUNT, APP)
    assert sorted(url.query["per_page"] for url, _ in sent(server)) == ["100", "100", str(ASK)]


async def test_a_400_that_is_not_about_the_page_size_changes_nothing(
    server: aioresponses, make_client: MakeClient
) -> None:
    """When per_page=100 is refused too, the 400 was about something else: the listing
    fails, and the next one asks for large pages again."""
    client = make_client()
    server.get(page_url(1, ASK), status=400, payload=BAD_REQUEST)
    server.get(page_url(1, 100), status=400, payload=BAD_REQUEST)
    error = await fail(client.list_livestreams(ACCOUNT, APP))
    assert error.status == 400
    server.get(page_url(1, ASK), payload=page("a", total_count=1))
    await client.list_livestreams(ACCOUNT, APP)
    assert sorted(url.query["per_page"] for url, _ in sent(server)) == ["100", str(ASK), str(ASK)]


class _Sent(Exception):
    """Raised where aiohttp starts a request, carrying the URL it would send."""

    def __init__(self, url: URL) -> None:
        super().__init__(str(url))
        self.url = url


async def _url_sent(call: str, text: str) -> URL | None:
    """The URL the client's ``call`` for id ``text`` would send, as aiohttp builds it
    (through yarl.URL); ``None`` if the client refuses the id."""

    async def stop(
        session: object, context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        raise _Sent(params.url)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(stop)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = RealtimeKitClient(
            session=session,
            base_url=BASE,
            token=Secret(TOKEN),
            budget=RequestBudget(requests=1000, window=300),
            retries=0,
        )
        method = getattr(client, call)
        try:
            await method(ACCOUNT, APP, text)
        except _Sent as sent:
            return sent.url
        except ValueError:
            return None
    raise AssertionError("no request was started")


# Where the id is among the URL's raw parts ("/", "client", "v4", "accounts", ...).
ID_PART = {"livestream": (9, 10), "active_session": (9, 11), "session": (10, 11)}
ODD_IDS = (".", "..", "", "%2E", "%2e%2E", ".%2E", "...", "./", "a/..", "/", "?x#y", "%", "\\..")


@settings(max_examples=300, deadline=None)
@given(
    text=st.sampled_from(ODD_IDS) | st.text(st.characters(codec="utf-8"), max_size=30),
    call=st.sampled_from(sorted(ID_PART)),
)
def test_every_addressable_id_is_exactly_one_segment_of_its_url(text: str, call: str) -> None:
    """Any id is either not addressable, and refused by the client, or exactly one segment
    of the URL aiohttp sends, which decodes back to the id."""
    url = asyncio.run(_url_sent(call, text))
    if not addressable(text):
        assert url is None
        return
    assert url is not None
    index, count = ID_PART[call]
    assert len(url.raw_parts) == count, url
    assert urllib.parse.unquote(url.raw_parts[index]) == text


async def test_a_part_of_the_listing_counts_only_its_own_pages(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A part read from page 2 on, cut by max_entries or by max_pages, says how many pages
    it read itself (so that a pass knows where to go on), and how many entries are left."""
    server.get(page_url(2, 2), payload=page("c", "d", total_count=6), repeat=True)
    server.get(page_url(3, 2), payload=page("e", "f", total_count=6), repeat=True)
    client = make_client()
    by_entries = await client.list_livestreams(
        ACCOUNT, APP, first_page=2, per_page=2, max_entries=2
    )
    by_pages = await client.list_livestreams(ACCOUNT, APP, first_page=2, per_page=2, max_pages=1)
    for part in (by_entries, by_pages):
        assert [s.id for s in part.livestreams] == ["c", "d"]
        assert (part.pages, part.complete, part.unread, part.per_page) == (1, False, 2, 2)
    rest = await client.list_livestreams(ACCOUNT, APP, first_page=3, per_page=2)
    assert ([s.id for s in rest.livestreams], rest.pages, rest.complete) == (["e", "f"], 1, True)


# --- webhooks ---------------------------------------------------------------------------


def sent_with_method(server: aioresponses) -> list[tuple[str, str, dict[str, Any]]]:
    """Every request the mock received, as (method, URL, request kwargs)."""
    return [
        (method, str(url), call.kwargs)
        for (method, url), calls in server.requests.items()
        for call in calls
    ]


async def test_webhook_calls_send_their_method_path_and_json_body(
    server: aioresponses, make_client: MakeClient
) -> None:
    """list is a GET, add a POST of name, url, events and enabled, edit a PATCH of only the
    fields given, delete a DELETE; each under the app's path, with the bearer token."""
    server.get(WEBHOOKS_URL, payload={"success": True, "data": [HOOK]})
    server.post(WEBHOOKS_URL, status=201, payload={"success": True, "data": HOOK})
    server.patch(HOOK_URL, payload={"success": True, "data": {**HOOK, "enabled": False}})
    server.delete(HOOK_URL, payload={"success": True, "data": HOOK})
    client = make_client()
    assert await client.list_webhooks(ACCOUNT, APP) == (HOOK_DECODED,)
    added = await client.add_webhook(
        ACCOUNT, APP, name="n", url=HOOK["url"], events=("livestreaming.statusUpdate",)
    )
    assert added == HOOK_DECODED
    edited = await client.edit_webhook(ACCOUNT, APP, HOOK_ID, enabled=False)
    assert edited.enabled is False
    await client.delete_webhook(ACCOUNT, APP, HOOK_ID)  # done: no error
    calls = sent_with_method(server)
    assert [(method, url) for method, url, _ in calls] == [
        ("GET", WEBHOOKS_URL),
        ("POST", WEBHOOKS_URL),
        ("PATCH", HOOK_URL),
        ("DELETE", HOOK_URL),
    ]
    assert [kwargs["json"] for _, _, kwargs in calls] == [
        None,
        {
            "name": "n",
            "url": HOOK["url"],
            "events": ["livestreaming.statusUpdate"],
            "enabled": True,
        },
        {"enabled": False},
        None,
    ]
    for _, _, kwargs in calls:
        assert kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
        assert kwargs["allow_redirects"] is False


async def test_edit_sends_events_and_enabled_together(
    server: aioresponses, make_client: MakeClient
) -> None:
    """Events are sent as a list, next to the other fields given."""
    server.patch(HOOK_URL, payload={"success": True, "data": HOOK})
    await make_client().edit_webhook(
        ACCOUNT,
        APP,
        HOOK_ID,
        events=("meeting.started", "livestreaming.statusUpdate"),
        enabled=True,
    )
    [(_, _, kwargs)] = sent_with_method(server)
    assert kwargs["json"] == {
        "enabled": True,
        "events": ["meeting.started", "livestreaming.statusUpdate"],
    }


async def test_edit_without_any_field_is_refused_before_sending(
    server: aioresponses, make_client: MakeClient
) -> None:
    """An edit that would change nothing is the caller's bug: ValueError, nothing sent."""
    with pytest.raises(ValueError, match="at least one field"):
        await make_client().edit_webhook(ACCOUNT, APP, HOOK_ID)
    assert sent_with_method(server) == []


@pytest.mark.parametrize(
    "response",
    [
        {"status": 503, "payload": {"success": False, "error": {"code": 503}}},
        {"status": 502, "body": "bad gateway"},
        {"exception": TimeoutError()},
        {"exception": aiohttp.ClientConnectionError("reset")},
    ],
    ids=["503", "502", "timeout", "connection"],
)
async def test_a_post_is_sent_once_whatever_goes_wrong(
    server: aioresponses, make_client: MakeClient, clock: FakeClock, response: dict[str, Any]
) -> None:
    """A POST that failed in a way that is retried for a GET is not sent again: it may
    have created the webhook all the same."""
    server.post(WEBHOOKS_URL, repeat=True, **response)
    error = await fail(
        make_client(retries=2).add_webhook(ACCOUNT, APP, name="n", url="https://x", events=())
    )
    assert error.transient and error.endpoint == ENDPOINT_WEBHOOKS
    assert len(sent_with_method(server)) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_get_patch_and_delete_are_retried_on_a_503(
    server: aioresponses, make_client: MakeClient, clock: FakeClock, method: str
) -> None:
    """A 503 to a webhook GET, PATCH or DELETE is retried, as the livestream GETs are."""
    url = WEBHOOKS_URL if method == "GET" else HOOK_URL
    data: Any = [HOOK] if method == "GET" else HOOK
    server.add(url, method, status=503, body="unavailable")
    server.add(url, method, payload={"success": True, "data": data})
    client = make_client(retries=2)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "GET": lambda: client.list_webhooks(ACCOUNT, APP),
        "PATCH": lambda: client.edit_webhook(ACCOUNT, APP, HOOK_ID, enabled=True),
        "DELETE": lambda: client.delete_webhook(ACCOUNT, APP, HOOK_ID),
    }
    await calls[method]()
    assert len(sent_with_method(server)) == 2
    assert len(clock.sleeps) == 1


async def test_deleting_a_missing_webhook_is_done_but_a_gateway_404_is_an_error(
    server: aioresponses, make_client: MakeClient
) -> None:
    """RealtimeKit's own 404 to a DELETE means the webhook is gone already; a 404 in the
    gateway's envelope (a wrong route) is an error, as for the livestream calls."""
    server.delete(HOOK_URL, status=404, payload=NOT_FOUND)
    server.delete(HOOK_URL, status=404, payload={**AUTH_ERROR, "errors": [{"code": 7003}]})
    client = make_client()
    await client.delete_webhook(ACCOUNT, APP, HOOK_ID)  # done: no error
    error = await fail(client.delete_webhook(ACCOUNT, APP, HOOK_ID))
    assert (error.reason, error.status, error.endpoint) == ("http_error", 404, ENDPOINT_WEBHOOK)


async def test_a_delete_answered_without_a_body_is_done(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A 204 (or a 200 with an empty body) to a DELETE is success, not a decode error."""
    server.delete(HOOK_URL, status=204, body="")
    server.delete(HOOK_URL, status=200, body="")
    client = make_client()
    await client.delete_webhook(ACCOUNT, APP, HOOK_ID)
    await client.delete_webhook(ACCOUNT, APP, HOOK_ID)


async def test_an_edit_of_a_missing_webhook_is_a_service_http_error(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A 404 to a PATCH is an error (there is nothing to edit), marked as the service's."""
    server.patch(HOOK_URL, status=404, payload=NOT_FOUND)
    error = await fail(make_client().edit_webhook(ACCOUNT, APP, HOOK_ID, enabled=True))
    assert (error.reason, error.status, error.service) == ("http_error", 404, True)


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("GET", '{"success": true, "data": "none"}'),
        ("GET", "<html></html>"),
        ("POST", '{"success": true, "data": {"name": "no id"}}'),
        ("POST", '{"success": true}'),
    ],
    ids=["list-data-string", "list-html", "created-without-id", "created-without-data"],
)
async def test_unreadable_webhook_bodies_are_decode_errors(
    server: aioresponses, make_client: MakeClient, method: str, body: str
) -> None:
    """A 2xx webhook body without a usable shape is ``decode``, never a silent empty list."""
    status = 201 if method == "POST" else 200
    server.add(WEBHOOKS_URL, method, status=status, body=body)
    client = make_client()
    call = (
        client.list_webhooks(ACCOUNT, APP)
        if method == "GET"
        else client.add_webhook(ACCOUNT, APP, name="n", url="https://x", events=())
    )
    assert (await fail(call)).reason == "decode"


async def test_webhook_fields_quoting_the_token_are_withheld(
    server: aioresponses, make_client: MakeClient
) -> None:
    """A webhook whose name, URL or event quotes the token (a hostile API) loses those
    fields before anyone can print them."""
    hostile = {
        **HOOK,
        "name": f"n {TOKEN}",
        "url": f"https://x.example/?t={TOKEN.upper()}",
        "events": ["livestreaming.statusUpdate", TOKEN],
    }
    server.get(WEBHOOKS_URL, payload={"success": True, "data": [hostile, HOOK]})
    hooks = await make_client().list_webhooks(ACCOUNT, APP)
    assert hooks[1] == HOOK_DECODED
    assert TOKEN.casefold() not in repr(hooks).casefold()
    assert hooks[0].name is None
    assert hooks[0].url == client_module.WITHHELD
    assert hooks[0].events == ("livestreaming.statusUpdate", client_module.WITHHELD)


async def test_a_push_request_does_not_wait_behind_slots_held_for_the_budget(
    server: aioresponses, make_client: MakeClient
) -> None:
    """Requests wait for the budget while they hold their connection slot: with every
    slot held that way, a webhook's stop lookup (PRIORITY_PUSH) still goes out at once,
    on a slot of its own and the budget's kept share."""
    never = asyncio.Event()

    async def stuck(seconds: float) -> None:
        await never.wait()  # the window never moves in this test

    budget = RequestBudget(requests=2, window=300.0, sleep=stuck)
    budget.keep_share(0.5)  # one request kept for negative priorities
    api = make_client(budget=budget, max_concurrency=1)
    server.get(SESSION_URL, status=404, payload=NOT_FOUND, repeat=True)
    server.get(f"{LIVESTREAM_URL}?page_no=1&per_page=1", status=404, payload=NOT_FOUND)
    await api.active_session(ACCOUNT, APP, STREAM_ID)  # the window's one ordinary grant
    holder = asyncio.ensure_future(api.active_session(ACCOUNT, APP, STREAM_ID))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not holder.done()  # holds the only shared slot, waiting for the window
    found = await asyncio.wait_for(
        api.livestream(ACCOUNT, APP, STREAM_ID, priority=client_module.PRIORITY_PUSH), 5
    )
    assert found is None  # answered (404: no such livestream), not left waiting
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder


# --- analytics ----------------------------------------------------------------------------


def overall_call(client: RealtimeKitClient) -> Any:
    return client.livestream_analytics(ACCOUNT, APP)


def days_call(client: RealtimeKitClient) -> Any:
    return client.livestream_analytics_days(ACCOUNT, APP, start=DAYS_START, end=DAYS_END)


ANALYTICS_CALLS = [
    pytest.param(ANALYTICS_URL, overall_call, ENDPOINT_ANALYTICS, id="overall"),
    pytest.param(DAYS_URL, days_call, ENDPOINT_ANALYTICS_DAYS, id="daywise"),
]


async def test_overall_analytics_read_the_published_example(
    server: aioresponses, make_client: MakeClient, observer: RecordingObserver
) -> None:
    """The overall totals are asked without a time range (all time) and decoded whole."""
    server.get(ANALYTICS_URL, payload=ANALYTICS_EXAMPLE)
    totals = await make_client().livestream_analytics(ACCOUNT, APP)
    assert totals == Totals(count=4, ingest_seconds=531.0, viewer_seconds=116.0, day=None)
    ((url, kwargs),) = sent(server)
    assert url.path.endswith(f"/{APP}/analytics/livestreams/overall") and not url.query
    assert kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert observer.requests == [(ENDPOINT_ANALYTICS, "200")]


async def test_daywise_analytics_send_the_range_and_read_one_totals_per_row(
    server: aioresponses, make_client: MakeClient
) -> None:
    """start and end go out as Unix seconds; each row is a Totals with its day, in the
    answer's order; a row without a readable date has day None."""
    rows = [
        *DAYS_EXAMPLE["data"],
        {"count": 1, "date": "2023-07-16T00:00:00.000Z", "total_ingest_seconds": 2.5},
        {"count": 0, "date": None},
    ]
    server.get(DAYS_URL, payload={"success": True, "data": rows})
    days = await make_client().livestream_analytics_days(
        ACCOUNT, APP, start=DAYS_START, end=DAYS_END
    )
    assert days == (
        Totals(count=4, ingest_seconds=531.0, viewer_seconds=116.0, day="2023-07-15"),
        Totals(count=1, ingest_seconds=2.5, viewer_seconds=0.0, day="2023-07-16"),
        Totals(count=0, ingest_seconds=0.0, viewer_seconds=0.0, day=None),
    )
    ((url, _),) = sent(server)
    assert url.path.endswith("/analytics/livestreams/daywise")
    assert dict(url.query) == {"start_time": str(DAYS_START), "end_time": str(DAYS_END)}


async def test_analytics_accept_numeric_strings(
    server: aioresponses, make_client: MakeClient
) -> None:
    """Totals sent as strings (as the session counters sometimes are) read as numbers."""
    strings = {"count": "4", "total_ingest_seconds": "531.5", "total_viewer_seconds": " 116 "}
    server.get(ANALYTICS_URL, payload={"success": True, "data": strings})
    server.get(DAYS_URL, payload={"success": True, "data": [{**strings, "date": "2023-07-15"}]})
    client = make_client()
    expected = Totals(count=4, ingest_seconds=531.5, viewer_seconds=116.0)
    assert await client.livestream_analytics(ACCOUNT, APP) == expected
    assert await days_call(client) == (replace(expected, day="2023-07-15"),)


@pytest.mark.parametrize(("url", "call", "endpoint"), ANALYTICS_CALLS)
@pytest.mark.parametrize(
    ("status", "body", "reason", "detail"),
    [
        (403, AUTH_ERROR, "auth", "Authentication error (code 10000)"),
        (
            404,
            {"success": False, "error": {"code": 404, "message": "Not found"}},
            "http_error",
            "Not found",
        ),
        (
            404,
            {"success": False, "errors": [{"code": 7000, "message": "No route"}]},
            "http_error",
            "No route",
        ),
        (404, "<html>Not Found</html>", "http_error", "body is not JSON"),
        (401, AUTH_ERROR, "auth", "Authentication error (code 10000)"),
        (400, BAD_REQUEST, "http_error", "Invalid request headers (code 6003)"),
        (429, THROTTLED, "rate_limited", "More than 1200 requests per 300 seconds reached"),
        (200, {"success": False, "errors": [{"code": 1, "message": "nope"}]}, "http_error", "nope"),
    ],
    ids=["403", "404-service", "404-gateway", "404-html", "401", "400", "429", "200-failure"],
)
async def test_analytics_errors_raise_with_their_status(
    server: aioresponses,
    make_client: MakeClient,
    url: str,
    call: Any,
    endpoint: str,
    status: int,
    body: Any,
    reason: str,
    detail: str,
) -> None:
    """Each fails the call after one request with its status, reason and the endpoint's
    name. A 403 or a 404 of either envelope too: unlike a session's 404, neither is read as
    "nothing there", so that the caller can turn the feature off rather than export zeros."""
    if isinstance(body, str):
        server.get(url, status=status, body=body, repeat=True)
    else:
        server.get(url, status=status, payload=body, repeat=True, headers={"Retry-After": "30"})
    error = await fail(call(make_client()))
    assert (error.reason, error.status, error.endpoint) == (reason, status, endpoint)
    assert detail in str(error) and not error.transient
    assert len(sent(server)) == 1


def _rows(count: int) -> list[dict[str, Any]]:
    return [{"count": 1, "date": "2023-07-15"}] * count


HOSTILE_OVERALL: list[Any] = [
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "count": -1}},
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "total_ingest_seconds": -0.5}},
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "total_viewer_seconds": True}},
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "count": 1.5}},
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "count": "four"}},
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "count": [4]}},
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "total_ingest_seconds": "Infinity"}},
    {"success": True, "data": {**ANALYTICS_EXAMPLE["data"], "total_ingest_seconds": 10**400}},
    {"success": True, "data": [ANALYTICS_EXAMPLE["data"]]},
    {"success": True, "data": None},
    {"success": True},
    [ANALYTICS_EXAMPLE],
]
HOSTILE_DAYS: list[Any] = [
    {"success": True, "data": [{**DAYS_EXAMPLE["data"][0], "count": -4}]},
    {"success": True, "data": [{**DAYS_EXAMPLE["data"][0], "total_viewer_seconds": False}]},
    {"success": True, "data": [DAYS_EXAMPLE["data"][0], "2023-07-16"]},
    {"success": True, "data": DAYS_EXAMPLE["data"][0]},
    {"success": True, "data": None},
    {"success": True, "data": _rows(decode.MAX_DAYS + 1)},
]


@pytest.mark.parametrize(
    ("url", "call", "body"),
    [(ANALYTICS_URL, overall_call, body) for body in HOSTILE_OVERALL]
    + [(DAYS_URL, days_call, body) for body in HOSTILE_DAYS]
    + [
        (ANALYTICS_URL, overall_call, '{"success": true, "data": {"count": NaN}}'),
        (DAYS_URL, days_call, '{"success": true, "data": [{"count": -Infinity}]}'),
        (ANALYTICS_URL, overall_call, "<html>oops</html>"),
        (DAYS_URL, days_call, '{"success": true, "data": [{"count": 1'),
    ],
)
async def test_hostile_analytics_bodies_are_decode_errors(
    server: aioresponses, make_client: MakeClient, url: str, call: Any, body: Any
) -> None:
    """Totals that cannot be trusted (negative, not finite, a boolean, a fractional count,
    the wrong shape, too many rows) fail the call, quoting none of the body."""
    if isinstance(body, str):
        server.get(url, body=body)
    else:
        server.get(url, payload=body)
    error = await fail(call(make_client()))
    assert error.reason == "decode"
    for quoted in ("531", "116", "Infinity", "NaN", "oops", "four"):
        assert quoted not in str(error)


async def test_daywise_rows_up_to_the_bound_are_read(
    server: aioresponses, make_client: MakeClient
) -> None:
    """MAX_DAYS rows are read whole (one more fails the call, as above)."""
    server.get(DAYS_URL, payload={"success": True, "data": _rows(decode.MAX_DAYS)})
    days = await days_call(make_client())
    assert len(days) == decode.MAX_DAYS and days[-1].day == "2023-07-15"


@pytest.mark.parametrize(("url", "call", "endpoint"), ANALYTICS_CALLS)
@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, {"success": False, "errors": [{"code": 10000, "message": f"bad token {TOKEN}"}]}),
        (404, {"success": False, "error": {"code": 404, "message": f"no {TOKEN}!"}}),
        (200, {"success": False, "error": {"code": 400, "message": TOKEN.upper()}}),
        (200, {"success": True, "data": {"count": TOKEN}}),
        (200, {"success": True, "data": [{"count": 1, "date": TOKEN}, {"count": TOKEN}]}),
    ],
    ids=["403", "404", "success-false", "decode", "decode-days"],
)
async def test_token_never_appears_in_analytics_errors(
    server: aioresponses,
    make_client: MakeClient,
    url: str,
    call: Any,
    endpoint: str,
    status: int,
    body: dict[str, Any],
) -> None:
    """An analytics error whose body quotes the token (in any letter case) shows none of it."""
    server.get(url, status=status, payload=body)
    error = await fail(call(make_client()))
    assert error.endpoint == endpoint
    for text in (str(error), repr(error), *map(str, error.args)):
        assert TOKEN.casefold() not in text.casefold()
