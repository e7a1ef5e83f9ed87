"""The status page at ``/``: the pure render, the poller's error ring, and the served page."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.client import ENDPOINT_LISTING, ENDPOINT_SESSION, ApiError
from exporter.model import (
    EMPTY_SNAPSHOT,
    AppState,
    Livestream,
    PollError,
    Session,
    Snapshot,
    StreamState,
    Unlisted,
)
from exporter.poller import INTERNAL, RECENT_ERRORS, Poller
from exporter.server import Exporter, create_app
from exporter.simulator import Canned, Faults, Simulator
from exporter.simulator.world import STREAM_KEY_PREFIX
from exporter.statuspage import MAX_ROWS, MAX_TOTAL_ROWS, CredentialsStatus, ago, render
from tests.apidouble import UnaskedApi
from tests.conftest import (
    ACCOUNT,
    APP,
    TOKEN,
    add_stream,
    api_simulator,
    go_live,
    make_config,
    sent,
)
from tests.pages import ALLOWED_TAGS, Page

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.config import Config
    from exporter.model import Listing

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
HOSTILE = '<script>alert("x")</script> & \'quoted\' "double"'
EVIL_ATTR = '"><img src=x onerror=alert(1)>'
UNICODE = "Bühne 🎤 東京 — ünïcödé"


def stream(
    sid: str,
    status: str = "IDLE",
    *,
    name: str | None = None,
    live: bool = False,
    session: Session | None = None,
    last_update: float = NOW - 10,
    expected_live: bool | None = None,
) -> StreamState:
    return StreamState(
        livestream=Livestream(id=sid, status=status, name=name),
        live=live,
        session=session,
        last_update=last_update,
        expected_live=expected_live,
    )


def app(
    *streams: StreamState,
    up: bool = True,
    account_id: str = ACCOUNT,
    app_id: str = APP,
    last_success: float | None = NOW - 10,
    unlisted: tuple[Unlisted, ...] = (),
) -> AppState:
    return AppState(
        account_id=account_id,
        app_id=app_id,
        up=up,
        last_success=last_success,
        streams=tuple(sorted(streams, key=lambda s: s.id)),
        unlisted=unlisted,
    )


def snap(*apps: AppState, cycles: int = 3) -> Snapshot:
    return Snapshot(apps=apps, taken_at=NOW - 10, cycles=cycles)


def error(at: float, reason: str = "timeout", message: str = "no answer") -> PollError:
    return PollError(
        time=at,
        account_id=ACCOUNT,
        app_id=APP,
        endpoint=ENDPOINT_SESSION,
        reason=reason,
        message=message,
    )


def page(snapshot: Snapshot, errors: tuple[PollError, ...] = (), **kwargs: Any) -> Page:
    text = render(snapshot, errors, NOW, "1.2.3", **kwargs)
    parsed = Page(text)
    unexpected = {tag for tag, _ in parsed.tags} - ALLOWED_TAGS
    assert not unexpected, f"tags from unescaped values: {unexpected}"
    handlers = [(t, k) for t, attrs in parsed.tags for k in attrs if k.startswith("on")]
    assert not handlers, f"event handler attributes: {handlers}"
    return parsed


# -- the pure render ------------------------------------------------------------------
def test_before_the_first_poll_the_page_says_so() -> None:
    """An empty snapshot: the links, "no poll yet", no app table, no errors."""
    got = page(EMPTY_SNAPSHOT)
    assert "No poll yet" in got.text and not got.apps and not got.rows
    assert {a.get("href") for t, a in got.tags if t == "a"} == {
        "/metrics",
        "/-/healthy",
        "/-/ready",
    }
    assert "version 1.2.3" in got.text
    assert "No API errors" in got.text


def test_apps_and_streams_are_shown() -> None:
    """Per app: ids, up, last successful poll with its age, tracked count; per stream
    every column, for a live stream, a stopped one with an errored session, and one
    that never had a session."""
    live_session = Session(
        id="sess-1", started_time=NOW - 115, ingest_seconds=116.11599, viewer_seconds=300
    )
    errored_session = Session(
        id="sess-2",
        started_time=NOW - 900,
        stopped_time=NOW - 300,
        err_message="encoder went away",
        ingest_seconds=600,
        viewer_seconds=1200.5,
    )
    got = page(
        snap(
            app(
                stream("ls-live", "LIVE", name="Main stage", live=True, session=live_session),
                stream("ls-err", "ERRORED", session=errored_session, last_update=NOW - 4000),
                stream("ls-new", "OFFLINE", name="Fresh"),
            )
        )
    )
    assert got.apps[(ACCOUNT, APP)] == {
        "account": ACCOUNT,
        "app": APP,
        "credentials": "default",  # the name of the token the app is read with
        "state": "up",
        "last-success": "2027-01-15 07:59:50 UTC (10 s ago)",
        "tracked": "3",
        "live-count": "1",
        "expected-down": "0",
        "unlisted": "0",
    }
    assert got.rows["ls-live"] == {
        "name": "Main stage",
        "id": "ls-live",
        "status": "LIVE",
        "live": "yes",
        "since": "2027-01-15 07:58:05 UTC (115 s ago)",
        "viewer": "300",
        "ingest": "116.1",
        "errored": "no",
        "read": "",  # read at the app's last cycle, which the table's heading names
    }
    assert "Values below were read 2027-01-15 07:59:50 UTC (10 s ago), unless" in got.text
    # Not live: its last session's values, in one cell that says so, with the error.
    assert got.rows["ls-err"] == {
        "name": "—",
        "id": "ls-err",
        "status": "ERRORED",
        "live": "no",
        "last-session": "last session ended 2027-01-15 07:55:00 UTC (5 min ago) · viewer "
        "seconds 1200.5 · ingest seconds 600 · error: encoder went away",
        "read": "66 min ago",  # kept from an earlier cycle
    }
    assert got.rows["ls-new"]["last-session"] == "— no session seen"
    assert "since" not in got.rows["ls-new"] and "viewer" not in got.rows["ls-new"]
    # the ERRORED stream first, then the live one, then the rest
    assert list(got.rows) == ["ls-err", "ls-live", "ls-new"]


def test_hostile_values_are_escaped_everywhere() -> None:
    """Names, statuses, ids, account and app ids, and error fields full of markup and
    quotes come out as text (the page's tags are only its own); unicode stays as it is."""
    hostile_id = "ls-" + EVIL_ATTR
    got = page(
        snap(
            app(
                stream(hostile_id, EVIL_ATTR, name=HOSTILE, live=True),
                stream("ls-uni", "IDLE", name=UNICODE),
                account_id="acc-" + HOSTILE,
                app_id="app-" + EVIL_ATTR,
                unlisted=(Unlisted(id="gone-" + HOSTILE),),
            )
        ),
        errors=(
            PollError(
                time=NOW - 1,
                account_id="acc-" + HOSTILE,
                app_id="app-" + EVIL_ATTR,
                endpoint=EVIL_ATTR,
                reason=HOSTILE,
                message=HOSTILE,
            ),
        ),
    )
    row = got.rows[hostile_id]
    assert (row["name"], row["id"], row["status"]) == (HOSTILE, hostile_id, EVIL_ATTR)
    assert got.rows["ls-uni"]["name"] == UNICODE
    assert got.rows["gone-" + HOSTILE]["status"] == "not in listing"
    assert ("acc-" + HOSTILE, "app-" + EVIL_ATTR) in got.apps
    assert got.errors[0][1:] == ["acc-" + HOSTILE, "app-" + EVIL_ATTR, EVIL_ATTR, HOSTILE, HOSTILE]
    assert f"Livestreams of acc-{HOSTILE} / app-{EVIL_ATTR}" in got.text


def test_unlisted_streams_are_listed_as_not_in_listing() -> None:
    """A configured stream missing from the listing has a row saying so, and a count."""
    got = page(snap(app(stream("ls-1"), unlisted=(Unlisted(id="ls-gone", expected_live=True),))))
    assert got.rows["ls-gone"]["status"] == "not in listing"
    assert got.rows["ls-gone"]["name"] == "—"
    assert got.apps[(ACCOUNT, APP)]["tracked"] == "1"


def test_streams_expected_live_are_marked_and_those_not_live_stand_out() -> None:
    """expect_live: true is marked on a live stream; on one that is not live (or is not in
    the listing) it is a red badge on a highlighted row, counted per app and in the page's
    summary; expect_live: false says the stream may be off."""
    got = page(
        snap(
            app(
                stream("ls-down", expected_live=True),
                stream("ls-up", "LIVE", live=True, expected_live=True),
                stream("ls-off", expected_live=False),
                stream("ls-plain"),
                unlisted=(Unlisted("ls-gone", expected_live=True), Unlisted("ls-gone-2")),
            ),
            app(stream("ls-other", "LIVE", live=True), app_id="app-2"),
        )
    )
    assert got.rows["ls-down"]["live"] == "no expected live"
    assert got.rows["ls-up"]["live"] == "yes expected"
    assert got.rows["ls-off"]["live"] == "no (may be off)"
    assert got.rows["ls-plain"]["live"] == "no"
    assert got.rows["ls-gone"]["live"] == "no expected live"
    assert got.rows["ls-gone-2"]["live"] == "no"
    highlighted = {
        a["data-livestream-id"]
        for t, a in got.tags
        if t == "tr" and "alert" in (a.get("class") or "").split()
    }
    assert highlighted == {"ls-down", "ls-gone"}
    assert got.apps[(ACCOUNT, APP)]["expected-down"] == "2"
    assert got.apps[(ACCOUNT, "app-2")]["expected-down"] == "0"
    assert "2 expected live streams are not live." in got.text
    one = page(snap(app(stream("ls-down", expected_live=True))))
    assert "1 expected live stream is not live." in one.text
    assert "expected live stream" not in page(snap(app(stream("ls-plain")))).text


def test_a_session_error_is_shown_escaped_and_a_stream_not_live_shows_its_last_session() -> None:
    """The session's err_message is on the page, escaped. A stream that is not live
    (INVOKED again after a failed broadcast, or ERRORED) shows its last session's values
    and error under "last session", never in the current session's columns; a live
    stream shows its current session's."""
    failed = Session(
        id="s-old",
        started_time=NOW - 4000,
        stopped_time=NOW - 3600,
        err_message=HOSTILE,
        ingest_seconds=400,
        viewer_seconds=900,
    )
    current = Session(id="s-now", started_time=NOW - 60, err_message="bitrate too high")
    got = page(
        snap(
            app(
                stream("ls-invoked", "INVOKED", session=failed),
                stream("ls-errored", "ERRORED", session=failed),
                stream("ls-live", "LIVE", live=True, session=current),
            )
        )
    )
    for sid in ("ls-invoked", "ls-errored"):
        row = got.rows[sid]
        assert {"since", "viewer", "ingest", "errored"}.isdisjoint(row), row
        assert row["last-session"] == (
            "last session ended 2027-01-15 07:00:00 UTC (60 min ago) · viewer seconds 900 · "
            f"ingest seconds 400 · error: {HOSTILE}"
        )
    live = got.rows["ls-live"]
    assert (live["errored"], live["viewer"]) == ("bitrate too high", "—")
    assert "last-session" not in live


@pytest.mark.parametrize(
    ("session", "shown"),
    [
        (None, "last session not seen by the exporter: its error message is not known"),
        (
            Session(id="s", started_time=NOW - 600),  # stopped, final values not read yet
            "last session started 2027-01-15 07:50:00 UTC (10 min ago), its final values "
            "not read · error: not known until its final values are read",
        ),
        (
            Session(id="s", started_time=NOW - 600, stopped_time=NOW - 60, viewer_seconds=5),
            "last session ended 2027-01-15 07:59:00 UTC (60 s ago) · viewer seconds 5 · "
            "error: none given by the API",
        ),
        (
            Session(id="s", ended=True, err_message="gone"),
            "last session ended · error: gone",
        ),
    ],
    ids=["no-session", "final-values-pending", "no-message", "ended-without-time"],
)
def test_an_errored_stream_says_why_it_shows_no_error_message(
    session: Session | None, shown: str
) -> None:
    """An ERRORED stream never shows a bare dash for its error: it says that no session
    was seen, that the final values are not read yet, or that the API gave no message."""
    got = page(snap(app(stream("ls-1", "ERRORED", session=session))))
    assert got.rows["ls-1"]["last-session"] == shown


def test_a_live_stream_whose_session_is_not_read_yet_says_so() -> None:
    """Live on the listing's word, its session not asked yet: no values, and why."""
    got = page(snap(app(stream("ls-1", "LIVE", live=True))))
    assert got.rows["ls-1"]["last-session"] == "— session not read yet"


def credentials(name: str = "default", **kwargs: Any) -> CredentialsStatus:
    values: dict[str, Any] = {
        "apps": 1,
        "interval": 30.0,
        "requests": 1200,
        "window": 300.0,
        "available": 1150,
        "remaining": 1142,
        "mode": "full",
        "counter_period": 30.0,
        "listing_period": 30.0,
    }
    return CredentialsStatus(name=name, **(values | kwargs))


def test_each_credentials_poll_interval_budget_and_rate_limit_are_shown() -> None:
    """Per credentials: apps, poll interval, the budget in force (and whether the API's
    stated limit is what sets it), the requests it grants now (an empty budget stands
    out), the API's last Ratelimit remaining (or that none was stated) and the plan."""
    got = page(
        snap(app()),
        credentials=(
            credentials(),
            credentials(
                "<b>tenant</b>",
                apps=3,
                interval=15.0,
                requests=600,
                window=300.0,
                available=0,
                from_policy=True,
                remaining=None,
                mode="lanes",
                counter_period=95.2,
                listing_period=600.0,
            ),
            credentials("new", available=40, mode=None),
        ),
    )
    rows = {row[0]: row for row in got.table("credentials")}
    assert rows["default"] == [
        "default",
        "1",
        "30 s",
        "1200 per 300 s",
        "1150",
        "1142",
        "every stream each cycle",
    ]
    assert rows["<b>tenant</b>"] == [
        "<b>tenant</b>",
        "3",
        "15 s",
        "600 per 300 s (the API's Ratelimit-Policy)",
        "0 (waiting)",
        "not stated",
        "budget short statuses each cycle, counters about every 95 s, the full listing "
        "about every 10 min",
    ]
    assert rows["new"][4:] == ["40", "1142", "— (no cycle yet)"]
    assert page(snap(app())).table("credentials") == []  # none given: no table


def test_ids_stay_on_one_line() -> None:
    """Id cells are monospace and never break (a UUID is shown whole); an id longer than a
    UUID is cut by CSS, whole in its title and its text."""
    uuid = "3f2a9c1e-7b4d-4e21-9a6f-0c5d8e7b1a23"
    long_id = "x" * 80 + EVIL_ATTR
    text = render(snap(app(stream(uuid), stream(long_id))), (), NOW, "1")
    assert ".id{font-family:ui-monospace,monospace;font-size:.92em;white-space:nowrap}" in text
    got = Page(text)
    assert got.rows[uuid]["id"] == uuid and got.rows[long_id]["id"] == long_id
    clipped = [a for t, a in got.tags if t == "span" and a.get("class") == "clip"]
    assert [a["title"] for a in clipped] == [long_id]
    assert f'<td class="id">{uuid}</td>' in text


def test_values_read_names_only_rows_not_read_at_the_apps_last_cycle() -> None:
    """The "values read" cell is empty for a row read at the app's last cycle (and for one
    a webhook refreshed since); a row kept from an earlier cycle says how old it is, and a
    live stream whose counters wait their turn says how old those are."""
    live = Session(id="s", started_time=NOW - 900, viewer_seconds=10)
    in_turn = dataclasses.replace(
        stream("ls-turn", "LIVE", live=True, session=live), counted_at=NOW - 190
    )
    pushed = stream("ls-pushed", "IDLE", last_update=NOW - 2)  # after the snapshot's time
    got = page(
        snap(
            app(
                stream("ls-fresh"),
                stream("ls-kept", last_update=NOW - 400),
                in_turn,
                stream("ls-fresh-live", "LIVE", live=True, session=live),
                pushed,
            )
        )
    )
    assert got.rows["ls-fresh"]["read"] == ""
    assert got.rows["ls-pushed"]["read"] == ""
    assert got.rows["ls-fresh-live"]["read"] == ""
    assert got.rows["ls-kept"]["read"] == "6 min ago"
    assert got.rows["ls-turn"]["read"] == "counters 3 min ago"
    kept = next(
        a for t, a in got.tags if t == "span" and a.get("title") == "2027-01-15 07:53:20 UTC"
    )
    assert kept["class"] == "ago"


def test_an_app_that_is_down_says_so_and_when_it_last_worked() -> None:
    """Down apps: a "down" badge, the age of the last success (or "never"), a note that
    the values are the last ones fetched."""
    got = page(
        snap(
            app(stream("ls-1"), up=False, last_success=NOW - 7200),
            app(up=False, app_id="app-never", last_success=None),
        )
    )
    assert got.apps[(ACCOUNT, APP)]["state"] == "down"
    assert got.apps[(ACCOUNT, APP)]["last-success"] == "2027-01-15 06:00:00 UTC (2 h ago)"
    assert got.apps[(ACCOUNT, "app-never")]["last-success"] == "never"
    assert "The last poll of this app failed" in got.text
    assert "0 of 2 apps up" in got.text


def test_errors_are_newest_first_and_bounded() -> None:
    """Errors given in any order come out newest first, at most max_errors of them."""
    errors = tuple(error(NOW - 100 + i, message=f"error {i}") for i in range(25))
    got = page(snap(app()), errors=errors[::2] + errors[1::2])
    assert [row[-1] for row in got.errors] == [f"error {i}" for i in range(24, 4, -1)]
    assert got.errors[0][0] == "2027-01-15 07:58:44 UTC (76 s ago)"
    assert [row[-1] for row in page(snap(app()), errors=errors, max_errors=3).errors] == [
        "error 24",
        "error 23",
        "error 22",
    ]


def test_large_apps_are_capped_with_a_note() -> None:
    """Beyond max_rows streams an app shows the first ones (live first) and how many
    more there are; unlisted configured streams are always shown."""
    streams = [stream(f"ls-{i:04d}") for i in range(12)] + [stream("ls-zz", "LIVE", live=True)]
    got = page(snap(app(*streams, unlisted=(Unlisted("ls-gone"),))), max_rows=5)
    assert list(got.rows) == ["ls-zz", "ls-0000", "ls-0001", "ls-0002", "ls-0003", "ls-gone"]
    assert "8 more not shown" in got.text
    assert got.apps[(ACCOUNT, APP)]["tracked"] == "13"


def test_thousands_of_streams_render_the_default_caps_quickly() -> None:
    """Five apps of 3,000 streams: at most MAX_ROWS rows per app and MAX_TOTAL_ROWS on the
    page, shared out among the apps, and a note per app for the rest."""
    apps = [
        app(*(stream(f"ls-{i:05d}", name=f"stream {i}") for i in range(3000)), app_id=f"app-{n}")
        for n in range(5)
    ]
    started = time.perf_counter()
    text = render(snap(*apps), (), NOW, "1")
    elapsed = time.perf_counter() - started
    assert MAX_TOTAL_ROWS < 5 * MAX_ROWS
    assert text.count("<tr data-livestream-id=") == MAX_TOTAL_ROWS
    per_app = MAX_TOTAL_ROWS // 5
    assert text.count(f"{3000 - per_app} more not shown") == 5
    assert f"{5 * 3000 - MAX_TOTAL_ROWS} tracked livestreams are not shown" in text
    assert elapsed < 5, f"rendering took {elapsed:.2f} s"


def test_streams_that_need_attention_come_first() -> None:
    """Expected live but not live, then ERRORED (status or session error), then live, then
    the rest; by name, then id, within each group, whatever order the app lists them in."""
    failed = Session(id="s-failed", started_time=NOW - 900, stopped_time=NOW - 60, err_message="x")
    streams = [
        stream("ls-01", name="a quiet one"),
        stream("ls-02", "LIVE", name="b live", live=True),
        stream("ls-03", "ERRORED", name="z errored"),
        stream("ls-04", "IDLE", name="c failed session", session=failed),
        stream("ls-05", "IDLE", name="y expected", expected_live=True),
        stream("ls-06", "LIVE", name="a live", live=True, expected_live=True),
        stream("ls-07", "ERRORED", name="x expected and errored", expected_live=True),
        stream("ls-09", "OFFLINE"),  # no name: before the named ones of its group
        stream("ls-08", "OFFLINE"),
    ]
    got = page(snap(app(*streams, unlisted=(Unlisted("ls-gone", expected_live=True),))))
    assert list(got.rows) == [
        "ls-07",  # expected live, not live, by name
        "ls-05",
        "ls-04",  # a session error ("c...") before an ERRORED status ("z...")
        "ls-03",
        "ls-06",  # live
        "ls-02",
        "ls-08",  # the rest: unnamed by id, then by name
        "ls-09",
        "ls-01",
        "ls-gone",  # configured but not in the listing: after the app's streams
    ]


def test_an_errored_expected_live_stream_is_never_hidden_by_the_cap() -> None:
    """1,000 streams, 300 of them live, and one ERRORED stream that is expected live and
    whose name and id sort after all the others: with the default cap (500 per app) it is
    shown, at the top, and every live stream is shown after it."""
    streams = [
        stream(
            f"ls-{i:04d}",
            "LIVE" if i % 10 < 3 else "IDLE",
            name=f"stream {i:04d}",
            live=i % 10 < 3,
        )
        for i in range(1000)
    ]
    broken = stream("zz-broken", "ERRORED", name="zzz last of all", expected_live=True)
    got = page(snap(app(*streams, broken)))
    assert MAX_ROWS < 1001
    assert next(iter(got.rows)) == "zz-broken"
    assert got.rows["zz-broken"]["status"] == "ERRORED"
    assert got.rows["zz-broken"]["live"] == "no expected live"
    live_rows = [sid for sid, row in got.rows.items() if row["live"] == "yes"]
    assert len(live_rows) == 300 and list(got.rows)[1:301] == live_rows
    assert len(got.rows) == MAX_ROWS
    assert f"{1001 - MAX_ROWS} more not shown" in got.text


def test_the_page_cap_keeps_every_apps_streams_that_need_attention() -> None:
    """Twenty apps of 10,000 streams: at most max_total rows on the page, a note per app
    with how many it leaves out, the streams that need attention of every app (even the
    last one) before any app's quiet ones, and unlisted streams always."""
    apps = []
    for n in range(20):
        streams = [stream(f"ls-{i:05d}", name=f"stream {i:05d}") for i in range(10_000)]
        streams[n] = stream(f"ls-{n:05d}", "ERRORED", name="zz errored")
        if n == 19:
            streams.append(stream("ls-late", "IDLE", name="zz late", expected_live=True))
        apps.append(app(*streams, app_id=f"app-{n:02d}", unlisted=(Unlisted(f"ls-gone-{n:02d}"),)))
    started = time.perf_counter()
    text = render(snap(*apps), (), NOW, "1")
    elapsed = time.perf_counter() - started
    got = Page(text)
    assert elapsed < 10, f"rendering took {elapsed:.2f} s"
    assert len(text.encode()) < 1_500_000, len(text.encode())
    stream_rows = text.count("<tr data-livestream-id=") - text.count('class="unlisted"')
    assert stream_rows == MAX_TOTAL_ROWS
    assert "ls-late" in got.rows and got.rows["ls-late"]["live"] == "no expected live"
    for n in range(20):
        assert f"ls-gone-{n:02d}" in got.rows
    # Each app's ERRORED stream is its first row (ids repeat across apps: check the order
    # of the sections instead).
    sections = text.split("<section>")[1:]
    assert len(sections) == 20
    for n, section in enumerate(sections):
        first = section.index("<tr data-livestream-id=")
        expected_first = "ls-late" if n == 19 else f"ls-{n:05d}"
        assert section[first:].startswith(f'<tr data-livestream-id="{expected_first}"'), n
        shown = section.count("<tr data-livestream-id=") - 1  # less the unlisted one
        total = 10_001 if n == 19 else 10_000
        assert f"{total - shown} more not shown" in section, n
    assert f"{200_001 - MAX_TOTAL_ROWS} tracked livestreams are not shown" in text
    # A small cap still leaves room for nothing but the streams that need attention.
    small = Page(render(snap(*apps), (), NOW, "1", max_total=21))
    assert {sid for sid in small.rows if not sid.startswith("ls-gone")} == {
        "ls-late",
        *(f"ls-{n:05d}" for n in range(20)),
    }


def test_unlisted_streams_are_shown_whatever_the_caps() -> None:
    got = page(snap(app(stream("ls-1"), unlisted=(Unlisted("ls-gone"),))), max_rows=0, max_total=0)
    assert list(got.rows) == ["ls-gone"]
    assert "1 more not shown" in got.text


def test_a_hidden_stream_that_needs_attention_is_counted_in_the_note() -> None:
    """When an app has more streams that need attention than its cap, the note says how
    many of those are left out."""
    streams = [stream(f"ls-{i}", "ERRORED") for i in range(4)] + [stream("ls-q")]
    got = page(snap(app(*streams)), max_rows=2)
    assert "3 more not shown, 2 of them expected live but not live or ERRORED" in got.text


def test_refresh_and_odd_times() -> None:
    """refresh adds a meta refresh; a time no calendar holds is shown as a number."""
    odd = stream("ls-1", live=True, session=Session(id="s", started_time=1e300), last_update=1e300)
    text = render(snap(app(odd)), (), NOW, "1", refresh=30.0)
    assert '<meta http-equiv="refresh" content="30">' in text
    assert Page(text).rows["ls-1"]["since"] == "1e+300"
    assert "http-equiv" not in render(EMPTY_SNAPSHOT, (), NOW, "1")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s ago"),
        (119.6, "120 s ago"),
        (120, "2 min ago"),
        (7199, "119 min ago"),
        (7200, "2 h ago"),
        (3 * 86400, "3 d ago"),
        (-3, "in 3 s"),
    ],
)
def test_ages(seconds: float, text: str) -> None:
    assert ago(seconds) == text


