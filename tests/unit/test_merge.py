"""The rules that turn one cycle's answers and the previous state into the new state.

Most tests drive whole cycles the way the poller does: plan the requests from the listing
and the previous state, answer exactly those, merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from exporter import merge
from exporter.config import AppConfig, LivestreamConfig
from exporter.model import (
    ActiveSession,
    AppState,
    Listing,
    Livestream,
    Session,
    StreamState,
    Unlisted,
)

T0 = 1_000_000.0
STALE = 90.0
STEP = 30.0
APP = AppConfig(
    account_id="a",
    app_id="b",
    livestreams=(LivestreamConfig("s1", expect_live=True), LivestreamConfig("s2")),
)
DISCOVER = AppConfig(account_id="a", app_id="b", discover=True)


def session(sid: str = "x1", *, ingest: float = 50.0, stopped: bool = False) -> Session:
    return Session(
        id=sid,
        started_time=T0 - 60,
        stopped_time=T0 + 10 if stopped else None,
        ingest_seconds=ingest,
        viewer_seconds=2 * ingest,
    )


def listing(*streams: tuple[str, str]) -> Listing:
    return Listing(livestreams=tuple(Livestream(id=i, status=s) for i, s in streams))


@dataclass
class Api:
    """Answers to the requests a plan makes; a missing answer is a failed request."""

    active: dict[str, ActiveSession] = field(default_factory=dict)
    by_id: dict[str, ActiveSession] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)


class Cycles:
    """Runs plan + merge cycle after cycle, STEP seconds apart."""

    def __init__(self, app: AppConfig = APP) -> None:
        self.app = app
        self.state: AppState | None = None
        self.now = T0

    def run(self, statuses: dict[str, str] | None, api: Api | None = None) -> AppState:
        """One cycle; ``statuses`` None means the listing failed."""
        api = api or Api()
        self.now += STEP
        if statuses is None:
            self.state = merge.merge_app(
                self.app, self.state, None, {}, now=self.now, max_staleness=STALE, ok=False
            )
            return self.state
        lst = listing(*statuses.items())
        plan = merge.plan(
            merge.tracked(self.app, lst), self.state, now=self.now, max_staleness=STALE
        )
        sessions: dict[str, merge.SessionOutcome] = {}
        for sid in plan.active:
            api.asked.append(("active", sid))
            sessions[sid] = api.active.get(sid)
        for sid, session_id in plan.final.items():
            api.asked.append(("by_id", session_id))
            sessions[sid] = api.by_id.get(session_id)
        self.state = merge.merge_app(
            self.app,
            self.state,
            lst,
            sessions,
            now=self.now,
            max_staleness=STALE,
            ok=all(v is not None for v in sessions.values()),
            final=plan.final.keys(),
        )
        return self.state

    def stream(self, sid: str = "s1") -> StreamState | None:
        assert self.state is not None
        return self.state.stream(sid)


def live(sid: str = "x1", *, ingest: float = 50.0) -> Api:
    return Api(active={"s1": ActiveSession(Livestream("s1", "LIVE"), session(sid, ingest=ingest))})


NOT_FOUND = ActiveSession(None, None)


# --- what is tracked and what is asked ------------------------------------------------


def test_configured_app_tracks_only_configured_streams_that_are_listed() -> None:
    """A configured app exports its listed configured streams and nothing else."""
    got = merge.tracked(APP, listing(("s1", "IDLE"), ("other", "LIVE")))
    assert [s.id for s in got] == ["s1"]
    assert merge.missing(APP, listing(("s1", "IDLE"))) == ["s2"]


def test_discovering_app_tracks_every_listed_stream() -> None:
    """discover: true tracks whatever the listing returns."""
    got = merge.tracked(DISCOVER, listing(("s1", "IDLE"), ("other", "LIVE")))
    assert [s.id for s in got] == ["s1", "other"]


def test_sessions_are_asked_only_where_the_listing_allows_a_live_session() -> None:
    """LIVE and unknown statuses cost a session request; IDLE, ERRORED, INVOKED, OFFLINE none."""
    api = Api()
    Cycles(DISCOVER).run(
        {"a": "LIVE", "b": "IDLE", "c": "ERRORED", "d": "INVOKED", "e": "OFFLINE", "f": "NEW"},
        api,
    )
    assert api.asked == [("active", "a"), ("active", "f")]


def test_listed_streams_are_sorted_by_id_with_their_expectation() -> None:
    """Output order is stable whatever the listing order; expect_live comes from config."""
    c = Cycles(APP)
    c.run({"s2": "IDLE", "s1": "OFFLINE"})
    assert c.state is not None
    assert [(s.id, s.expected_live) for s in c.state.streams] == [("s1", True), ("s2", None)]


def test_streams_whose_ids_are_not_addressable_are_never_asked_about() -> None:
    """Whatever their status or last session, "." and ".." get no session request."""
    prev = AppState(
        "a",
        "b",
        up=True,
        last_success=T0,
        streams=(StreamState(Livestream("..", "LIVE"), True, session(), T0, last_live=T0),),
    )
    streams = [Livestream(".", "LIVE"), Livestream("..", "IDLE"), Livestream("s1", "NEW")]
    plan = merge.plan(streams, prev, now=T0 + STEP, max_staleness=STALE)
    assert plan == merge.Plan(active=("s1",), final={})


def test_streams_whose_ids_are_not_addressable_are_exported_from_the_listing() -> None:
    """Such a stream has its listed status, is live exactly when listed LIVE, has no session
    values, is fresh every cycle, and leaves the app up."""
    c = Cycles(DISCOVER)
    listings = [
        {".": "LIVE", "..": "IDLE", "s1": "IDLE"},
        {".": "LIVE", "..": "NEW", "s1": "IDLE"},
        {".": "OFFLINE", "..": "LIVE", "s1": "IDLE"},
    ]
    for statuses in listings:
        api = Api()
        state = c.run(statuses, api)
        assert api.asked == [] and state.up
        for sid in (".", ".."):
            got = c.stream(sid)
            assert got is not None and got.livestream.status == statuses[sid]
            assert got.live == (statuses[sid] == "LIVE")
            assert got.session is None and got.last_update == c.now


# --- live, stop, final values -----------------------------------------------------------


def test_active_session_makes_stream_live_with_its_values() -> None:
    """An active session sets live=1 and carries its counters."""
    c = Cycles()
    state = c.run({"s1": "LIVE"}, live(ingest=70))
    s1 = c.stream()
    assert s1 is not None and s1.live and s1.session_current
    assert s1.session is not None and s1.session.ingest_seconds == 70
    assert state.up and state.last_success == c.now and s1.last_live == c.now


def test_stop_fetches_the_session_by_id_for_its_final_values() -> None:
    """When the listing shows the stop, the session is asked by id and its final values kept."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live(ingest=70))
    api = Api(by_id={"x1": ActiveSession(None, session(ingest=130, stopped=True))})
    c.run({"s1": "IDLE"}, api)
    s1 = c.stream()
    assert api.asked == [("by_id", "x1")]
    assert s1 is not None and not s1.live and s1.session is not None
    assert s1.session.ingest_seconds == 130 and not s1.session.active
    later = Api()
    c.run({"s1": "IDLE"}, later)
    assert later.asked == []


