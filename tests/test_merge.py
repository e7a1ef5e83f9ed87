"""The rules that turn one cycle's answers and the previous state into the new state."""

from __future__ import annotations

from exporter import merge
from exporter.config import AppConfig, LivestreamConfig
from exporter.model import ActiveSession, AppState, Listing, Livestream, Session, StreamState

NOW = 1_000_000.0
STALE = 300.0
APP = AppConfig(
    account_id="a",
    app_id="b",
    livestreams=(LivestreamConfig("s1", expect_live=True), LivestreamConfig("s2")),
)
DISCOVER = AppConfig(account_id="a", app_id="b", discover=True)
ACTIVE = Session(id="x", started_time=NOW - 60, ingest_seconds=50.0, viewer_seconds=70.0)
STOPPED = Session(
    id="x", started_time=NOW - 60, stopped_time=NOW - 5, ingest_seconds=55.0, viewer_seconds=90.0
)


def listing(*streams: tuple[str, str]) -> Listing:
    return Listing(livestreams=tuple(Livestream(id=i, status=s) for i, s in streams))


def state(*streams: StreamState, up: bool = True) -> AppState:
    return AppState(account_id="a", app_id="b", up=up, last_success=NOW - 30, streams=streams)


def live_state(stream_id: str, *, at: float = NOW - 30) -> StreamState:
    return StreamState(Livestream(stream_id, "LIVE"), live=True, session=ACTIVE, last_update=at)


def test_configured_app_tracks_only_configured_streams_that_are_listed() -> None:
    """A configured app exports its listed configured streams and nothing else."""
    got = merge.tracked(APP, listing(("s1", "IDLE"), ("other", "LIVE")))
    assert [s.id for s in got] == ["s1"]
    assert merge.missing(APP, listing(("s1", "IDLE"))) == ["s2"]


def test_discovering_app_tracks_every_listed_stream() -> None:
    """discover: true tracks whatever the listing returns."""
    got = merge.tracked(DISCOVER, listing(("s1", "IDLE"), ("other", "LIVE")))
    assert [s.id for s in got] == ["s1", "other"]


def test_plan_asks_sessions_only_where_the_listing_allows_a_live_session() -> None:
    """Session requests go to LIVE and unknown statuses; just-stopped streams get a final fetch."""
    streams = merge.tracked(
        DISCOVER,
        listing(
            ("s1", "LIVE"), ("s2", "IDLE"), ("s3", "OFFLINE"), ("s4", "PAUSED"), ("s5", "IDLE")
        ),
    )
    prev = state(live_state("s2"), live_state("s4"))
    got = merge.plan(streams, prev)
    assert got.active == ("s1", "s4")
    assert dict(got.final) == {"s2": "x"}
    first = merge.plan(streams, None)
    assert first.active == ("s1", "s4") and not first.final


def test_plan_skips_the_final_fetch_when_no_session_was_ever_seen() -> None:
    """A stream that was live without a known session has nothing to ask for by id."""
    prev = state(StreamState(Livestream("s1", "LIVE"), live=True, session=None, last_update=NOW))
    got = merge.plan(merge.tracked(APP, listing(("s1", "IDLE"))), prev)
    assert not got.active and not got.final


def test_active_session_makes_stream_live_with_its_values() -> None:
    """A fetched active session sets live=1 and carries its counters."""
    got = merge.merge_app(
        APP,
        None,
        listing(("s1", "LIVE")),
        {"s1": ActiveSession(None, ACTIVE)},
        now=NOW,
        max_staleness=STALE,
        ok=True,
    )
    (s1,) = got.streams
    assert s1.live and s1.session == ACTIVE and s1.session_current
    assert s1.expected_live is True and s1.last_update == NOW
    assert got.up and got.last_success == NOW


def test_stopped_session_captures_final_values_and_is_not_live() -> None:
    """The final fetch after a stream leaves LIVE keeps the stopped session's final values."""
    got = merge.merge_app(
        APP,
        state(live_state("s1")),
        listing(("s1", "IDLE")),
        {"s1": ActiveSession(Livestream("s1", "IDLE"), STOPPED)},
        now=NOW,
        max_staleness=STALE,
        ok=True,
    )
    (s1,) = got.streams
    assert not s1.live and s1.session == STOPPED and not s1.session_current
    assert s1.livestream.status == "IDLE"


def test_no_active_session_keeps_the_last_seen_session() -> None:
    """A 404 after LIVE means not live; the last seen counters stay exported."""
    got = merge.merge_app(
        APP,
        state(live_state("s1")),
        listing(("s1", "IDLE")),
        {"s1": ActiveSession(None, None)},
        now=NOW,
        max_staleness=STALE,
        ok=True,
    )
    (s1,) = got.streams
    assert not s1.live and s1.session == ACTIVE and not s1.session_current


def test_session_endpoint_status_overrides_the_listing() -> None:
    """The session answer is fresher than the listing, so its status wins."""
    got = merge.merge_app(
        APP,
        None,
        listing(("s1", "LIVE")),
        {"s1": ActiveSession(Livestream("s1", "ERRORED"), None)},
        now=NOW,
        max_staleness=STALE,
        ok=True,
    )
    assert got.streams[0].livestream.status == "ERRORED"


def test_failed_listing_keeps_last_values_and_marks_app_down() -> None:
    """An API failure never turns live to 0: the previous streams stay, app up=0."""
    prev = state(live_state("s1"))
    got = merge.merge_app(APP, prev, None, {}, now=NOW, max_staleness=STALE, ok=False)
    assert not got.up and got.last_success == prev.last_success
    assert got.streams[0].live and got.streams[0].session == ACTIVE
    assert got.streams[0].last_update == NOW - 30