# -- the poller's ring of recent errors ---------------------------------------------
class FailingApi(UnaskedApi):
    """Every listing fails with an ApiError whose text quotes secrets, as a body may."""

    def __init__(self) -> None:
        self.calls = 0

    async def list_livestreams(self, account_id: str, app_id: str, **_: object) -> Listing:
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError(f"a bug that quotes {TOKEN} and {STREAM_KEY_PREFIX}x")
        raise ApiError(
            "auth" if self.calls % 3 == 1 else "rate_limited",
            f"Authentication error: Bearer {TOKEN}, stream_key {STREAM_KEY_PREFIX}abc",
            endpoint=ENDPOINT_LISTING,
            status=401 if self.calls % 3 == 1 else 429,
            retry_after=None if self.calls % 3 == 1 else 60.0,
        )


async def test_poller_keeps_the_last_errors_newest_first_without_their_text() -> None:
    """The ring holds RECENT_ERRORS errors, newest first, with reason, endpoint, time and
    a message made of the reason and HTTP status only: never the error's own text."""
    clock = iter(range(1_000, 10_000))
    poller = Poller(
        config=make_config("http://127.0.0.1:9", streams=("s1",)),
        api=FailingApi(),
        clock=lambda: float(next(clock)),
    )
    assert poller.recent_errors == ()
    for _ in range(RECENT_ERRORS + 5):
        await poller.poll_once()
    errors: tuple[PollError, ...] = poller.recent_errors  # not the "== ()" narrowed above
    assert len(errors) == RECENT_ERRORS
    assert [e.time for e in errors] == sorted((e.time for e in errors), reverse=True)
    by_reason = {e.reason: e for e in errors}
    assert set(by_reason) == {"auth", "rate_limited", INTERNAL}
    assert by_reason["auth"].message == "the API rejected the token (HTTP 401)"
    assert by_reason["rate_limited"].message == (
        "throttled by the API (HTTP 429), pausing requests for 60 s"
    )
    assert by_reason[INTERNAL].endpoint == ""
    assert {(e.account_id, e.app_id) for e in errors} == {(ACCOUNT, APP)}
    assert {e.endpoint for e in errors} == {ENDPOINT_LISTING, ""}
    for e in errors:
        assert TOKEN not in e.message and STREAM_KEY_PREFIX not in e.message


