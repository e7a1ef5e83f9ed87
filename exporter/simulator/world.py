"""The simulated RealtimeKit world: apps, livestreams and their sessions, driven by a clock.

Deterministic: the same seed and the same clock readings give the same streams, ids,
names, lifecycles and counters. A populated stream either cycles on autopilot (OFFLINE or
IDLE -> INVOKED -> LIVE -> IDLE, OFFLINE or ERRORED -> ...), with phase lengths drawn
from a :class:`Profile`, or is dormant (resting, never changing by itself); just enough
streams cycle for the asked-for number to be live at any time (:meth:`World.populate`).
A test or a user can take any stream over through :meth:`World.go_live`,
:meth:`World.stop` and friends; from then on it changes only when told to.

Counters follow what RealtimeKit reports: ``ingest_seconds`` grows by one per second of
ingest, ``viewer_seconds`` by the number of concurrent viewers per second (a smooth,
seeded wave around a per-session mean), and both read 60 for the first 40-50 seconds
of a session (a placeholder the real API shows).

An app's analytics (:meth:`World.totals`) add up every session it ever had: a stream
keeps only its last :data:`MAX_SESSIONS` sessions, so rather than the sessions, the world
keeps a running :class:`Tally` per app and UTC day of the sessions that have ended, with
their final values (a few numbers per app and day), and adds the live sessions' current
values when asked. Sessions of a deleted stream stay counted (analytics are history; a
session live at the deletion counts with its values of that moment).
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    # Called with the stream, its previous status and the (world) time of the change.
    StatusObserver = Callable[["SimStream", str, float], None]

log = logging.getLogger(__name__)

PLACEHOLDER_VALUE: Final = 60.0
STREAM_KEY_PREFIX: Final = "sk_sim_"  # every simulated stream key starts so
MAX_VIEWERS: Final = 10_000_000.0
# Sessions a stream keeps (newest last); older ones are forgotten, also by id, so that a
# world running for days holds a bounded number of them.
MAX_SESSIONS: Final = 10
# The statuses the listing's ``status`` filter accepts (the documented enum; OFFLINE
# occurs in answers but is not a filter value).
FILTER_STATUSES: Final = ("LIVE", "IDLE", "ERRORED", "INVOKED")
_ERRORS: Final = (
    "RTMP connection closed by encoder",
    "Ingest timeout: no media received for 30s",
    "Unsupported codec in ingest stream",
)
_NAMES: Final = (
    "Main stage",
    "Keynote",
    "Town hall",
    "Product launch",
    "Office hours",
    "Backstage",
    "Q&A room",
    "Workshop A",
    "Workshop B",
    "Sponsor lounge",
)


class WorldError(Exception):
    """A control request that cannot be applied (unknown stream, bad value)."""


@dataclass(slots=True)
class Tally:
    """Sessions and their seconds, added up."""

    count: int = 0
    ingest_seconds: float = 0.0
    viewer_seconds: float = 0.0

    def add(self, count: int, ingest_seconds: float, viewer_seconds: float) -> None:
        self.count += count
        self.ingest_seconds += ingest_seconds
        self.viewer_seconds += viewer_seconds

    def add_session(self, session: SimSession, now: float) -> None:
        self.add(1, session.ingest_seconds(now), session.viewer_seconds(now))


def utc_day(t: float) -> str:
    """The UTC day of Unix time ``t`` as ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _day_number(t: float) -> int:
    """Days since 1970-01-01 UTC (a cheaper key than :func:`utc_day`, which a session's
    end would otherwise format)."""
    return math.floor(t / 86400)


