"""Property tests of the merge rules: random cycle sequences, the rules checked every cycle.

Each example is a sequence of poll cycles for one app and a few stream ids, driven the way
the poller drives them (plan from the listing and the previous state, answer exactly the
planned requests, merge). A cycle's listing fails or lists some of the streams with random
statuses (including one the exporter does not know); each planned request fails, answers
404, an active session or a stopped one (session ids change now and then: restarts); time
advances 10-60 s per cycle; the config switches between a configured app and discovery.

After every cycle the new state is checked against the previous one, the cycle's inputs and
a small model of the history (when each stream was last listed, last live). Generation is
derandomized and bounded, so the file runs in a few seconds and always the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import merge
from exporter.config import AppConfig, LivestreamConfig
from exporter.model import (
    LIVE,
    NOT_LIVE,
    UNKNOWN_STATUS,
    ActiveSession,
    AppState,
    Listing,
    Livestream,
    Session,
)

T0 = 1_000_000.0
STALE = 90.0
IDS = ("s1", "s2", "s3")
ODD = "RECONNECTING"  # a status the exporter does not know
STATUSES = (LIVE, "IDLE", "OFFLINE", "ERRORED", "INVOKED", ODD)
SESSION_IDS = ("x1", "x2", "x3")
CONFIGURED = AppConfig(
    account_id="a",
    app_id="b",
    livestreams=(LivestreamConfig("s1", expect_live=True), LivestreamConfig("s2")),
)
DISCOVER = AppConfig(
    account_id="a", app_id="b", discover=True, livestreams=(LivestreamConfig("s2", False),)
)

# --- generated inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the API answers to a stream's session request this cycle.

    ``kind``: ``fail`` (the request fails), ``404`` (no session), ``active`` or
    ``stopped``. The active endpoint answers session ``sid`` and, if ``status`` is set, a
    livestream with that status; a by-id request is answered for the session asked.
    """

    kind: str
    sid: str = "x1"
    status: str | None = None


@dataclass(frozen=True)
class Cycle:
    dt: float
    discover: bool
    listing: dict[str, str] | None  # None: the listing fails
    answers: dict[str, Answer]


answers_st = st.builds(
    Answer,
    kind=st.sampled_from(("fail", "404", "active", "active", "stopped")),
    sid=st.sampled_from(SESSION_IDS),
    status=st.none() | st.sampled_from((*STATUSES, UNKNOWN_STATUS)),
)
# None: not in the listing. LIVE weighs about as much as the not-live statuses together.
listed_st = st.sampled_from((None, LIVE, LIVE, LIVE, *STATUSES))


@dataclass(frozen=True)
class World:
    """What the API is like at the moment; events change it, ticks run cycles in it."""

    statuses: dict[str, str | None]
    answers: dict[str, Answer]
    listing_ok: bool = True
    discover: bool = False

    def cycle(self, dt: float) -> Cycle:
        listing = None
        if self.listing_ok:
            listing = {i: s for i, s in self.statuses.items() if s is not None}
        return Cycle(dt=dt, discover=self.discover, listing=listing, answers=dict(self.answers))


# Events change one thing each; the rest persists from cycle to cycle, so that long
# stretches (a stream LIVE while its requests keep failing for minutes, a listing down past
# max_staleness, a stop followed by a restart) are common, not rare.
EVENTS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "status": st.tuples(st.just("status"), st.sampled_from(IDS), listed_st),
    "answer": st.tuples(st.just("answer"), st.sampled_from(IDS), answers_st),
    "listing": st.tuples(st.just("listing"), st.sampled_from((True, True, False))),
    "discover": st.tuples(st.just("discover"), st.booleans()),
    "tick": st.tuples(st.just("tick"), st.integers(10, 60).map(float), st.integers(1, 4)),
}
# Weights: how often each kind of event comes (one_of would not weigh repeated branches).
EVENT_KINDS = ("status", "status", "answer", "answer", "listing", "discover", "tick", "tick")
events_st = st.lists(
    st.sampled_from(EVENT_KINDS).flatmap(EVENTS.__getitem__), min_size=20, max_size=60
)
world_st = st.builds(
    World,
    statuses=st.fixed_dictionaries(dict.fromkeys(IDS, listed_st)),
    answers=st.fixed_dictionaries(dict.fromkeys(IDS, answers_st)),
)