# -- the served page ------------------------------------------------------------------
async def serve(config: Config) -> AsyncIterator[tuple[Exporter, TestClient[Any, Any]]]:
    async with Exporter(config, registry=CollectorRegistry(), process_metrics=False) as exporter:
        app_ = create_app(
            registry=exporter.registry,
            ready=lambda: exporter.poller.ready,
            status=exporter.poller,
            refresh=config.poll.interval,
        )
        async with TestClient(TestServer(app_, host="127.0.0.1")) as client:
            yield exporter, client


@pytest.fixture
async def served(sim: Simulator) -> AsyncIterator[tuple[Exporter, TestClient[Any, Any]]]:
    s1 = add_stream(sim, "ls-1", name="Main stage", meeting_id="m-1")
    add_stream(sim, "ls-2", status="OFFLINE", name=HOSTILE)
    add_stream(sim, "ls-3", status="<b>paused</b>", name="Bühne\ud800")
    sim.state.faults = Faults(numbers_as_strings=True)  # as the counters' declared type
    go_live(sim, s1, ingest=116.11599994199997, viewer=300)
    config = make_config(sim.base_url, streams=("ls-1", "ls-gone"), discover=True)
    async for pair in serve(config):
        yield pair


async def test_page_headers(served: tuple[Exporter, TestClient[Any, Any]]) -> None:
    """HTML in UTF-8, no sniffing, and a policy that allows inline CSS and nothing else."""
    _, client = served
    for method in ("GET", "HEAD"):
        response = await client.request(method, "/")
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"] == (
            "default-src 'none'; style-src 'unsafe-inline'"
        )