@dataclass(frozen=True, slots=True)
class Profile:
    """How long each phase lasts (uniform ranges, seconds) and how sessions look."""

    invoked: tuple[float, float] = (5.0, 20.0)
    live: tuple[float, float] = (600.0, 3600.0)
    idle: tuple[float, float] = (300.0, 1800.0)
    placeholder: tuple[float, float] = (40.0, 50.0)
    viewers: tuple[float, float] = (5.0, 400.0)  # mean concurrent viewers of a session
    error_share: float = 0.05  # sessions that end ERRORED with an err_message
    offline_share: float = 0.2  # stops that leave the stream OFFLINE rather than IDLE
    unnamed_share: float = 0.2  # livestreams whose name is null
    meeting_share: float = 0.5  # livestreams attached to a meeting
    invoked_time_share: float = 0.7  # sessions whose invoked_time is set (else null)

    def live_share(self) -> float:
        """The share of its time a cycling stream spends live, in the long run: the mean
        live phase over the mean whole cycle (idle, invoked, live)."""
        live, idle, invoked = (sum(span) / 2 for span in (self.live, self.idle, self.invoked))
        cycle = live + idle + invoked
        return live / cycle if cycle > 0 else 0.0


REALISTIC: Final = Profile()
# Fast enough that a demo shows streams starting and stopping within a minute.
DEMO: Final = Profile(
    invoked=(2.0, 5.0),
    live=(40.0, 90.0),
    idle=(10.0, 30.0),
    placeholder=(8.0, 12.0),
    viewers=(3.0, 60.0),
    error_share=0.15,
)


@dataclass(slots=True)
class SimSession:
    id: str
    livestream_id: str
    started_time: float
    invoked_time: float | None
    placeholder: float
    viewers: float  # mean concurrent viewers
    wave: float  # relative amplitude of the viewer wave
    period: float  # seconds
    phase: float  # radians
    stopped_time: float | None = None
    err_message: str | None = None
    stalled_at: float | None = None  # ingest frozen since then (while live)
    stalled_for: float = 0.0  # ingest time lost to earlier stalls
    updated_at: float = 0.0
    # Added to the counters once set by hand (World.set_counters).
    ingest_shift: float = 0.0
    viewer_shift: float = 0.0

    def _end(self, now: float) -> float:
        return now if self.stopped_time is None else min(now, self.stopped_time)

    def in_placeholder(self, now: float) -> bool:
        return self._end(now) - self.started_time < self.placeholder

    def ingest_seconds(self, now: float) -> float:
        if self.in_placeholder(now):
            return PLACEHOLDER_VALUE
        end = self._end(now)
        stalled = self.stalled_for
        if self.stalled_at is not None:
            stalled += max(0.0, end - self.stalled_at)
        return max(0.0, end - self.started_time - stalled) + self.ingest_shift

    def viewer_seconds(self, now: float) -> float:
        if self.in_placeholder(now):
            return PLACEHOLDER_VALUE
        t = self._end(now) - self.started_time
        omega = 2 * math.pi / self.period
        # The integral of viewers * (1 + wave * sin(omega * s + phase)) over [0, t].
        swing = self.wave / omega * (math.cos(self.phase) - math.cos(omega * t + self.phase))
        return max(0.0, self.viewers * (t + swing)) + self.viewer_shift


@dataclass(slots=True)
class SimStream:
    id: str
    account_id: str
    app_id: str
    name: str | None
    meeting_id: str | None
    stream_key: str = field(repr=False)  # a secret, even a simulated one
    created_at: float
    status: str
    updated_at: float
    index: int  # creation order: seeds this stream's random draws
    draws: int = 0
    disabled: bool = False
    sessions: list[SimSession] = field(default_factory=list)  # the last MAX_SESSIONS
    manual: bool = False
    next_change: float | None = None  # None: manual or dormant
    version: int = 0  # invalidates scheduled events after a manual change
    # The status and updated_at before the last change, for a lagging listing.
    previous_status: str = "OFFLINE"
    previous_updated_at: float = 0.0

    def rng(self, seed: int) -> random.Random:
        """A fresh generator for this stream's next decision (no generator is kept:
        100,000 streams would hold 250 MB of Mersenne Twister state)."""
        self.draws += 1
        return random.Random(f"{seed}:{self.index}:{self.draws}")

    @property
    def session(self) -> SimSession | None:
        """The active session: started and not stopped."""
        if self.sessions and self.sessions[-1].stopped_time is None:
            return self.sessions[-1]
        return None

    def listed(self, now: float, lag: float = 0.0) -> tuple[str, float]:
        """Status and updated_at as a listing that lags ``lag`` seconds behind shows them:
        the previous ones until ``lag`` seconds after the last change."""
        if lag > 0 and now < self.updated_at + lag:
            return self.previous_status, self.previous_updated_at
        return self.status, self.updated_at