@st.composite
def runs_st(draw: st.DrawFn) -> list[tuple[Cycle, int]]:
    """Runs of cycles: (cycle, how many times in a row)."""
    world = draw(world_st)
    runs: list[tuple[Cycle, int]] = []
    for event in draw(events_st):
        match event:
            case ("status", i, status):
                world = replace(world, statuses={**world.statuses, i: status})
            case ("answer", i, a):
                world = replace(world, answers={**world.answers, i: a})
            case ("listing", ok):
                world = replace(world, listing_ok=ok)
            case ("discover", on):
                world = replace(world, discover=on)
            case ("tick", dt, times):
                runs.append((world.cycle(dt), times))
    runs.append((world.cycle(30.0), 1))
    return runs


# --- the cycle driver -------------------------------------------------------------------


@dataclass
class Model:
    """What the test remembers of the history, independently of the exporter's state."""

    last_listed: dict[str, float] = field(default_factory=dict)  # in a successful listing
    last_live: dict[str, float] = field(default_factory=dict)  # exported live, not since gone


@dataclass
class Step:
    """One cycle's inputs and result."""

    no: int
    now: float
    app: AppConfig
    cycle: Cycle
    prev: AppState | None
    state: AppState
    plan: merge.Plan | None
    sessions: dict[str, merge.SessionOutcome]
    answers: dict[str, ActiveSession]  # the successful answers, by stream id


def make_session(sid: str, *, stopped: bool, no: int, now: float) -> Session:
    return Session(
        id=sid,
        started_time=T0,
        stopped_time=now if stopped else None,
        ingest_seconds=float(no),  # values differ from cycle to cycle
        viewer_seconds=float(2 * no),
    )


def answer(
    a: Answer, stream_id: str, asked_session: str | None, no: int, now: float
) -> ActiveSession | None:
    """The API's answer to one request; ``asked_session`` is set for a by-id request."""
    if a.kind == "fail":
        return None
    if a.kind == "404":
        return ActiveSession(None, None)
    sid = asked_session if asked_session is not None else a.sid
    session = make_session(sid, stopped=a.kind == "stopped", no=no, now=now)
    if asked_session is not None:
        return ActiveSession(None, session)
    livestream = None if a.status is None else Livestream(stream_id, a.status)
    return ActiveSession(livestream, session)


def run_cycle(no: int, now: float, cycle: Cycle, prev: AppState | None) -> Step:
    app = DISCOVER if cycle.discover else CONFIGURED
    if cycle.listing is None:
        state = merge.merge_app(app, prev, None, {}, now=now, max_staleness=STALE, ok=False)
        return Step(no, now, app, cycle, prev, state, None, {}, {})
    listing = Listing(tuple(Livestream(i, s) for i, s in cycle.listing.items()))
    plan = merge.plan(merge.tracked(app, listing), prev, now=now, max_staleness=STALE)
    sessions: dict[str, merge.SessionOutcome] = {}
    for sid in plan.active:
        sessions[sid] = answer(cycle.answers[sid], sid, None, no, now)
    for sid, session_id in plan.final.items():
        sessions[sid] = answer(cycle.answers[sid], sid, session_id, no, now)
    state = merge.merge_app(
        app,
        prev,
        listing,
        sessions,
        now=now,
        max_staleness=STALE,
        ok=all(v is not None for v in sessions.values()),
        final=plan.final.keys(),
    )
    answers = {k: v for k, v in sessions.items() if v is not None}
    return Step(no, now, app, cycle, prev, state, plan, sessions, answers)


def run(runs: list[tuple[Cycle, int]]) -> None:
    """Every cycle of ``runs`` in order, each checked against the rules."""
    model = Model()
    state: AppState | None = None
    now = T0
    no = 0
    for cycle, times in runs:
        for _ in range(times):
            no += 1
            now += cycle.dt
            step = run_cycle(no, now, cycle, state)
            check(step, model)
            update(model, step)
            state = step.state


