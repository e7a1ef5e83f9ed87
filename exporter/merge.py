"""Pure rules that turn one cycle's API answers and the previous state into a new AppState.

Kept apart from the poller's I/O so that the rules users rely on are plain functions:
an API failure never turns ``live`` to 0; last good values stay until ``max_staleness``;
a stream no longer listed (or removed from config) disappears at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

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
)

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from exporter.config import AppConfig

# What a session fetch gave: an answer, or None when the request failed.
SessionOutcome = ActiveSession | None


@dataclass(frozen=True, slots=True)
class Plan:
    """The session requests one cycle needs for one app.

    ``active``: streams whose listing status does not rule out a session (LIVE, or a
    status the exporter does not know), asked at ``active-livestream-session``.
    ``final``: streams that were live last cycle and are listed as not live now, mapped to
    the id of their last session, asked by id for its final values.
    """

    active: tuple[str, ...] = ()
    final: Mapping[str, str] = field(default_factory=dict)


def tracked(app: AppConfig, listing: Listing) -> list[Livestream]:
    """The listed streams this app tracks: all of them when discovering, else the configured."""
    if app.discover:
        return list(listing.livestreams)
    wanted = {ls.id for ls in app.livestreams}
    return [s for s in listing.livestreams if s.id in wanted]


def missing(app: AppConfig, listing: Listing) -> list[str]:
    """Configured ids that the listing does not contain."""
    listed = {s.id for s in listing.livestreams}
    return [ls.id for ls in app.livestreams if ls.id not in listed]


def plan(streams: list[Livestream], prev: AppState | None) -> Plan:
    """Which session requests this cycle needs (see :class:`Plan`)."""
    before = {s.id: s for s in prev.streams} if prev is not None else {}
    active: list[str] = []
    final: dict[str, str] = {}
    for stream in streams:
        if stream.status not in NOT_LIVE:
            active.append(stream.id)
            continue
        old = before.get(stream.id)
        if old is not None and old.live and old.session is not None and old.session.id:
            final[stream.id] = old.session.id
    return Plan(active=tuple(active), final=final)


def stale_kept(
    app: AppConfig, prev: AppState | None, *, now: float, max_staleness: float
) -> tuple[StreamState, ...]:
    """Previous streams still within ``max_staleness``, for a cycle whose listing failed."""
    if prev is None:
        return ()
    expected = app.expectations()
    return tuple(
        s if s.expected_live == expected.get(s.id) else replace(s, expected_live=expected.get(s.id))
        for s in prev.streams
        if now - s.last_update <= max_staleness and (app.discover or s.id in expected)
    )


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
) -> AppState:
    """The app's new state.

    ``listing`` is ``None`` when it failed; ``sessions`` maps each fetched id to its answer
    (``None`` if that fetch failed), ``final`` names those that were final-value fetches
    (:attr:`Plan.final`); ``ok`` says every request of the app succeeded.
    """
    last_success = now if ok else (prev.last_success if prev is not None else None)
    if listing is None:
        streams = stale_kept(app, prev, now=now, max_staleness=max_staleness)
    else:
        before = {s.id: s for s in prev.streams} if prev is not None else {}
        rules = _Rules(app.expectations(), sessions, frozenset(final), now, max_staleness)
        streams = tuple(
            sorted(
                (rules.stream(stream, before.get(stream.id)) for stream in tracked(app, listing)),
                key=lambda s: s.id,
            )
        )
    return AppState(
        account_id=app.account_id,
        app_id=app.app_id,
        up=ok,
        last_success=last_success,
        streams=streams,
    )


@dataclass(frozen=True, slots=True)
class _Rules:
    expected: Mapping[str, bool | None]
    sessions: Mapping[str, SessionOutcome]
    final: frozenset[str]
    now: float
    max_staleness: float

    def stream(self, listed: Livestream, prev: StreamState | None) -> StreamState:
        """A listed stream's new state. A listed stream is always exported."""
        last = prev.session if prev is not None else None
        if listed.id not in self.sessions:
            # Listed as not live and not live before: the listing is the whole truth.
            return self.state(listed, live=False, session=last)
        outcome = self.sessions[listed.id]
        if outcome is None:
            return self.failed(listed, prev)
        if listed.id in self.final:
            # The listing says it stopped; the session by id gives its final values.
            return self.state(listed, live=False, session=outcome.session or last)
        stream = listed
        fresher = outcome.livestream
        if fresher is not None and fresher.status not in (UNKNOWN_STATUS, listed.status):
            stream = replace(listed, status=fresher.status)
        session = outcome.session
        if session is None:
            # No active session: not live; the last session seen keeps its final values.
            return self.state(stream, live=False, session=last)
        return self.state(stream, live=session.active, session=session)

    def failed(self, listed: Livestream, prev: StreamState | None) -> StreamState:
        """The session request failed: the listing (fresh) decides liveness.

        An unknown status keeps the previous liveness. The old session values stay until
        ``max_staleness`` after the stream's last complete update, then only they go: the
        stream itself stays, so its series never flap.
        """
        if prev is None:
            return self.state(listed, live=listed.status == LIVE, session=None)
        live = listed.status == LIVE or (listed.status not in NOT_LIVE and prev.live)
        if not live or listed.id in self.final:
            return self.state(listed, live=False, session=prev.session)
        fresh = self.now - prev.last_update <= self.max_staleness
        return self.state(
            listed,
            live=True,
            session=prev.session if fresh else None,
            last_update=prev.last_update,
        )

    def state(
        self,
        stream: Livestream,
        *,
        live: bool,
        session: Session | None,
        last_update: float | None = None,
    ) -> StreamState:
        return StreamState(
            stream,
            live=live,
            session=session,
            last_update=self.now if last_update is None else last_update,
            expected_live=self.expected.get(stream.id),
        )