def test_stop_seen_first_by_the_active_endpoint_still_gets_final_values() -> None:
    """A 404 from the active endpoint while still listed LIVE, then IDLE: final values come."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live(ingest=100))
    c.run({"s1": "LIVE"}, Api(active={"s1": NOT_FOUND}))
    s1 = c.stream()
    assert s1 is not None and not s1.live and s1.session is not None
    assert s1.session.ingest_seconds == 100
    api = Api(by_id={"x1": ActiveSession(None, session(ingest=130, stopped=True))})
    c.run({"s1": "IDLE"}, api)
    s1 = c.stream()
    assert api.asked == [("by_id", "x1")]
    assert s1 is not None and s1.session is not None and s1.session.ingest_seconds == 130


def test_failed_final_fetch_is_retried_next_cycle() -> None:
    """A by-id request that fails keeps the values seen and is asked again."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live(ingest=100))
    state = c.run({"s1": "IDLE"}, Api())
    s1 = c.stream()
    assert not state.up and s1 is not None and not s1.live
    assert s1.session is not None and s1.session.ingest_seconds == 100
    api = Api(by_id={"x1": ActiveSession(None, session(ingest=130, stopped=True))})
    c.run({"s1": "IDLE"}, api)
    s1 = c.stream()
    assert api.asked == [("by_id", "x1")]
    assert s1 is not None and s1.session is not None and s1.session.ingest_seconds == 130