def test_failed_listing_drops_streams_older_than_max_staleness() -> None:
    """Past max_staleness the kept values are dropped, stream by stream."""
    prev = state(live_state("s1", at=NOW - STALE - 1), live_state("s2", at=NOW - 10))
    got = merge.merge_app(APP, prev, None, {}, now=NOW, max_staleness=STALE, ok=False)
    assert [s.id for s in got.streams] == ["s2"]


def test_failed_session_fetch_keeps_live_while_listing_says_live() -> None:
    """A failed session fetch keeps the old counters and liveness; only their age grows."""
    prev = state(live_state("s1"))
    got = merge.merge_app(
        APP, prev, listing(("s1", "LIVE")), {"s1": None}, now=NOW, max_staleness=STALE, ok=False
    )
    (s1,) = got.streams
    assert s1.live and s1.session == ACTIVE and s1.last_update == NOW - 30
    assert not got.up


def test_failed_session_fetches_age_out_the_counters_but_never_the_stream() -> None:
    """Session requests failing past max_staleness drop the counters; the stream stays LIVE."""
    prev = state(live_state("s1", at=NOW - STALE - 1))
    got = merge.merge_app(
        APP, prev, listing(("s1", "LIVE")), {"s1": None}, now=NOW, max_staleness=STALE, ok=False
    )
    (s1,) = got.streams
    assert s1.live and s1.session is None and s1.last_update == NOW - STALE - 1
    again = merge.merge_app(
        APP, got, listing(("s1", "LIVE")), {"s1": None}, now=NOW + 30, max_staleness=STALE, ok=False
    )
    assert again.streams == (s1,)


def test_failed_fetch_of_unknown_status_keeps_the_previous_liveness() -> None:
    """An unknown status cannot say whether the stream is live: the last answer stands."""
    got = merge.merge_app(
        APP,
        state(live_state("s1")),
        listing(("s1", "RECONNECTING")),
        {"s1": None},
        now=NOW,
        max_staleness=STALE,
        ok=False,
    )
    assert got.streams[0].live and got.streams[0].livestream.status == "RECONNECTING"


def test_final_fetch_reports_final_values_and_follows_the_listing() -> None:
    """The session by id gives final counters; liveness follows the listing even if it lags."""
    lagging = Session(id="x", started_time=NOW - 60, ingest_seconds=58.0)
    for outcome, ingest in ((STOPPED, 55.0), (lagging, 58.0)):
        got = merge.merge_app(
            APP,
            state(live_state("s1")),
            listing(("s1", "IDLE")),
            {"s1": ActiveSession(None, outcome)},
            now=NOW,
            max_staleness=STALE,
            ok=True,
            final={"s1"},
        )
        (s1,) = got.streams
        assert not s1.live and s1.session is not None and s1.session.ingest_seconds == ingest


def test_final_fetch_not_found_keeps_the_last_seen_values() -> None:
    """If the session by id is gone, the values seen while live stay exported."""
    got = merge.merge_app(
        APP,
        state(live_state("s1")),
        listing(("s1", "IDLE")),
        {"s1": ActiveSession(None, None)},
        now=NOW,
        max_staleness=STALE,
        ok=True,
        final={"s1"},
    )
    assert not got.streams[0].live and got.streams[0].session == ACTIVE


def test_unknown_status_from_the_session_endpoint_does_not_override_the_listing() -> None:
    """A status the session endpoint leaves unreadable never replaces a readable one."""
    got = merge.merge_app(
        APP,
        None,
        listing(("s1", "LIVE")),
        {"s1": ActiveSession(Livestream("s1", "UNKNOWN"), ACTIVE)},
        now=NOW,
        max_staleness=STALE,
        ok=True,
    )
    assert got.streams[0].livestream.status == "LIVE" and got.streams[0].live


def test_failed_final_fetch_follows_the_listing() -> None:
    """If the listing says a stream left LIVE, a failed final fetch still reports not live."""
    got = merge.merge_app(
        APP,
        state(live_state("s1")),
        listing(("s1", "IDLE")),
        {"s1": None},
        now=NOW,
        max_staleness=STALE,
        ok=False,
    )
    assert not got.streams[0].live and got.streams[0].session == ACTIVE


def test_stream_no_longer_listed_disappears_at_once() -> None:
    """A successful listing without the stream removes it immediately."""
    prev = state(live_state("s1"), live_state("s2"))
    got = merge.merge_app(
        APP,
        prev,
        listing(("s2", "LIVE")),
        {"s2": ActiveSession(None, ACTIVE)},
        now=NOW,
        max_staleness=STALE,
        ok=True,
    )
    assert [s.id for s in got.streams] == ["s2"]


def test_stream_removed_from_config_disappears_even_when_listing_fails() -> None:
    """Kept stale values only cover streams the config still tracks."""
    prev = state(live_state("s1"), live_state("gone"))
    got = merge.merge_app(APP, prev, None, {}, now=NOW, max_staleness=STALE, ok=False)
    assert [s.id for s in got.streams] == ["s1"]
    assert got.streams[0].expected_live is True


def test_streams_are_sorted_by_id() -> None:
    """Output order is stable whatever the listing order."""
    got = merge.merge_app(
        DISCOVER,
        None,
        listing(("z", "IDLE"), ("a", "IDLE"), ("m", "OFFLINE")),
        {},
        now=NOW,
        max_staleness=STALE,
        ok=True,
    )
    assert [s.id for s in got.streams] == ["a", "m", "z"]
