"""The simulated world on its own: determinism, the autopilot lifecycle, counters, control."""

from __future__ import annotations

import gc
import random
from dataclasses import fields
from itertools import pairwise
from typing import Any

import pytest

from exporter.simulator import DEMO, REALISTIC, World
from exporter.simulator.world import (
    MAX_SESSIONS,
    PLACEHOLDER_VALUE,
    Profile,
    SimSession,
    SimStream,
    WorldError,
)
from tests.clock import FakeClock

ACCOUNT = "acc-1"
APP = "app-1"
T0 = 1_800_000_000.0
# What the autopilot may go through: a stream rests, is invoked, goes live, stops.
RESTING = {"OFFLINE", "IDLE", "ERRORED"}
ALLOWED = {(rest, "INVOKED") for rest in RESTING} | {("INVOKED", "LIVE")}
ALLOWED |= {("LIVE", rest) for rest in RESTING}


def make_world(seed: int = 1, profile: Any = DEMO) -> tuple[World, FakeClock]:
    clock = FakeClock()
    return World(seed=seed, profile=profile, clock=clock), clock


def picture(world: World) -> list[tuple[Any, ...]]:
    """Everything observable about every stream and its sessions, at the world's now."""
    now = world.now()
    seen = []
    for s in world.all_streams():
        sessions = tuple(
            (
                x.id,
                x.started_time,
                x.stopped_time,
                x.invoked_time,
                x.err_message,
                x.ingest_seconds(now),
                x.viewer_seconds(now),
            )
            for x in s.sessions
        )
        seen.append(
            (
                s.account_id,
                s.app_id,
                s.id,
                s.name,
                s.meeting_id,
                s.stream_key,
                s.created_at,
                s.status,
                s.updated_at,
                s.manual,
                sessions,
            )
        )
    return seen


def live_session(stream: SimStream) -> SimSession:
    assert stream.session is not None
    return stream.session


# -- determinism ------------------------------------------------------------------------
def test_same_seed_and_clock_give_the_same_world() -> None:
    """Ids, names, keys, statuses, sessions and counters match reading for reading."""
    a, clock_a = make_world(seed=42)
    b, clock_b = make_world(seed=42)
    for world in (a, b):
        world.populate(ACCOUNT, APP, 40, live=8)
        world.populate(ACCOUNT, "app-2", 10, live=2)
    assert picture(a) == picture(b)
    for _ in range(120):
        clock_a.now += 7.5
        clock_b.now += 7.5
        assert picture(a) == picture(b)
    assert len({s[2] for s in picture(a)}) == 50
    assert any(len(s[-1]) > 1 for s in picture(a))  # sessions came and went meanwhile


def test_the_world_does_not_depend_on_how_often_it_is_read() -> None:
    """Reading every half second or only at the end gives the same world at the end."""
    fine, fine_clock = make_world(seed=3)
    coarse, coarse_clock = make_world(seed=3)
    fine.populate(ACCOUNT, APP, 20, live=5)
    coarse.populate(ACCOUNT, APP, 20, live=5)
    for _ in range(1200):
        fine_clock.now += 0.5
        fine.now()
    coarse_clock.now = fine_clock.now
    assert picture(fine) == picture(coarse)


def test_different_seeds_give_different_streams() -> None:
    a, _ = make_world(seed=1)
    b, _ = make_world(seed=2)
    a.populate(ACCOUNT, APP, 20)
    b.populate(ACCOUNT, APP, 20)
    ids_a = {s.id for s in a.all_streams()}
    ids_b = {s.id for s in b.all_streams()}
    assert len(ids_a) == len(ids_b) == 20
    assert not ids_a & ids_b
    assert not set(a.secrets()) & set(b.secrets())


def cycling(streams: list[SimStream]) -> list[SimStream]:
    """The streams on the autopilot (not taken over, not dormant)."""
    return [s for s in streams if not s.manual and s.next_change is not None]