async def test_page_before_and_after_a_poll(
    served: tuple[Exporter, TestClient[Any, Any]],
) -> None:
    """Before the first cycle the page says so; after it, it shows the fake API's streams,
    with hostile names and statuses escaped and a lone surrogate replaced."""
    exporter, client = served
    before = Page(await (await client.get("/")).text())
    assert "No poll yet" in before.text
    await exporter.poller.poll_once()
    response = await client.get("/")
    assert response.status == 200
    got = Page(await response.text())
    assert not {tag for tag, _ in got.tags} - ALLOWED_TAGS
    assert got.apps[(ACCOUNT, APP)]["state"] == "up"
    assert got.apps[(ACCOUNT, APP)]["tracked"] == "3"
    assert got.rows["ls-1"]["name"] == "Main stage"
    assert (got.rows["ls-1"]["status"], got.rows["ls-1"]["live"]) == ("LIVE", "yes")
    assert (got.rows["ls-1"]["viewer"], got.rows["ls-1"]["ingest"]) == ("300", "116.1")
    assert "2026-11-27 10:00:00 UTC" in got.rows["ls-1"]["since"]
    assert (got.rows["ls-2"]["name"], got.rows["ls-2"]["status"]) == (HOSTILE, "OFFLINE")
    assert got.rows["ls-3"]["status"] == "<B>PAUSED</B>"
    assert got.rows["ls-3"]["name"] == "Bühne\ufffd"  # a lone surrogate, replaced on decoding
    assert got.rows["ls-gone"]["status"] == "not in listing"
    assert '<meta http-equiv="refresh" content="30">' in await response.text()
    assert "No API errors" in got.text