def test_lagging_final_values_are_asked_until_the_stop_time_arrives() -> None:
    """A by-id answer without a stop time is not final: it is asked again next cycle."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live(ingest=60))
    lagging = Api(by_id={"x1": ActiveSession(None, session(ingest=60))})
    c.run({"s1": "IDLE"}, lagging)
    final = Api(by_id={"x1": ActiveSession(None, session(ingest=1800, stopped=True))})
    c.run({"s1": "IDLE"}, final)
    s1 = c.stream()
    assert final.asked == [("by_id", "x1")]
    assert s1 is not None and s1.session is not None and s1.session.ingest_seconds == 1800
    done = Api()
    c.run({"s1": "IDLE"}, done)
    assert done.asked == []


def test_final_values_are_not_asked_for_past_max_staleness() -> None:
    """Asking by id stops max_staleness after the stream was last seen live."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live())
    asked = []
    for _ in range(5):
        api = Api()
        c.run({"s1": "IDLE"}, api)
        asked.append(len(api.asked))
    assert asked == [1, 1, 1, 0, 0]


def test_session_gone_by_id_keeps_the_last_values_and_stops_asking() -> None:
    """A by-id 404 keeps the values seen while live, marks the session ended, asks no more."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live(ingest=100))
    c.run({"s1": "IDLE"}, Api(by_id={"x1": NOT_FOUND}))
    s1 = c.stream()
    assert s1 is not None and s1.session is not None
    assert s1.session.ingest_seconds == 100 and s1.session.ended and not s1.session.active
    api = Api()
    c.run({"s1": "IDLE"}, api)
    assert api.asked == []


@pytest.mark.parametrize("sid", ["..", ".", ""], ids=["dotdot", "dot", "empty"])
def test_session_whose_id_is_not_addressable_ends_unasked_when_the_stream_stops(sid: str) -> None:
    """A stopped stream's last session that cannot be asked for by id is not asked for: it
    keeps the values seen while live and is ended, as one gone by id is."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live(sid, ingest=100))
    api = Api()
    state = c.run({"s1": "IDLE"}, api)
    s1 = c.stream()
    assert api.asked == [] and state.up
    assert s1 is not None and not s1.live and s1.session is not None
    assert s1.session.ingest_seconds == 100 and s1.session.ended and not s1.session.active


def test_session_endpoint_status_overrides_the_listing_unless_unreadable() -> None:
    """The session answer's status is fresher than the listing's, unless it has none."""
    c = Cycles()
    c.run({"s1": "LIVE"}, Api(active={"s1": ActiveSession(Livestream("s1", "ERRORED"), None)}))
    s1 = c.stream()
    assert s1 is not None and s1.livestream.status == "ERRORED"
    c.run({"s1": "LIVE"}, Api(active={"s1": ActiveSession(Livestream("s1", "UNKNOWN"), session())}))
    s1 = c.stream()
    assert s1 is not None and s1.livestream.status == "LIVE" and s1.live


def test_restart_replaces_the_session() -> None:
    """A new session after a stop is the one exported."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live("x1", ingest=100))
    c.run({"s1": "IDLE"}, Api(by_id={"x1": ActiveSession(None, session(stopped=True))}))
    c.run({"s1": "LIVE"}, live("x2", ingest=5))
    s1 = c.stream()
    assert s1 is not None and s1.live and s1.session is not None and s1.session.id == "x2"


# --- failures ---------------------------------------------------------------------------


def test_failed_listing_keeps_last_values_and_marks_app_down() -> None:
    """An API failure never turns live to 0: the previous streams stay, app up=0."""
    c = Cycles()
    first = c.run({"s1": "LIVE"}, live())
    state = c.run(None)
    s1 = c.stream()
    assert not state.up and state.last_success == first.last_success
    assert s1 is not None and s1.live and s1.session == session()


def test_failed_listing_drops_streams_not_listed_within_max_staleness() -> None:
    """Past max_staleness since the last listing, the kept streams go."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live())
    kept = [len(c.run(None).streams) for _ in range(4)]
    assert kept == [1, 1, 1, 0]