@pytest.mark.parametrize(
    ("count", "live", "cycle"),
    # DEMO's live share is 65 / (65 + 20 + 3.5) = 0.734: round(live / 0.734) streams cycle.
    [(0, 0, 0), (1, 1, 1), (30, 0, 0), (30, 5, 7), (30, 22, 30), (30, 30, 30)],
)
def test_populate_makes_exactly_the_live_streams_asked_for(
    count: int, live: int, cycle: int
) -> None:
    """``live`` streams are live, just enough others cycle to keep about that many live,
    and the rest are dormant: resting, on no schedule, never live if OFFLINE."""
    world, clock = make_world()
    world.populate(ACCOUNT, APP, count, live=live)
    streams = world.streams(ACCOUNT, APP) or []
    assert len(streams) == count
    assert sum(s.status == "LIVE" for s in streams) == live
    assert sum(s.session is not None for s in streams) == live
    assert len(cycling(streams)) == cycle
    for s in streams:
        assert s.manual is False
        if s.session is not None:
            # Mid-session, past the placeholder: counters already count.
            assert not s.session.in_placeholder(world.now())
            assert s.next_change is not None
        else:
            assert s.status in ("OFFLINE", "IDLE")
            assert (s.status == "OFFLINE") == (not s.sessions)
    assert len(set(world.secrets())) == count
    dormant = [(s, s.status, s.updated_at, len(s.sessions)) for s in streams if not s.next_change]
    clock.now += 6 * 3600
    world.now()
    assert all((s.status, s.updated_at, len(s.sessions)) == tuple(rest) for s, *rest in dormant)


def test_live_share_of_a_profile() -> None:
    """The long-run share of time a cycling stream is live: mean live / mean cycle."""
    assert Profile(live=(10, 30), idle=(5, 15), invoked=(5, 15)).live_share() == 0.5
    assert REALISTIC.live_share() == pytest.approx(2100 / 3162.5)
    assert Profile(live=(0, 0), idle=(0, 0), invoked=(0, 0)).live_share() == 0.0


def test_the_live_count_stays_near_live_for_hours() -> None:
    """10,000 streams, --live 500, the realistic profile, watched for six simulated hours:
    the live count stays near 500 instead of drifting up to most streams.

    The profile's live share is s = 2100 / 3162.5 = 0.664, so N = round(500 / s) = 753
    streams cycle. Each is caught at a random moment of its cycle, so at any time each is
    live with probability s, independently: the live count is Binomial(753, 0.664), mean
    500, standard deviation sqrt(753 * s * (1 - s)) = 13. The band is five of those either
    side, [435, 565]; the mean over the hours is within 2%.
    """
    world, clock = make_world(seed=3, profile=REALISTIC)
    world.populate(ACCOUNT, APP, 10_000, live=500)
    streams = world.streams(ACCOUNT, APP) or []
    assert len(cycling(streams)) == 753
    counts = []
    for _ in range(6 * 60):
        clock.now += 60
        world.now()
        counts.append(sum(s.session is not None for s in streams))
    assert min(counts) >= 435 and max(counts) <= 565, (min(counts), max(counts))
    assert sum(counts) / len(counts) == pytest.approx(500, rel=0.02)
    assert len(set(counts)) > 20  # it does move


def test_the_first_changes_are_spread_out() -> None:
    """No change in the first quiet spell (half the shortest phase: 150 s here), then the
    resting cycling streams' first changes spread over the idle range, none of its minutes
    taking more than a tenth of them."""
    world, _ = make_world(profile=REALISTIC)
    world.populate(ACCOUNT, APP, 2000, live=400)
    resting = [
        s.next_change - T0
        for s in cycling(world.streams(ACCOUNT, APP) or [])
        if s.next_change and s.session is None
    ]
    assert len(resting) == round(400 / REALISTIC.live_share()) - 400
    assert all(150.0 <= t <= 150.0 + REALISTIC.idle[1] for t in resting)
    per_minute = [sum(m * 60 <= t - 150.0 < (m + 1) * 60 for t in resting) for m in range(30)]
    assert max(per_minute) <= len(resting) / 10, per_minute
    live = [s.next_change - T0 for s in world.all_streams() if s.session and s.next_change]
    assert min(live) >= 150.0 and max(live) > 3000.0


def test_sessions_are_bounded_over_a_day() -> None:
    """A day of 10,000 streams leaves each with at most MAX_SESSIONS sessions, and the
    world holds no more than those (older ones are forgotten, also by id)."""
    world, clock = make_world(seed=2, profile=REALISTIC)
    world.populate(ACCOUNT, APP, 10_000, live=500)
    streams = world.streams(ACCOUNT, APP) or []
    active = len(cycling(streams))
    for _ in range(24):
        clock.now += 3600
        world.now()
    held = sum(len(s.sessions) for s in streams)
    assert world.session_count() == held
    assert max(len(s.sessions) for s in streams) == MAX_SESSIONS
    assert held <= active * MAX_SESSIONS + (len(streams) - active)