def _hostile_body(envelope: str) -> dict[str, Any]:
    """An error body that echoes the token and a stream key in every message field."""
    echo = f"bad request for Bearer {TOKEN} with stream_key {STREAM_KEY_PREFIX}ls-1"
    if envelope == "gateway":
        return {"success": False, "errors": [{"code": 10000, "message": echo}], "result": None}
    return {"success": False, "error": {"code": 400, "message": echo}, "stream_key": echo}


async def test_secrets_echoed_in_error_bodies_never_reach_the_page(
    served: tuple[Exporter, TestClient[Any, Any]], sim: Simulator
) -> None:
    """401, 429, 500 and 200-with-success-false answers whose bodies quote the token and a
    stream key: the errors are listed by reason and status, and neither secret shows."""
    exporter, client = served
    answer = sim.state.answer_next
    answer("livestreams", Canned(401, _hostile_body("gateway")))
    await exporter.poller.poll_once()
    answer("livestreams", Canned(429, _hostile_body("gateway"), headers={"Retry-After": "0"}))
    await exporter.poller.poll_once()
    answer("active_livestream_session", Canned(500, _hostile_body("service")), times=None)
    await exporter.poller.poll_once()  # ls-1 and ls-3 asked about
    sim.state.clear_answers()
    answer("livestreams", Canned(200, _hostile_body("service")))
    await exporter.poller.poll_once()
    body = await (await client.get("/")).read()
    assert TOKEN.encode() not in body and STREAM_KEY_PREFIX.encode() not in body
    assert b"rtmps://" not in body
    got = Page(body.decode())
    assert [(row[4], row[5]) for row in got.errors] == [
        ("http_error", "the API answered with an error (HTTP 200)"),
        ("http_error", "the API answered with an error (HTTP 500)"),
        ("http_error", "the API answered with an error (HTTP 500)"),
        ("rate_limited", "throttled by the API (HTTP 429), pausing requests for 0 s"),
        ("auth", "the API rejected the token (HTTP 401)"),
    ]
    assert [row[3] for row in got.errors] == [
        ENDPOINT_LISTING,
        ENDPOINT_SESSION,
        ENDPOINT_SESSION,
        ENDPOINT_LISTING,
        ENDPOINT_LISTING,
    ]
    assert got.apps[(ACCOUNT, APP)]["state"] == "down"