def test_failed_session_requests_age_out_counters_but_never_the_stream() -> None:
    """Session requests failing past max_staleness drop the counters; the stream stays LIVE."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live())
    seen = []
    for _ in range(5):
        c.run({"s1": "LIVE"}, Api())
        s1 = c.stream()
        assert s1 is not None
        seen.append((s1.live, s1.session is not None))
    assert seen == [(True, True)] * 3 + [(True, False)] * 2


def test_listing_failure_after_long_session_failures_keeps_the_stream() -> None:
    """What keeps a stream through a failed listing is when it was last listed."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live())
    for _ in range(5):
        c.run({"s1": "LIVE"}, Api())
    c.run(None)
    s1 = c.stream()
    assert s1 is not None and s1.live


def test_restart_with_a_failed_session_request_shows_no_old_session() -> None:
    """LIVE again after a stop, with the request failing: the ended session is not shown."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live("x1", ingest=3600))
    c.run({"s1": "IDLE"}, Api(by_id={"x1": ActiveSession(None, session(stopped=True))}))
    c.run({"s1": "LIVE"}, Api())
    s1 = c.stream()
    assert s1 is not None and s1.live and s1.session is None


def test_new_live_stream_whose_request_fails_is_live_without_values() -> None:
    """Listed LIVE but unanswerable: live=1 from the listing, no counters yet."""
    c = Cycles()
    c.run({"s1": "LIVE"}, Api())
    s1 = c.stream()
    assert s1 is not None and s1.live and s1.session is None


def test_unknown_status_with_failing_requests_is_held_only_while_fresh() -> None:
    """An unknown status says nothing: the last answer stands for max_staleness, then the
    stream is not exported until a request succeeds."""
    c = Cycles()
    c.run({"s1": "LIVE"}, live())
    exported = []
    for _ in range(5):
        c.run({"s1": "RECONNECTING"}, Api())
        s1 = c.stream()
        exported.append(None if s1 is None else s1.live)
    assert exported == [True, True, True, None, None]
    c.run({"s1": "RECONNECTING"}, live())
    s1 = c.stream()
    assert s1 is not None and s1.live


def test_unknown_status_without_any_answer_is_not_exported() -> None:
    """A new stream with an unknown status and a failed request is not guessed at."""
    c = Cycles()
    c.run({"s1": "RECONNECTING"}, Api())
    assert c.stream() is None


# --- membership -------------------------------------------------------------------------


def test_stream_no_longer_listed_disappears_at_once() -> None:
    """A successful listing without the stream removes it immediately."""
    c = Cycles(DISCOVER)
    c.run({"s1": "IDLE", "s2": "IDLE"})
    state = c.run({"s2": "IDLE"})
    assert [s.id for s in state.streams] == ["s2"]


def test_stream_removed_from_config_disappears_even_when_listing_fails() -> None:
    """Kept stale values only cover streams the config still tracks, with today's expectation."""
    c = Cycles(DISCOVER)
    c.run({"s1": "IDLE", "gone": "IDLE"})
    c.app = APP
    state = c.run(None)
    assert [(s.id, s.expected_live) for s in state.streams] == [("s1", True)]


# --- configured streams the listing lacks ------------------------------------------------


def test_configured_streams_missing_from_a_good_listing_are_unlisted_with_expectation() -> None:
    """A configured id the listing lacks is reported with its expect_live, sorted by id."""
    cycles = Cycles()
    state = cycles.run({"other": "LIVE"})
    assert state.unlisted == (Unlisted("s1", True), Unlisted("s2", None))
    state = cycles.run({"s1": "IDLE"})
    assert state.unlisted == (Unlisted("s2", None),)


def test_a_failed_listing_keeps_the_last_good_listings_word_on_unlisted_streams() -> None:
    """While the listing fails, a stream last seen missing stays unlisted; one last seen
    listed is not declared missing."""
    cycles = Cycles()
    cycles.run({"s2": "IDLE"})
    for _ in range(5):  # well past max_staleness
        state = cycles.run(None)
        assert state.unlisted == (Unlisted("s1", True),)
    assert state.stream("s2") is None  # dropped after max_staleness, not called missing


def test_unlisted_streams_follow_the_configuration() -> None:
    """A stream removed from the config is no longer reported, even on a failed listing."""
    cycles = Cycles()
    cycles.run({})
    cycles.app = AppConfig(account_id="a", app_id="b", livestreams=(LivestreamConfig("s2"),))
    state = cycles.run(None)
    assert state.unlisted == (Unlisted("s2", None),)


def test_discovering_app_without_configured_streams_has_none_unlisted() -> None:
    assert Cycles(DISCOVER).run({"x": "LIVE"}).unlisted == ()