def test_a_stream_keeps_its_last_sessions_only() -> None:
    world, clock = make_world()
    (stream,) = _manual_streams(world, 1)
    started = []
    for _ in range(MAX_SESSIONS + 5):
        started.append(world.go_live(stream.id))
        clock.now += 60
        world.stop(stream.id)
        clock.now += 10
    assert stream.sessions == started[-MAX_SESSIONS:]
    assert world.session_count() == MAX_SESSIONS
    assert all(world.session(ACCOUNT, APP, x.id) is None for x in started[:5])
    assert all(world.session(ACCOUNT, APP, x.id) is x for x in started[5:])


def test_autopilot_wakes_a_dormant_stream() -> None:
    world, clock = make_world()
    world.populate(ACCOUNT, APP, 5, live=1)
    dormant = next(s for s in world.all_streams() if s.next_change is None)
    before = len(dormant.sessions)
    world.resume(dormant.id)
    assert dormant.next_change is not None and not dormant.manual
    clock.now += 600
    world.now()
    assert len(dormant.sessions) > before


def test_a_lagging_listing_shows_the_previous_status_for_a_while() -> None:
    world, clock = make_world()
    (stream,) = _manual_streams(world, 1)
    created = stream.updated_at
    assert stream.listed(clock.now, 30.0) == ("OFFLINE", created)
    clock.now += 100
    world.go_live(stream.id)
    assert stream.listed(clock.now, 0.0) == ("LIVE", T0 + 100)
    assert stream.listed(clock.now + 29.9, 30.0) == ("OFFLINE", created)
    assert stream.listed(clock.now + 30.0, 30.0) == ("LIVE", T0 + 100)
    clock.now += 50
    world.stop(stream.id)
    assert stream.listed(clock.now + 10, 30.0) == ("LIVE", T0 + 100)
    assert stream.listed(clock.now + 30, 30.0) == ("IDLE", T0 + 150)


def test_a_stream_repr_holds_no_stream_key() -> None:
    world, _ = make_world()
    world.populate(ACCOUNT, APP, 3, live=1)
    for stream in world.all_streams():
        assert stream.stream_key not in repr(stream)
        assert stream.id in repr(stream)


@pytest.mark.parametrize(("count", "live"), [(3, 4), (3, -1), (-1, 0)])
def test_populate_rejects_impossible_live_counts(count: int, live: int) -> None:
    world, _ = make_world()
    with pytest.raises(WorldError):
        world.populate(ACCOUNT, APP, count, live=live)
    assert world.streams(ACCOUNT, APP) is None


# -- the autopilot ----------------------------------------------------------------------
def test_autopilot_lifecycle_over_simulated_time() -> None:
    """Every stream cycles rest -> INVOKED -> LIVE -> rest, phases as long as the profile
    says, an ERRORED stop with an err_message and other stops without one."""
    world, clock = make_world(seed=7)
    world.populate(ACCOUNT, APP, 20, live=15)  # at DEMO's live share, all 20 cycle
    streams = world.streams(ACCOUNT, APP)
    assert streams is not None and len(cycling(streams)) == 20
    history: dict[str, list[tuple[str, float]]] = {
        s.id: [(s.status, s.updated_at)] for s in streams
    }
    for _ in range(1200):  # ten simulated minutes, every half second
        clock.now += 0.5
        world.now()
        for s in streams:
            assert (s.status == "LIVE") == (s.session is not None)
            if history[s.id][-1][0] != s.status:
                history[s.id].append((s.status, s.updated_at))
                if s.status in RESTING:
                    last = s.sessions[-1]
                    assert last.stopped_time == s.updated_at
                    if s.status == "ERRORED":
                        assert last.err_message
                    else:
                        assert last.err_message is None
                if s.status == "LIVE":
                    assert live_session(s).started_time == s.updated_at

    stops: set[str] = set()
    p = DEMO
    for sid, seen in history.items():
        statuses = [status for status, _ in seen]
        for step in pairwise(statuses):
            assert step in ALLOWED, (sid, statuses)
        # At least one whole cycle, watched from rest to rest.
        windows = zip(statuses, statuses[1:], statuses[2:], statuses[3:], strict=False)
        assert any(
            w[0] in RESTING and w[1:3] == ("INVOKED", "LIVE") and w[3] in RESTING for w in windows
        ), (sid, statuses)
        stops |= {after for before, after in pairwise(statuses) if before == "LIVE"}
        # Phases that began while watched last as long as the profile says.
        for (status, began), (_, ended) in pairwise(seen[1:]):
            span = {"INVOKED": p.invoked, "LIVE": p.live}.get(status, p.idle)
            assert span[0] <= ended - began <= span[1], (sid, status, ended - began)
    assert stops == RESTING  # over 20 streams and ten minutes, every kind of stop happens