async def test_page_without_a_status_source_is_the_empty_page() -> None:
    """create_app without a status source (as /metrics-only callers use it) still serves
    the landing page, saying no poll has completed."""
    app_ = create_app(registry=CollectorRegistry(), ready=lambda: True)
    async with TestClient(TestServer(app_, host="127.0.0.1")) as client:
        response = await client.get("/")
        assert response.status == 200
        text = await response.text()
        assert "No poll yet" in text and f"version {__version__}" in text


async def test_the_served_page_shows_each_credentials_budget_as_polling_left_it(
    served: tuple[Exporter, TestClient[Any, Any]], sim: Simulator
) -> None:
    """The credentials table of a running exporter: the configured budget, the requests
    it grants after the cycle's, the API's Ratelimit remaining, and the plan."""
    exporter, client = served
    before = Page(await (await client.get("/")).text())
    assert before.table("credentials") == [
        ["default", "1", "30 s", "1000 per 300 s", "1000", "not stated", "— (no cycle yet)"]
    ]
    await exporter.poller.poll_once()
    got = Page(await (await client.get("/")).text())
    spent = sent(sim)
    assert spent > 0
    assert got.table("credentials") == [
        [
            "default",
            "1",
            "30 s",
            "1000 per 300 s",
            str(1000 - spent),
            str(exporter.metrics.remaining["default"]),
            "every stream each cycle",
        ]
    ]