def update(model: Model, step: Step) -> None:
    exported = {s.id: s for s in step.state.streams}
    if step.cycle.listing is not None:
        for i in step.cycle.listing:
            model.last_listed[i] = step.now
        for s in exported.values():
            if s.live:
                model.last_live[s.id] = step.now
    for i in list(model.last_live):
        if i not in exported:
            del model.last_live[i]


# --- the rules --------------------------------------------------------------------------


def check(step: Step, model: Model) -> None:
    state, now = step.state, step.now
    ids = [s.id for s in state.streams]
    assert ids == sorted(set(ids)), "streams sorted by id and unique"
    for s in state.streams:
        assert not s.session_current or s.live, "session_current implies live"
        # A live stream shows its current session or none: an ended one belongs to an
        # earlier broadcast.
        assert not s.live or s.session is None or s.session.active, f"{s.id}: live, ended session"
        assert s.last_update <= now and s.seen_at <= now
        assert s.last_live is None or s.last_live <= now
        if s.live and s.session is not None:
            assert now - s.last_update <= STALE, f"{s.id}: live with session values past staleness"
        assert s.expected_live == step.app.expectations().get(s.id), "expect_live from config"
    if step.cycle.listing is None:
        check_failed_listing(step, model)
    else:
        check_plan(step, model)
        for i in step.cycle.listing:
            check_listed(step, i)
    up = step.cycle.listing is not None and all(v is not None for v in step.sessions.values())
    assert state.up == up
    prev_success = step.prev.last_success if step.prev is not None else None
    assert state.last_success == (now if up else prev_success)


def check_failed_listing(step: Step, model: Model) -> None:
    """A failed listing keeps the previous streams, unchanged (live stays live), while they
    were listed within max_staleness and the config still tracks them; drops the rest. A
    live stream's session values go once older than max_staleness."""
    prev = step.prev.streams if step.prev is not None else ()
    expect = step.app.expectations()
    kept = [
        replace(
            p,
            expected_live=expect.get(p.id),
            session=None if p.live and step.now - p.counters_at > STALE else p.session,
        )
        for p in prev
        if (step.app.discover or p.id in expect) and step.now - model.last_listed[p.id] <= STALE
    ]
    assert list(step.state.streams) == kept


def check_plan(step: Step, model: Model) -> None:
    """LIVE and then unknown statuses are asked at the active endpoint; not-live ones by
    session id only while their last session is active and the stream was live within
    staleness."""
    assert step.plan is not None and step.cycle.listing is not None
    tracked = [
        (i, status)
        for i, status in step.cycle.listing.items()
        if step.app.discover or i in step.app.expectations()
    ]
    assert step.plan.active == tuple(i for i, status in tracked if status == "LIVE") + tuple(
        i for i, status in tracked if status != "LIVE" and status not in NOT_LIVE
    )
    prev = {s.id: s for s in step.prev.streams} if step.prev is not None else {}
    final: dict[str, str] = {}
    for i, status in tracked:
        p = prev.get(i)
        if (
            status in NOT_LIVE
            and p is not None
            and p.session is not None
            and p.session.active
            and i in model.last_live
            and step.now - model.last_live[i] <= STALE
        ):
            final[i] = p.session.id
    assert dict(step.plan.final) == final