def test_counters_over_a_session() -> None:
    """60 during the placeholder, then ingest = elapsed and viewer_seconds rising at the
    session's viewer rate; both freeze at their final values once stopped."""
    world, clock = make_world(seed=11)
    (stream,) = _manual_streams(world, 1)
    session = world.go_live(stream.id)
    started = session.started_time
    assert started == T0 and DEMO.placeholder[0] <= session.placeholder <= DEMO.placeholder[1]
    low = session.viewers * (1 - session.wave)
    high = session.viewers * (1 + session.wave)
    assert 0 < low < high

    previous = None
    for step in range(1, 401):  # 100 s in quarter seconds
        clock.now = started + step / 4
        elapsed = clock.now - started
        ingest = session.ingest_seconds(world.now())
        viewer = session.viewer_seconds(world.now())
        if elapsed < session.placeholder:
            assert ingest == viewer == PLACEHOLDER_VALUE
            continue
        assert ingest == pytest.approx(elapsed, abs=1e-6)
        assert low * elapsed <= viewer <= high * elapsed
        if previous is not None:
            assert viewer > previous
            assert low * 0.25 * 0.999 <= viewer - previous <= high * 0.25 * 1.001
        previous = viewer

    world.stop(stream.id)
    final = (session.ingest_seconds(clock.now), session.viewer_seconds(clock.now))
    assert final[0] == pytest.approx(100.0)
    assert session.stopped_time == clock.now
    for later in (1.0, 60.0, 86400.0):
        clock.now += later
        assert (session.ingest_seconds(world.now()), session.viewer_seconds(world.now())) == final


def test_counters_of_autopilot_sessions() -> None:
    """The same rules hold for every session the autopilot runs."""
    world, clock = make_world(seed=5)
    world.populate(ACCOUNT, APP, 15, live=3)
    last_viewer: dict[str, float] = {}
    checked = 0
    for _ in range(600):
        clock.now += 1.0
        now = world.now()
        for s in world.all_streams():
            session = s.session
            if session is None:
                continue
            elapsed = now - session.started_time
            ingest, viewer = session.ingest_seconds(now), session.viewer_seconds(now)
            if elapsed < session.placeholder:
                assert ingest == viewer == PLACEHOLDER_VALUE
                continue
            checked += 1
            assert ingest == pytest.approx(elapsed, abs=1e-6)
            slope = viewer / elapsed
            assert session.viewers * (1 - session.wave) <= slope
            assert slope <= session.viewers * (1 + session.wave)
            assert viewer > last_viewer.get(session.id, 0.0)
            last_viewer[session.id] = viewer
    assert checked > 1000


def test_a_session_stopped_in_its_placeholder_keeps_reading_60() -> None:
    world, clock = make_world()
    (stream,) = _manual_streams(world, 1)
    session = world.go_live(stream.id)
    clock.now += 3
    world.fail(stream.id, message="boom")
    clock.now += 600
    world.now()
    assert session.ingest_seconds(clock.now) == session.viewer_seconds(clock.now) == 60.0
    assert (stream.status, session.err_message, session.stopped_time) == ("ERRORED", "boom", T0 + 3)


def test_stall_freezes_ingest_while_viewers_keep_counting() -> None:
    world, clock = make_world(seed=2)
    (stream,) = _manual_streams(world, 1)
    session = world.go_live(stream.id)
    clock.now += 30
    world.stall(stream.id)
    frozen = session.ingest_seconds(world.now())
    assert frozen == pytest.approx(30.0)
    viewer = session.viewer_seconds(clock.now)
    for _ in range(4):
        clock.now += 10
        assert session.ingest_seconds(world.now()) == pytest.approx(frozen)
        assert session.viewer_seconds(clock.now) > viewer
        viewer = session.viewer_seconds(clock.now)
    world.stall(stream.id)  # stalling again changes nothing
    world.stall(stream.id, stalled=False)
    clock.now += 15
    assert session.ingest_seconds(world.now()) == pytest.approx(45.0)
    # A second stall, still running at the stop, is counted into the final value.
    world.stall(stream.id)
    clock.now += 20
    world.stop(stream.id)
    clock.now += 100
    assert session.ingest_seconds(world.now()) == pytest.approx(45.0)
    assert session.stopped_time == T0 + 30 + 40 + 15 + 20