@pytest.mark.parametrize(
    ("token", "shown"),
    [
        (TOKEN, "error: RTMP auth failed for key <redacted> (Bearer <redacted>)"),
        # A token too short to look like a secret is caught by the client: all withheld.
        ("tok-short1", "error: message withheld: it quotes the API token"),
    ],
    ids=["long-token", "short-token"],
)
async def test_a_session_error_that_quotes_secrets_is_shown_without_them(
    token: str, shown: str
) -> None:
    """A session that fails with an err_message quoting its stream key and the API token:
    the page shows the message with both redacted, and neither secret."""
    async with api_simulator(token) as simulator:
        add_stream(simulator, "ls-1", name="Main stage")
        go_live(simulator, "ls-1")
        config = make_config(simulator.base_url, streams=("ls-1",), token=token)
        async for exporter, client in serve(config):
            await exporter.poller.poll_once()
            key = simulator.world.find("ls-1").stream_key
            simulator.world.fail("ls-1", message=f"RTMP auth failed for key {key} (Bearer {token})")
            await exporter.poller.poll_once()  # the stop, and the session's final values
            body = await (await client.get("/")).text()
            assert key not in body and token not in body
            row = Page(body).rows["ls-1"]
            assert row["status"] == "ERRORED"
            assert row["last-session"].endswith(shown), row