def check_listed(step: Step, i: str) -> None:
    """The rules for one stream of a successful listing."""
    assert step.plan is not None and step.cycle.listing is not None
    now = step.now
    status = step.cycle.listing[i]
    n = step.state.stream(i)
    if not (step.app.discover or i in step.app.expectations()):
        assert n is None, f"{i}: not tracked by the config, yet exported"
        return
    p = step.prev.stream(i) if step.prev is not None else None
    asked = i in step.sessions
    failed = asked and step.sessions[i] is None
    unknown = status != LIVE and status not in NOT_LIVE
    fresh = p is not None and now - p.counters_at <= STALE

    # Membership: always exported, except an unknown status with no answer, or a stale one.
    # So no flapping: a stream listed LIVE is exported every cycle, whatever its requests do.
    if failed and unknown and not fresh:
        assert n is None, f"{i}: unknown status, request failed, no fresh answer: exported"
        return
    assert n is not None, f"{i}: listed with {status} but not exported"
    assert n.listed_at == now

    # An API failure never turns live from 1 to 0.
    if failed and p is not None and p.live and status not in NOT_LIVE:
        assert n.live, f"{i}: a failed request turned live to 0"

    # Liveness comes from answers.
    a = step.answers.get(i)
    by_id = i in step.plan.final
    if status in NOT_LIVE:
        assert not n.live, f"{i}: listed {status} yet live"
    elif failed:
        assert n.live == (status == LIVE or (p is not None and p.live)), f"{i}: live after failure"
    else:
        assert a is not None
        active = a.session is not None and a.session.active
        assert n.live == active, f"{i}: live={n.live} but the answer says {a.session}"
    if n.live:
        assert n.last_live == now

    # Status: the listing's, or a fresher one from the active endpoint.
    fresher = a.livestream.status if a is not None and a.livestream is not None else None
    if fresher is not None and not by_id and fresher not in (UNKNOWN_STATUS, status):
        assert n.livestream.status == fresher
    else:
        assert n.livestream.status == status

    # Session values: the answer's, else the last ones seen; old values of a stream whose
    # requests fail stay only while fresh and, if it is live, only if not ended.
    last = p.session if p is not None else None
    if not asked:
        assert n.session == last
    elif a is not None and a.session is not None:
        assert n.session == a.session
    elif a is not None and by_id:
        assert last is not None and last.active
        assert n.session == replace(last, ended=True), "a session gone by id ends as last seen"
    elif a is not None:
        assert n.session == last, "404: the last session seen keeps its values"
    elif not n.live:
        assert n.session == last
    elif last is not None and last.active and fresh:
        assert n.session == last, f"{i}: fresh values of the current session dropped"
    else:
        assert n.session is None, f"{i}: live with stale or ended session values"

    # last_update: now, as the listing showing it is fresh. counters_at: now when the
    # session was asked and answered, else the time of the values kept.
    assert n.last_update == now
    if n.session is not None:
        answered = asked and not failed and a is not None
        if answered:  # a session, or word that there is none newer than the last
            assert n.counters_at == now
        else:
            assert p is not None
            assert n.counters_at == p.counters_at, f"{i}: kept values with a new time"


# --- the tests --------------------------------------------------------------------------

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(runs_st())
def test_merge_rules_hold_over_random_cycles(runs: list[tuple[Cycle, int]]) -> None:
    """Every rule above holds after every cycle of any sequence of cycles."""
    run(runs)


def _cycle(listing: dict[str, str] | None, dt: float = 30.0, **answers: Answer) -> Cycle:
    full = {i: answers.get(i, Answer("fail")) for i in IDS}
    return Cycle(dt=dt, discover=False, listing=listing, answers=full)


def test_rules_hold_over_a_hand_written_sequence() -> None:
    """The checker itself, on a sequence touching the main branches: restarts, stops with
    final values, a listing down, an unknown status held then dropped."""
    run(
        [
            (_cycle({"s1": LIVE, "s2": ODD}, s1=Answer("active"), s2=Answer("active")), 1),
            (_cycle({"s1": LIVE, "s2": ODD}), 3),
            (_cycle(None), 2),
            (_cycle({"s1": "IDLE", "s2": ODD}, s1=Answer("stopped")), 1),
            (_cycle({"s1": "IDLE"}), 2),
            (_cycle({"s1": LIVE}), 1),
            (_cycle({"s1": LIVE}, s1=Answer("active", sid="x2")), 1),
            (_cycle({"s1": LIVE}, s1=Answer("404")), 1),
            (_cycle({"s1": "OFFLINE"}, s1=Answer("404")), 2),
        ]
    )


def test_failed_listing_drops_session_values_past_max_staleness() -> None:
    """A live stream whose session request failed once, then a failing listing: 91 s after
    the last answer its session values are gone, as a working listing would drop them."""
    run(
        [
            (_cycle({"s1": LIVE}, dt=10, s1=Answer("active")), 1),
            (_cycle({"s1": LIVE}, dt=10), 1),  # counters stay at +10, listed at +20
            (_cycle(None, dt=51), 1),
            (_cycle(None, dt=30), 1),  # +101: 91 s since the answer, 81 s since listed
        ]
    )