def _uuid(rng: random.Random) -> str:
    """A random (version 4) UUID as text: ``str(uuid.UUID(int=..., version=4))``, formatted
    by hand because that is a third of the time populating 100,000 streams takes."""
    n = rng.getrandbits(128) & _UUID_KEEP | _UUID_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# The version (4) and variant (RFC 4122) bits of a random UUID.
_UUID_KEEP: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET: Final = (0x4000 << 64) | (0x8000 << 48)


def _between(rng: random.Random, span: tuple[float, float]) -> float:
    return rng.uniform(*span)


def _length_biased(rng: random.Random, span: tuple[float, float]) -> float:
    """The length of the phase a stream is in at a random moment: phases are uniform on
    ``span``, but a moment falls into a long phase more often (density proportional to
    the length, sampled by inverting its distribution function)."""
    low, high = span
    return math.sqrt(low * low + rng.random() * (high * high - low * low))


class World:
    """All simulated apps and streams. Not thread-safe; one event loop drives it."""

    def __init__(
        self,
        *,
        seed: int = 0,
        profile: Profile = REALISTIC,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.seed = seed
        self.profile = profile
        self._clock = clock
        self._apps: dict[tuple[str, str], dict[str, SimStream]] = {}
        self._sessions: dict[str, tuple[SimStream, SimSession]] = {}
        # (time, tie-breaker, stream, its version): the stream itself, not its id, so that
        # a deleted stream's pending change never drives a new stream created under its id.
        self._events: list[tuple[float, int, SimStream, int]] = []
        self._index: dict[str, SimStream] = {}
        self._counter = 0
        self._created = 0
        self._ordered: dict[tuple[str, str], list[SimStream]] = {}
        self._observers: list[StatusObserver] = []
        # Sessions that have ended, by app and by the UTC day they started (see totals).
        self._ended: dict[tuple[str, str], dict[int, Tally]] = {}

    # -- reading ----------------------------------------------------------------------
    def now(self) -> float:
        """The clock, after every scheduled change up to it has been applied."""
        now = self._clock()
        self._advance(now)
        return now

    def clock(self) -> float:
        """The clock, without applying anything (for timing what happens around the world)."""
        return self._clock()

    def on_status(self, observer: StatusObserver) -> Callable[[], None]:
        """Call ``observer(stream, previous_status, at)`` after every status change, manual
        or by the autopilot (not when a status is set to what it already was), ``at`` being
        the world time of the change; returns a function that stops the calls.

        An observer runs inside whatever made the change (often :meth:`now`), so it must be
        quick and must not change the world itself."""
        self._observers.append(observer)

        def cancel() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return cancel

    def apps(self) -> list[tuple[str, str]]:
        return list(self._apps)

    def has_app(self, account_id: str, app_id: str) -> bool:
        return (account_id, app_id) in self._apps

    def session_count(self) -> int:
        """Sessions the world holds (each stream keeps its last :data:`MAX_SESSIONS`)."""
        return len(self._sessions)

    def has_account(self, account_id: str) -> bool:
        return any(account == account_id for account, _ in self._apps)

    def streams(self, account_id: str, app_id: str) -> list[SimStream] | None:
        """The app's streams in creation order, or None for an unknown app."""
        found = self._apps.get((account_id, app_id))
        return None if found is None else list(found.values())

    def by_creation_time(self, account_id: str, app_id: str) -> list[SimStream] | None:
        """The app's streams, oldest ``created_at`` first (cached: listings page through
        it once per request), or None for an unknown app."""
        key = (account_id, app_id)
        found = self._apps.get(key)
        if found is None:
            return None
        ordered = self._ordered.get(key)
        if ordered is None:
            ordered = self._ordered[key] = sorted(found.values(), key=lambda s: s.created_at)
        return ordered

    def stream(self, account_id: str, app_id: str, livestream_id: str) -> SimStream | None:
        return self._apps.get((account_id, app_id), {}).get(livestream_id)

    def session(self, account_id: str, app_id: str, session_id: str) -> SimSession | None:
        found = self._sessions.get(session_id)
        if found is None:
            return None
        stream, session = found
        return session if (stream.account_id, stream.app_id) == (account_id, app_id) else None

    def totals(
        self,
        account_id: str,
        app_id: str,
        *,
        first_day: str | None = None,
        last_day: str | None = None,
    ) -> dict[str, Tally]:
        """The app's sessions added up by the UTC day they started (``YYYY-MM-DD``), from
        ``first_day`` to ``last_day`` (both included; None: no bound), oldest day first:
        every session that has ended, with its final values, and each live one with its
        values now. Days without sessions are left out."""
        now = self.now()
        days: dict[int, Tally] = {}
        for day, ended in self._ended.get((account_id, app_id), {}).items():
            days[day] = Tally(ended.count, ended.ingest_seconds, ended.viewer_seconds)
        for stream in self._apps.get((account_id, app_id), {}).values():
            session = stream.session
            if session is not None:
                key = _day_number(session.started_time)
                days.setdefault(key, Tally()).add_session(session, now)
        dated = ((utc_day(day * 86400), days[day]) for day in sorted(days))
        return {
            day: tally
            for day, tally in dated
            if (first_day is None or day >= first_day) and (last_day is None or day <= last_day)
        }

    def all_streams(self) -> Iterator[SimStream]:
        for streams in self._apps.values():
            yield from streams.values()

    def secrets(self) -> list[str]:
        """Every stream key, so tests can check that none leaks."""
        return [s.stream_key for s in self.all_streams()]

    def find(self, livestream_id: str) -> SimStream:
        stream = self._index.get(livestream_id)
        if stream is None:
            raise WorldError(f"no livestream {livestream_id!r}")
        return stream

    # -- populating -------------------------------------------------------------------
    def populate(self, account_id: str, app_id: str, count: int, *, live: int = 0) -> None:
        """Add ``count`` streams to the app, ``live`` of them live now and about as many
        live at any later time.

        A cycling stream is live for the profile's :meth:`~Profile.live_share` of its time,
        so about ``round(live / share)`` streams (at most ``count``) cycle on the autopilot:
        ``live`` of them live now, the others resting. Each is caught at a random moment of
        its phase (length-biased phase length, uniform moment within it), so the live count
        stays near ``live`` from the start on and the first changes spread over the whole
        phase range instead of coming together. Every first change is delayed by a quiet
        spell of half the shortest live or idle phase, so that nothing changes at first
        (150 s for the realistic profile, 5 s for the demo one). The other streams are
        dormant: IDLE after an earlier session, or (about one in ten) OFFLINE and never
        live, and they never change by themselves.
        """
        if not 0 <= live <= count:
            raise WorldError(f"live ({live}) must be between 0 and count ({count})")
        self._apps.setdefault((account_id, app_id), {})  # the app, even with no streams
        now = self._clock()
        p = self.profile
        share = p.live_share()
        cycling = count if share <= 0 else min(count, max(live, round(live / share)))
        quiet = min(p.live[0], p.idle[0]) / 2
        for i in range(count):
            # One generator for the stream's identity and its starting state: seeding one
            # is most of the cost of a stream.
            stream, rng = self._new_stream(account_id, app_id, now=now)
            if i < live:
                length = _length_biased(rng, p.live)
                elapsed = rng.uniform(0.0, length)
                # Started at least a little before the placeholder phase ended, so that the
                # counters of a stream live from the start already count.
                self._start_session(stream, now - max(elapsed, p.placeholder[1] + 10.0), rng=rng)
                self._schedule(stream, now + quiet + length - elapsed)
                continue
            # Resting since ``ended``: for a cycling stream, part of an idle phase.
            length = _length_biased(rng, p.idle)
            rested = rng.uniform(0.0, length)
            ended = now - (rested if i < cycling else _between(rng, p.idle))
            if rng.random() >= 0.1:
                # An earlier session, for the by-id endpoint to know.
                session = self._start_session(stream, ended - _between(rng, p.live), rng=rng)
                self._stop_session(stream, session, ended, status="IDLE")
            if i < cycling:
                self._schedule(stream, now + quiet + length - rested)

    def create(
        self,
        account_id: str,
        app_id: str,
        *,
        livestream_id: str | None = None,
        name: str | None = None,
        meeting_id: str | None = None,
        manual: bool = True,
    ) -> SimStream:
        """A new OFFLINE stream (taken over unless ``manual`` is False)."""
        if livestream_id is not None and livestream_id in self._index:
            raise WorldError(f"livestream {livestream_id!r} exists")
        now = self.now()
        stream, _ = self._new_stream(account_id, app_id, now=now, livestream_id=livestream_id)
        stream.name = name
        stream.meeting_id = meeting_id
        # Created just now, unlike populate's.
        stream.created_at = stream.updated_at = stream.previous_updated_at = now
        self._ordered.pop((account_id, app_id), None)
        stream.manual = manual
        if not manual:
            self._schedule(stream, now + _between(stream.rng(self.seed), self.profile.idle))
        return stream

    def _new_stream(
        self, account_id: str, app_id: str, *, now: float, livestream_id: str | None = None
    ) -> tuple[SimStream, random.Random]:
        """A new OFFLINE stream, and the generator that drew it (for further draws)."""
        index = self._created
        self._created += 1
        rng = random.Random(f"{self.seed}:{index}")
        p = self.profile
        stream_id = livestream_id or _uuid(rng)
        name = None if rng.random() < p.unnamed_share else f"{rng.choice(_NAMES)} {index + 1}"
        meeting = _uuid(rng) if rng.random() < p.meeting_share else None
        created = now - rng.uniform(3600.0, 30 * 86400.0)
        stream = SimStream(
            id=stream_id,
            account_id=account_id,
            app_id=app_id,
            name=name,
            meeting_id=meeting,
            stream_key=f"{STREAM_KEY_PREFIX}{rng.getrandbits(160):040x}",
            created_at=created,
            status="OFFLINE",
            updated_at=created,
            index=index,
            previous_updated_at=created,
        )
        self._apps.setdefault((account_id, app_id), {})[stream_id] = stream
        self._index[stream_id] = stream
        self._ordered.pop((account_id, app_id), None)
        return stream, rng

    # -- control ----------------------------------------------------------------------
    def go_live(self, livestream_id: str, *, viewers: float | None = None) -> SimSession:
        if viewers is not None and not (math.isfinite(viewers) and 0 <= viewers <= MAX_VIEWERS):
            raise WorldError(f"viewers must be between 0 and {MAX_VIEWERS:g}")
        if self._live(livestream_id) is not None:  # refused before taking the stream over
            raise WorldError(f"livestream {livestream_id!r} is already live")
        stream = self._take_over(livestream_id)
        session = self._start_session(stream, self.now(), invoked=True)
        if viewers is not None:
            session.viewers = viewers
        return session

    def stop(self, livestream_id: str, *, status: str = "IDLE") -> None:
        if status not in ("IDLE", "OFFLINE"):
            raise WorldError("status must be IDLE or OFFLINE")
        stream = self._take_over(livestream_id)
        now = self.now()
        if stream.session is not None:
            self._stop_session(stream, stream.session, now, status=status)
        else:
            self._set_status(stream, status, now)

    def fail(self, livestream_id: str, *, message: str = _ERRORS[0]) -> None:
        """The stream goes ERRORED; a live session stops with ``err_message``."""
        stream = self._take_over(livestream_id)
        now = self.now()
        if stream.session is not None:
            self._stop_session(stream, stream.session, now, status="ERRORED", error=message)
        else:
            self._set_status(stream, "ERRORED", now)

    def set_status(self, livestream_id: str, status: str) -> None:
        """List the stream with ``status`` (any text, e.g. one the docs do not name, or a
        stale one), leaving its sessions as they are."""
        if not status:
            raise WorldError("status must not be empty")
        stream = self._take_over(livestream_id)
        self._set_status(stream, status, self.now())

    def set_counters(
        self,
        livestream_id: str,
        *,
        ingest_seconds: float | None = None,
        viewer_seconds: float | None = None,
    ) -> SimSession:
        """Make the counters of the stream's active session (else its latest) read these
        values now, and grow from them as the session goes on; the placeholder phase ends.
        For a counter that goes back, jumps, or has an exact value."""
        for value in (ingest_seconds, viewer_seconds):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise WorldError("counters must be finite and not negative")
        stream = self.find(livestream_id)
        now = self.now()
        if not stream.sessions:
            raise WorldError(f"livestream {livestream_id!r} has no session")
        session = stream.sessions[-1]
        before = (session.ingest_seconds(now), session.viewer_seconds(now))
        session.placeholder = 0.0
        if ingest_seconds is not None:
            session.ingest_shift += ingest_seconds - session.ingest_seconds(now)
        if viewer_seconds is not None:
            session.viewer_shift += viewer_seconds - session.viewer_seconds(now)
        session.updated_at = now
        if session.stopped_time is not None:  # its final values change: so do the totals
            self._ended_tally(stream, session).add(
                0,
                session.ingest_seconds(now) - before[0],
                session.viewer_seconds(now) - before[1],
            )
        return session

    def stall(self, livestream_id: str, *, stalled: bool = True) -> None:
        """Freeze (or resume) the live session's ingest counter."""
        if self._live(livestream_id) is None:  # refused before taking the stream over
            raise WorldError(f"livestream {livestream_id!r} is not live")
        stream = self._take_over(livestream_id)
        session = stream.session
        assert session is not None
        now = self.now()
        if stalled and session.stalled_at is None:
            session.stalled_at = now
        elif not stalled and session.stalled_at is not None:
            session.stalled_for += now - session.stalled_at
            session.stalled_at = None
        session.updated_at = now

    def delete(self, livestream_id: str) -> None:
        """Forget the stream and its sessions; the app's totals keep them."""
        stream = self.find(livestream_id)
        now = self.now()
        live = stream.session
        if live is not None:  # counted with its values now, as if it had ended now
            self._ended_tally(stream, live).add_session(live, now)
        del self._apps[(stream.account_id, stream.app_id)][stream.id]
        del self._index[stream.id]
        self._ordered.pop((stream.account_id, stream.app_id), None)
        for session in stream.sessions:
            self._sessions.pop(session.id, None)
        stream.version += 1

    def resume(self, livestream_id: str) -> None:
        """Hand a taken-over (or a dormant) stream to the autopilot."""
        stream = self.find(livestream_id)
        if stream.manual or stream.next_change is None:
            stream.manual = False
            now = self.now()
            span = self.profile.live if stream.session is not None else self.profile.idle
            self._schedule(stream, now + _between(stream.rng(self.seed), span))

    def _live(self, livestream_id: str) -> SimSession | None:
        """The stream's active session once the autopilot has caught up with the clock."""
        stream = self.find(livestream_id)
        self.now()
        return stream.session

    def _take_over(self, livestream_id: str) -> SimStream:
        stream = self.find(livestream_id)
        self.now()  # apply what the autopilot had due before the manual change
        stream.manual = True
        stream.version += 1
        stream.next_change = None
        return stream

    # -- the autopilot ----------------------------------------------------------------
    def _schedule(self, stream: SimStream, at: float) -> None:
        stream.next_change = at
        self._counter += 1
        heapq.heappush(self._events, (at, self._counter, stream, stream.version))

    def _advance(self, now: float) -> None:
        while self._events and self._events[0][0] <= now:
            at, _, stream, version = heapq.heappop(self._events)
            if self._index.get(stream.id) is not stream:
                continue  # deleted
            if stream.manual or stream.version != version:
                continue
            self._step(stream, at)

    def _step(self, stream: SimStream, at: float) -> None:
        p = self.profile
        rng = stream.rng(self.seed)
        if stream.session is not None:
            roll = rng.random()
            if roll < p.error_share:
                self._stop_session(
                    stream, stream.session, at, status="ERRORED", error=rng.choice(_ERRORS)
                )
            else:
                status = "OFFLINE" if roll < p.error_share + p.offline_share else "IDLE"
                self._stop_session(stream, stream.session, at, status=status)
            self._schedule(stream, at + _between(rng, p.idle))
        elif stream.status == "INVOKED":
            self._start_session(stream, at, invoked=True)
            self._schedule(stream, at + _between(rng, p.live))
        else:
            self._set_status(stream, "INVOKED", at)
            self._schedule(stream, at + _between(rng, p.invoked))

    def _start_session(
        self,
        stream: SimStream,
        at: float,
        *,
        invoked: bool = False,
        rng: random.Random | None = None,
    ) -> SimSession:
        rng = rng or stream.rng(self.seed)
        p = self.profile
        invoked_time = None
        if rng.random() < p.invoked_time_share:
            invoked_time = at - (_between(rng, p.invoked) if invoked else 5.0)
        session = SimSession(
            id=_uuid(rng),
            livestream_id=stream.id,
            started_time=at,
            invoked_time=invoked_time,
            placeholder=_between(rng, p.placeholder),
            viewers=_between(rng, p.viewers),
            wave=rng.uniform(0.1, 0.4),
            period=rng.uniform(120.0, 900.0),
            phase=rng.uniform(0.0, 2 * math.pi),
            updated_at=at,
        )
        stream.sessions.append(session)
        self._sessions[session.id] = (stream, session)
        if len(stream.sessions) > MAX_SESSIONS:
            for old in stream.sessions[:-MAX_SESSIONS]:
                self._sessions.pop(old.id, None)
            del stream.sessions[:-MAX_SESSIONS]
        self._set_status(stream, "LIVE", at)
        return session

    def _stop_session(
        self,
        stream: SimStream,
        session: SimSession,
        at: float,
        *,
        status: str,
        error: str | None = None,
    ) -> None:
        if session.stalled_at is not None:
            session.stalled_for += at - session.stalled_at
            session.stalled_at = None
        session.stopped_time = at
        session.err_message = error
        session.updated_at = at
        self._ended_tally(stream, session).add_session(session, at)
        self._set_status(stream, status, at)

    def _ended_tally(self, stream: SimStream, session: SimSession) -> Tally:
        """Where the app's totals keep ``session`` once it has ended."""
        days = self._ended.setdefault((stream.account_id, stream.app_id), {})
        return days.setdefault(_day_number(session.started_time), Tally())

    def _set_status(self, stream: SimStream, status: str, at: float) -> None:
        """The one place a status changes."""
        previous = stream.status
        stream.previous_status, stream.previous_updated_at = previous, stream.updated_at
        stream.status = status
        stream.updated_at = at
        if status == previous or not self._observers:
            return
        for observer in tuple(self._observers):
            try:
                observer(stream, previous, at)
            except Exception:
                # The change is made; an observer's bug must not stop the autopilot halfway
                # through its due changes (the stream would never be scheduled again).
                log.exception("a status observer failed on livestream %s", stream.id)