# -- control ----------------------------------------------------------------------------
def _manual_streams(world: World, count: int) -> list[SimStream]:
    return [world.create(ACCOUNT, APP, name=f"s{i}") for i in range(count)]


def test_create_makes_an_offline_manual_stream() -> None:
    world, _ = make_world()
    stream = world.create(ACCOUNT, APP, livestream_id="mine", name="Mine", meeting_id="m-1")
    assert (stream.id, stream.name, stream.meeting_id) == ("mine", "Mine", "m-1")
    assert (stream.status, stream.manual, stream.sessions, stream.next_change) == (
        "OFFLINE",
        True,
        [],
        None,
    )
    assert world.find("mine") is stream
    assert world.stream(ACCOUNT, APP, "mine") is stream
    assert world.stream(ACCOUNT, "other-app", "mine") is None
    assert world.has_account(ACCOUNT) and not world.has_account("nobody")
    assert world.apps() == [(ACCOUNT, APP)]
    with pytest.raises(WorldError):
        world.create(ACCOUNT, APP, livestream_id="mine")
    auto = world.create(ACCOUNT, APP, manual=False)
    assert not auto.manual and auto.next_change is not None


def test_go_live_stop_and_fail() -> None:
    world, clock = make_world()
    (stream,) = _manual_streams(world, 1)
    first = world.go_live(stream.id, viewers=12.5)
    assert stream.status == "LIVE" and stream.session is first and first.viewers == 12.5
    assert world.session(ACCOUNT, APP, first.id) is first
    assert world.session(ACCOUNT, "other-app", first.id) is None
    with pytest.raises(WorldError, match="already live"):
        world.go_live(stream.id)
    clock.now += 100
    world.stop(stream.id, status="OFFLINE")
    assert stream.session is None  # apart: mypy keeps "is first" from above across stop()
    assert (stream.status, first.stopped_time) == ("OFFLINE", T0 + 100)
    assert first.err_message is None
    clock.now += 10
    second = world.go_live(stream.id)
    clock.now += 100
    world.fail(stream.id, message="Encoder gone")
    assert (stream.status, second.err_message, second.stopped_time) == (
        "ERRORED",
        "Encoder gone",
        T0 + 210,
    )
    assert stream.sessions == [first, second]
    # Without a session, stop and fail only set the status.
    world.stop(stream.id)
    assert stream.status == "IDLE"
    world.fail(stream.id)
    assert stream.status == "ERRORED" and len(stream.sessions) == 2
    for bad in ("ERRORED", "LIVE", "INVOKED", "idle"):
        with pytest.raises(WorldError):
            world.stop(stream.id, status=bad)
    assert stream.status == "ERRORED"
    with pytest.raises(WorldError, match="not live"):
        world.stall(stream.id)


@pytest.mark.parametrize(
    "action",
    [
        lambda w: w.go_live("ghost"),
        lambda w: w.stop("ghost"),
        lambda w: w.fail("ghost"),
        lambda w: w.stall("ghost"),
        lambda w: w.stall("ghost", stalled=False),
        lambda w: w.delete("ghost"),
        lambda w: w.resume("ghost"),
        lambda w: w.find("ghost"),
    ],
    ids=["go_live", "stop", "fail", "stall", "unstall", "delete", "resume", "find"],
)
def test_unknown_ids_are_world_errors(action: Any) -> None:
    world, _ = make_world()
    world.populate(ACCOUNT, APP, 3, live=1)
    with pytest.raises(WorldError, match="no livestream 'ghost'"):
        action(world)


