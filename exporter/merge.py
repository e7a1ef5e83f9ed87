"""Pure rules that turn one cycle's API answers and the previous state into a new AppState.

Kept apart from the poller's I/O so that the rules users rely on are plain functions:

- an API failure never turns ``live`` to 0; the last good values stay until
  ``max_staleness``, then go (the whole stream if the listing fails, only its session
  values if the session requests fail while the listing still shows it);
- a stream no longer listed, or removed from config, disappears at once;
- at most ``limits.max_livestreams`` streams per process: configured ones always, then
  discovered ones up to each app's room (:func:`rooms`), chosen so that the same listing
  keeps the same streams (:func:`preferred`);
- a stream that stops keeps its session, and the session is asked for by id until its
  final values (a stop time) arrive;
- an id that cannot be a URL path segment (:func:`~exporter.model.addressable`) is never
  asked about: such a stream is exported from the listing alone, such a session is ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Protocol

from exporter.model import (
    LIVE,
    NOT_LIVE,
    UNKNOWN_STATUS,
    ActiveSession,
    AppState,
    Listing,
    Livestream,
    Session,
    StreamState,
    Unlisted,
    addressable,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence

    from exporter.config import AppConfig


class Owner(Protocol):
    """Which streams this process exports, of how many processes sharing them (a
    :class:`~exporter.config.Shard`)."""

    @property
    def total(self) -> int: ...

    def owns(self, livestream_id: str) -> bool: ...


class _Everything:
    """No sharding: every stream."""

    total = 1

    def owns(self, livestream_id: str) -> bool:
        return True


WHOLE: Final[Owner] = _Everything()

# What a session request gave: an answer, or None when the request failed.
SessionOutcome = ActiveSession | None


@dataclass(frozen=True, slots=True)
class Plan:
    """The session requests one cycle needs for one app.

    ``active``: streams whose listed status does not rule out a live session (LIVE, or a
    status the exporter does not know, in that order), asked at ``active-livestream-session``.
    ``final``: streams listed as not live whose last session has not been seen to end,
    mapped to that session's id, asked by id for its final values.
    Neither holds a stream, or session, whose id is not addressable.
    """

    active: tuple[str, ...] = ()
    final: Mapping[str, str] = field(default_factory=dict)


def tracked(
    app: AppConfig,
    listing: Listing,
    shard: Owner = WHOLE,
    *,
    room: int | None = None,
    prev: AppState | None = None,
) -> list[Livestream]:
    """The listed streams this app tracks, of those ``shard`` owns: the configured ones and,
    when discovering, the others, at most ``room`` of them (:func:`preferred` first; ``prev``
    is the app's last state)."""
    configured = {ls.id for ls in app.livestreams}
    mine = [s for s in listing.livestreams if shard.owns(s.id)]
    if not app.discover:
        return [s for s in mine if s.id in configured]
    others = [s for s in mine if s.id not in configured]
    if room is None or len(others) <= room:
        return mine
    kept = {s.id for s in preferred(others, prev)[:room]}
    return [s for s in mine if s.id in configured or s.id in kept]


def preferred(streams: Iterable[Livestream], prev: AppState | None) -> list[Livestream]:
    """``streams`` in the order they are kept within the limit: LIVE ones first, then the
    rest; within each, those tracked last cycle first, then by id. So an unchanged listing
    keeps the same streams every cycle, and a stream that goes LIVE may take the place of
    one that is not."""
    before = {s.id for s in prev.streams} if prev is not None else set()
    return sorted(streams, key=lambda s: (s.status != LIVE, s.id not in before, s.id))


def discovered(app: AppConfig, listing: Listing, shard: Owner = WHOLE) -> int:
    """How many streams the app would track beyond its configured ones with no limit: the
    others listed that ``shard`` owns, plus its share of the entries a cut listing left
    unread (all of them unsharded; 1/N of them, rounded up, on a shard of N)."""
    if not app.discover:
        return 0
    configured = {ls.id for ls in app.livestreams}
    read = sum(1 for s in listing.livestreams if s.id not in configured and shard.owns(s.id))
    return read + -(-listing.unread // shard.total)


def rooms(
    apps: Sequence[AppConfig],
    limit: int,
    wanted: Mapping[tuple[str, str], int],
    shard: Owner = WHOLE,
) -> dict[tuple[str, str], int]:
    """How many discovered streams each discovering app may track this cycle.

    Configured streams (those ``shard`` owns) take ``limit``'s places first. The rest is
    shared out: an app that wants (``wanted``: last cycle's :func:`discovered`; unknown
    counts as unbounded) no more than an equal share gets what it wants, the others split
    what remains equally, and room still left is split equally as headroom. The shares
    add up to at most the rest and, for the same config, change only with ``wanted``.
    """
    configured = sum(1 for app in apps for ls in app.livestreams if shard.owns(ls.id))
    left = max(0, limit - configured)
    keys = [app.key for app in apps if app.discover]
    out = dict.fromkeys(keys, 0)
    # Smallest wants first (sorted is stable: config order among equals).
    for n, key in enumerate(sorted(keys, key=lambda k: wanted.get(k, math.inf))):
        share = left // (len(keys) - n)
        out[key] = min(wanted.get(key, share), share)
        left -= out[key]
    for n, key in enumerate(keys):
        extra = left // (len(keys) - n)
        out[key] += extra
        left -= extra
    return out


def missing(app: AppConfig, listing: Listing, shard: Owner = WHOLE) -> list[str]:
    """Configured ids, owned by ``shard``, that the listing does not contain."""
    listed = {s.id for s in listing.livestreams}
    return [ls.id for ls in app.livestreams if ls.id not in listed and shard.owns(ls.id)]


def plan(
    streams: list[Livestream],
    prev: AppState | None,
    *,
    now: float,
    max_staleness: float,
    stopped: Collection[str] = (),
) -> Plan:
    """Which session requests this cycle needs (see :class:`Plan`). ``stopped`` names
    streams known not to be live though their status is not known (they left the LIVE
    listing): asked, like those listed as not live, only for their final values."""
    before = {s.id: s for s in prev.streams} if prev is not None else {}
    active: list[str] = []
    unknown: list[str] = []
    final: dict[str, str] = {}
    for stream in streams:
        if not addressable(stream.id):
            continue  # no request can name it: the listing is all there is (_Rules.stream)
        if stream.status == LIVE:
            active.append(stream.id)
        elif stream.status not in NOT_LIVE and stream.id not in stopped:
            unknown.append(stream.id)
        elif (old := before.get(stream.id)) is not None and _awaits_final(old, now, max_staleness):
            assert old.session is not None
            final[stream.id] = old.session.id
    return Plan(active=(*active, *unknown), final=final)


def _awaits_final(old: StreamState, now: float, max_staleness: float) -> bool:
    """The stream's last session may still change: it was not seen to end, recently, and
    it can be asked for by its id."""
    session = old.session
    return (
        session is not None
        and addressable(session.id)
        and session.active
        and old.last_live is not None
        and now - old.last_live <= max_staleness
    )


def stale_kept(
    app: AppConfig,
    prev: AppState | None,
    *,
    now: float,
    max_staleness: float,
    only: Collection[str] | None = None,
) -> tuple[StreamState, ...]:
    """For a cycle whose listing failed (or, with ``only``, whose lookups of those streams
    failed): the previous streams listed within max_staleness."""
    if prev is None:
        return ()
    expected = app.expectations()
    kept = []
    for s in prev.streams:
        if now - s.seen_at > max_staleness or not (app.discover or s.id in expected):
            continue
        if only is not None and s.id not in only:
            continue
        # A live stream's session values go once too old, as when only they fail to come.
        too_old = s.live and s.session is not None and now - s.counters_at > max_staleness
        expected_live = expected.get(s.id)
        if too_old or s.expected_live != expected_live:
            s = replace(s, expected_live=expected_live, session=None if too_old else s.session)
        kept.append(s)
    return tuple(kept)


def merge_app(
    app: AppConfig,
    prev: AppState | None,
    listing: Listing | None,
    sessions: Mapping[str, SessionOutcome],
    *,
    now: float,
    max_staleness: float,
    ok: bool,
    final: Collection[str] = (),
    shard: Owner = WHOLE,
    room: int | None = None,
    chosen: Sequence[Livestream] | None = None,
    deferred: Collection[str] = (),
    counter_hold: float | None = None,
) -> AppState:
    """The app's new state.

    ``listing`` is ``None`` when it failed; ``sessions`` maps each asked id to its answer
    (``None`` if that request failed), ``final`` names those asked by session id
    (:attr:`Plan.final`); ``ok`` says every request of the app succeeded; only the streams
    ``shard`` owns are kept, and at most ``room`` besides the configured ones (for a
    failed listing too: the room may have shrunk). ``chosen`` is :func:`tracked` of the
    listing, if the caller has it already (it planned the cycle's requests with it).
    ``deferred`` names the streams that may be live whose session was not asked this cycle
    (the counter lane's budget went to others): they keep their last session values.
    ``counter_hold`` (at least ``max_staleness``) is how long session values outlive
    failed requests for them.
    """
    last_success = now if ok else (prev.last_success if prev is not None else None)
    expected = app.expectations()
    if listing is None:
        streams = stale_kept(app, prev, now=now, max_staleness=max_staleness)
        dropped = prev.dropped if prev is not None else 0
        others = [s.livestream for s in streams if s.id not in expected]
        if room is not None and len(others) > room:
            kept = {s.id for s in preferred(others, None)[:room]}
            streams = tuple(s for s in streams if s.id in expected or s.id in kept)
            dropped += len(others) - room
        # The last good listing's word stands, for the streams still configured.
        unlisted = tuple(
            Unlisted(u.id, expected[u.id])
            for u in (prev.unlisted if prev is not None else ())
            if u.id in expected
        )
    else:
        # Streams whose own lookup failed are neither listed nor missing: as for a failed
        # listing, their last state stands (within max_staleness), and so does their
        # last word on being unlisted.
        unknown = listing.unknown
        was_unlisted = {u.id for u in prev.unlisted} if prev is not None else set()
        unlisted = tuple(
            Unlisted(i, expected[i])
            for i in sorted(missing(app, listing, shard))
            if i not in unknown or i in was_unlisted
        )
        before = {s.id: s for s in prev.streams} if prev is not None else {}
        rules = _Rules(
            app.expectations(),
            sessions,
            frozenset(final),
            now,
            max(max_staleness, counter_hold or 0.0),
            frozenset(deferred),
        )
        if chosen is None:
            chosen = tracked(app, listing, shard, room=room, prev=prev)
        states = [rules.stream(s, before.get(s.id)) for s in chosen]
        if unknown:
            held = stale_kept(app, prev, now=now, max_staleness=max_staleness, only=unknown)
            if room is not None:
                # Discovered streams kept this way share the room with those listed.
                free = room - sum(1 for s in chosen if s.id not in expected)
                held = (
                    tuple(s for s in held if s.id in expected)
                    + tuple(s for s in held if s.id not in expected)[: max(0, free)]
                )
            states += held
        streams = tuple(sorted((s for s in states if s is not None), key=lambda s: s.id))
        dropped = discovered(app, listing, shard) - sum(1 for s in chosen if s.id not in expected)
    return AppState(
        account_id=app.account_id,
        app_id=app.app_id,
        up=ok,
        last_success=last_success,
        streams=streams,
        unlisted=unlisted,
        dropped=dropped,
        credentials=app.credentials,
    )


@dataclass(frozen=True, slots=True)
class _Rules:
    expected: Mapping[str, bool | None]
    sessions: Mapping[str, SessionOutcome]
    final: frozenset[str]
    now: float
    # How long session values outlive failed requests for them: max_staleness, plus the
    # period at which the counter lane reaches each stream when that is longer.
    counter_hold: float
    deferred: frozenset[str] = frozenset()

    def stream(self, listed: Livestream, prev: StreamState | None) -> StreamState | None:
        """A listed stream's new state (``None``: nothing can be said about it yet)."""
        last = prev.session if prev is not None else None
        last_live = prev.last_live if prev is not None else None
        if listed.id in self.deferred:
            return self.waiting(listed, prev)
        if listed.id not in self.sessions:
            # Nothing asked: the stream is listed as not live, or no request can name it
            # (plan). The listing is the whole truth, and fresh; ``live`` follows its status.
            live = listed.status == LIVE
            return self.state(
                listed,
                live=live,
                session=_unasked(last) if not live else None,
                last_live=self.now if live else last_live,
                counted_at=_kept_time(prev) if not live else None,
            )
        outcome = self.sessions[listed.id]
        if outcome is None:
            return self.failed(listed, prev)
        if listed.id in self.final:
            return self.state(
                listed,
                live=False,
                session=_final(outcome.session, last),
                last_live=last_live,
                counted_at=self.now,
            )
        stream = listed
        fresher = outcome.livestream
        if fresher is not None and fresher.status not in (UNKNOWN_STATUS, listed.status):
            stream = replace(listed, status=fresher.status)
        session = outcome.session
        if session is None:
            # No active session: not live; the last session seen keeps its values, read
            # again now in the sense that nothing newer exists.
            return self.state(
                stream, live=False, session=last, last_live=last_live, counted_at=self.now
            )
        live = session.active
        return self.state(
            stream,
            live=live,
            session=session,
            last_live=self.now if live else last_live,
            counted_at=self.now,
        )

    def waiting(self, listed: Livestream, prev: StreamState | None) -> StreamState | None:
        """A stream that may be live whose session was not asked this cycle: the budget
        left its turn to streams with older counters. Its status is fresh; whether it is
        live stays as its last session answer said while the status is unchanged, and its
        session values (of a session not seen to end) stay, with their time."""
        if prev is None or prev.livestream.status != listed.status:
            if listed.status != LIVE:
                # An unknown status says nothing without a session answer.
                return None if prev is None else self.held(listed, prev)
            # Newly listed LIVE: live on the listing's word until its session comes.
            return self.state(listed, live=True, session=None, last_live=self.now)
        return self.held(listed, prev)

    def held(self, listed: Livestream, prev: StreamState) -> StreamState:
        session = prev.session
        if prev.live and session is not None and not session.active:
            session = None  # a session that ended belongs to an earlier broadcast
        return self.state(
            listed,
            live=prev.live,
            session=session,
            last_live=self.now if prev.live else prev.last_live,
            counted_at=_kept_time(prev),
        )

    def failed(self, listed: Livestream, prev: StreamState | None) -> StreamState | None:
        """The stream's session request failed; the (fresh) listing decides what it can."""
        if prev is None:
            if listed.status != LIVE:
                return None  # an unknown status and no answer: wait for one
            return self.state(listed, live=True, session=None, last_live=self.now)
        held = self.now - prev.counters_at
        unknown = listed.status != LIVE and listed.status not in NOT_LIVE
        if unknown and held > self.counter_hold:
            return None  # an unknown status says nothing, and the last answer is too old
        if listed.status != LIVE and not (unknown and prev.live):
            # Not live: keep what was seen; a final-values request is asked again next cycle.
            return self.state(
                listed,
                live=False,
                session=prev.session,
                last_live=prev.last_live,
                counted_at=_kept_time(prev),
            )
        # Live. Old session values stay while fresh, and only if that session had not
        # ended: an ended one belongs to an earlier broadcast, not to this one.
        session = prev.session
        if session is not None and (held > self.counter_hold or not session.active):
            session = None
        return self.state(
            listed,
            live=True,
            session=session,
            last_live=self.now,
            counted_at=_kept_time(prev),
        )

    def state(
        self,
        stream: Livestream,
        *,
        live: bool,
        session: Session | None,
        last_live: float | None,
        counted_at: float | None = None,
    ) -> StreamState:
        return StreamState(
            stream,
            live=live,
            session=session,
            last_update=self.now,
            expected_live=self.expected.get(stream.id),
            listed_at=self.now,
            last_live=last_live,
            counted_at=counted_at,
        )


def _kept_time(prev: StreamState | None) -> float | None:
    """When ``prev``'s session was last asked for (None: never, as far as is known)."""
    if prev is None:
        return None
    return prev.counters_at if prev.session is not None else prev.counted_at


def _unasked(last: Session | None) -> Session | None:
    """The last session of a stream listed as not live, when nothing was asked: kept, but
    ended if it cannot be asked for by id (its stop time will never be known)."""
    if last is not None and not addressable(last.id):
        return _final(None, last)
    return last


def _final(answer: Session | None, last: Session | None) -> Session | None:
    """The session after a by-id request: the answer, or, if it is gone, the last one seen
    marked as ended (its stop time will never be known, and it is not asked for again)."""
    if answer is not None:
        return answer
    if last is not None and last.active:
        return replace(last, ended=True)
    return last


# -- a webhook's targeted refresh of one stream (exporter.hints) ----------------------
def pushed_status(prev: StreamState, found: Livestream, *, now: float) -> StreamState:
    """``prev`` after a lookup of the stream by id (its status, read now). A stop keeps
    the session, whose final values are asked next (:func:`pushed_final`); a start drops
    a session that had ended, which belongs to an earlier broadcast."""
    live = found.status == LIVE
    session = prev.session
    if live and not prev.live and session is not None and not session.active:
        session = None
    return replace(
        prev,
        livestream=found,
        live=live if found.status in NOT_LIVE or live else prev.live,
        session=session,
        last_update=now,
        listed_at=now,
        last_live=now if live else prev.last_live,
    )


def pushed_final(
    prev: StreamState, session_id: str, answer: Session | None, *, now: float
) -> StreamState:
    """``prev`` after session ``session_id`` was asked for by id (its final values); as
    it was if that is no longer its last session, or the stream is live again."""
    if prev.live or prev.session is None or prev.session.id != session_id:
        return prev
    return replace(prev, session=_final(answer, prev.session), counted_at=now)


def pushed_session(prev: StreamState, answer: ActiveSession, *, now: float) -> StreamState:
    """``prev`` after its active session was asked for (a start's refresh): live with that
    session if it is active, its status the answer's livestream's (LIVE, if the answer
    has none: an active session is a live stream); as it was, values read now, if not."""
    session = answer.session
    if session is None or not session.active:
        return replace(prev, counted_at=now) if prev.session is not None else prev
    listed = answer.livestream
    stream = prev.livestream
    if listed is not None and listed.status != UNKNOWN_STATUS:
        stream = replace(stream, status=listed.status)
    elif stream.status != LIVE:
        stream = replace(stream, status=LIVE)
    return replace(
        prev,
        livestream=stream,
        live=True,
        session=session,
        last_update=now,
        listed_at=now,
        last_live=now,
        counted_at=now,
    )


def awaits_final(state: StreamState) -> str | None:
    """The id of the session whose final values a stream that stopped still waits for."""
    session = state.session
    if state.live or session is None or not session.active or not addressable(session.id):
        return None
    return session.id