def test_manual_streams_never_change_by_themselves() -> None:
    """A taken-over stream keeps its status and session however long the clock runs;
    handed back, the autopilot moves it again."""
    world, clock = make_world(seed=9)
    world.populate(ACCOUNT, APP, 6, live=5)  # all six cycle
    streams = world.streams(ACCOUNT, APP)
    assert streams is not None
    live = [s for s in streams if s.session is not None]
    resting = [s for s in streams if s.session is None]
    world.stop(live[0].id)
    world.fail(live[1].id)
    world.stall(live[2].id)
    world.go_live(resting[0].id)
    taken = [live[0], live[1], live[2], resting[0]]
    before = [(s.status, len(s.sessions), s.updated_at) for s in taken]
    assert all(s.manual and s.next_change is None for s in taken)
    for _ in range(100):
        clock.now += 60
        world.now()
        assert [(s.status, len(s.sessions), s.updated_at) for s in taken] == before
    # The untouched streams kept cycling meanwhile.
    assert all(len(s.sessions) > 3 for s in streams if s not in taken)

    for s in taken:
        world.resume(s.id)
        assert not s.manual and s.next_change is not None
    clock.now += 200
    world.now()
    assert all(s.updated_at > before[i][2] for i, s in enumerate(taken))


def test_a_refused_control_call_does_not_take_the_stream_over() -> None:
    """go_live on a live stream and stall on a resting one fail without side effects."""
    world, clock = make_world(seed=4)
    world.populate(ACCOUNT, APP, 3, live=2)  # all three cycle
    live, _, resting = sorted(world.all_streams(), key=lambda s: s.status != "LIVE")
    assert resting.next_change is not None
    with pytest.raises(WorldError, match="already live"):
        world.go_live(live.id)
    with pytest.raises(WorldError, match="not live"):
        world.stall(resting.id)
    assert not live.manual and not resting.manual
    clock.now += 3600
    world.now()
    assert len(live.sessions) > 1 and len(resting.sessions) > 1


def test_delete_forgets_the_stream_and_its_sessions() -> None:
    world, clock = make_world(seed=6)
    world.populate(ACCOUNT, APP, 4, live=2)
    streams = world.streams(ACCOUNT, APP)
    assert streams is not None
    doomed = next(s for s in streams if s.session is not None)
    session_ids = [x.id for x in doomed.sessions]
    assert all(world.session(ACCOUNT, APP, sid) is not None for sid in session_ids)
    world.delete(doomed.id)
    assert all(world.session(ACCOUNT, APP, sid) is None for sid in session_ids)
    assert world.stream(ACCOUNT, APP, doomed.id) is None
    assert doomed.id not in {s.id for s in world.all_streams()}
    assert doomed.stream_key not in world.secrets()
    with pytest.raises(WorldError):
        world.find(doomed.id)
    # Its pending autopilot change goes nowhere.
    status, updated = doomed.status, doomed.updated_at
    clock.now += 7200
    world.now()
    assert (doomed.status, doomed.updated_at) == (status, updated)
    assert len(world.streams(ACCOUNT, APP) or []) == 3


def test_a_recreated_id_runs_one_lifecycle() -> None:
    """A stream deleted and created again under its id is not driven by the old one's
    pending autopilot change as well as by its own."""
    world, clock = make_world(seed=8)
    world.populate(ACCOUNT, APP, 1)
    (old,) = world.all_streams()
    world.delete(old.id)
    new = world.create(ACCOUNT, APP, livestream_id=old.id, manual=False)
    seen = [(new.status, new.updated_at)]
    for _ in range(2400):
        clock.now += 0.5
        world.now()
        if new.status != seen[-1][0]:
            seen.append((new.status, new.updated_at))
    assert len(seen) > 6
    for (status, began), (_, ended) in pairwise(seen[1:]):
        span = {"INVOKED": DEMO.invoked, "LIVE": DEMO.live}.get(status, DEMO.idle)
        assert span[0] <= ended - began <= span[1], (status, ended - began)


def test_by_creation_time_is_ordered_and_cached_until_streams_change() -> None:
    world, _ = make_world()
    world.populate(ACCOUNT, APP, 25)
    ordered = world.by_creation_time(ACCOUNT, APP)
    assert ordered is not None and len(ordered) == 25
    assert [s.created_at for s in ordered] == sorted(s.created_at for s in ordered)
    assert world.by_creation_time(ACCOUNT, APP) is ordered
    assert world.by_creation_time(ACCOUNT, "nope") is None
    assert world.streams(ACCOUNT, "nope") is None

    added = world.create(ACCOUNT, APP)
    after_create = world.by_creation_time(ACCOUNT, APP)
    assert after_create is not ordered and after_create is not None
    assert added in after_create and len(after_create) == 26
    assert [s.created_at for s in after_create] == sorted(s.created_at for s in after_create)

    world.delete(ordered[3].id)
    after_delete = world.by_creation_time(ACCOUNT, APP)
    assert after_delete is not None and after_delete is not after_create
    assert ordered[3] not in after_delete and len(after_delete) == 25

    # Another app's changes leave this app's order alone.
    world.populate(ACCOUNT, "app-2", 3)
    assert world.by_creation_time(ACCOUNT, APP) is after_delete


def test_a_large_world_keeps_no_random_generator_per_stream() -> None:
    """100,000 streams hold their random state as a seed and a draw count, not a
    Mersenne Twister each."""
    assert not any("Random" in str(f.type) for f in fields(SimStream))
    assert not any("Random" in str(f.type) for f in fields(SimSession))

    def generators() -> int:
        return sum(isinstance(o, random.Random) for o in gc.get_objects())

    before = generators()
    world = World(seed=1, profile=REALISTIC, clock=FakeClock())
    world.populate(ACCOUNT, APP, 100_000, live=1000)
    gc.collect()
    assert generators() - before < 10
    sample = list(world.all_streams())[::997]
    for stream in sample:
        values = [getattr(stream, f.name) for f in fields(stream)]
        values += [getattr(x, f.name) for x in stream.sessions for f in fields(x)]
        assert not any(isinstance(v, random.Random) for v in values)
    assert sum(s.status == "LIVE" for s in world.all_streams()) == 1000


# -- analytics totals ---------------------------------------------------------------------
def _summed(sessions: list[SimSession], now: float) -> tuple[int, float, float]:
    return (
        len(sessions),
        sum(x.ingest_seconds(now) for x in sessions),
        sum(x.viewer_seconds(now) for x in sessions),
    )


def _total(world: World, app: str = APP) -> tuple[int, float, float]:
    days = world.totals(ACCOUNT, app).values()
    return (
        sum(t.count for t in days),
        sum(t.ingest_seconds for t in days),
        sum(t.viewer_seconds for t in days),
    )


def test_totals_add_up_every_session_the_world_made() -> None:
    """Populated sessions (ended and live) count at once; over a day of the autopilot the
    totals count every session ever started, though streams keep only their last ones."""
    world, clock = make_world(seed=4, profile=DEMO)
    world.populate(ACCOUNT, APP, 30, live=6)
    streams = world.streams(ACCOUNT, APP) or []
    held = [x for s in streams for x in s.sessions]
    count, ingest, viewer = _total(world)
    assert (count, ingest, viewer) == pytest.approx(_summed(held, clock.now))
    started = len(held)

    def note(stream: SimStream, previous: str, at: float) -> None:
        nonlocal started
        started += stream.status == "LIVE"

    world.on_status(note)
    for _ in range(24):
        clock.now += 3600
        world.now()
    assert max(len(s.sessions) for s in streams) == MAX_SESSIONS  # some were forgotten
    count, ingest, _ = _total(world)
    assert count == started > sum(len(s.sessions) for s in streams)
    assert ingest > _summed([x for s in streams for x in s.sessions], clock.now)[1]


def test_totals_follow_counters_set_on_an_ended_session() -> None:
    """The counters action on a stream's latest session, ended, changes its final values,
    and the totals with them."""
    world, clock = make_world()
    (stream,) = _manual_streams(world, 1)
    world.go_live(stream.id)
    world.set_counters(stream.id, ingest_seconds=100, viewer_seconds=40)
    clock.now += 20
    world.stop(stream.id)
    assert _total(world)[:2] == (1, 120.0)
    world.set_counters(stream.id, ingest_seconds=500)
    clock.now += 1000
    assert _total(world)[:2] == (1, 500.0)


def test_totals_by_day_and_within_days() -> None:
    """Sessions count on the UTC day they started; first_day and last_day bound the days."""
    world, clock = make_world()
    a, b = _manual_streams(world, 2)
    clock.now = 1_800_057_600.0  # 2027-01-16 00:00:00 UTC
    world.go_live(a.id)
    clock.now += 86400 + 10
    world.go_live(b.id)
    days = world.totals(ACCOUNT, APP)
    assert list(days) == ["2027-01-16", "2027-01-17"]
    assert [t.count for t in days.values()] == [1, 1]
    assert list(world.totals(ACCOUNT, APP, first_day="2027-01-17")) == ["2027-01-17"]
    assert list(world.totals(ACCOUNT, APP, last_day="2027-01-16")) == ["2027-01-16"]
    assert world.totals(ACCOUNT, "no-such-app") == {}
