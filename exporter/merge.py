"""Pure rules that turn one cycle's API answers and the previous state into a new AppState.

Kept apart from the poller's I/O so that the rules users rely on are plain functions:
an API failure never turns ``live`` to 0; last good values stay until ``max_staleness``;
a stream no longer listed (or removed from config) disappears at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.model import LIVE, ActiveSession, AppState, Listing, Livestream, StreamState

if TYPE_CHECKING:
    from collections.abc import Mapping

    from exporter.config import AppConfig

# What a session fetch gave: an answer, or None when the request failed.
SessionOutcome = ActiveSession | None


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


def sessions_to_fetch(streams: list[Livestream], prev: AppState | None) -> list[str]:
    """Ids whose session details are needed: LIVE now, or LIVE last cycle (final values)."""
    was_live = {s.id for s in prev.streams if s.live} if prev is not None else set()
    return [s.id for s in streams if s.status == LIVE or s.id in was_live]


def stale_kept(
    app: AppConfig, prev: AppState | None, *, now: float, max_staleness: float
) -> tuple[StreamState, ...]:
    """Previous streams still within ``max_staleness``, for a cycle whose listing failed."""
    if prev is None:
        return ()
    wanted = {ls.id for ls in app.livestreams}
    return tuple(
        _with_expectation(s, app)
        for s in prev.streams
        if now - s.last_update <= max_staleness and (app.discover or s.id in wanted)
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
) -> AppState:
    """The app's new state.

    ``listing`` is ``None`` when it failed; ``sessions`` maps each fetched id to its answer
    (``None`` if that fetch failed); ``ok`` says every request of the app succeeded.
    """
    last_success = now if ok else (prev.last_success if prev is not None else None)
    if listing is None:
        streams = stale_kept(app, prev, now=now, max_staleness=max_staleness)
    else:
        before = {s.id: s for s in prev.streams} if prev is not None else {}
        states = (
            _stream(app, stream, before.get(stream.id), sessions, now, max_staleness)
            for stream in tracked(app, listing)
        )
        streams = tuple(sorted((s for s in states if s is not None), key=lambda s: s.id))
    return AppState(
        account_id=app.account_id,
        app_id=app.app_id,
        up=ok,
        last_success=last_success,
        streams=streams,
    )


def _stream(
    app: AppConfig,
    listed: Livestream,
    prev: StreamState | None,
    sessions: Mapping[str, SessionOutcome],
    now: float,
    max_staleness: float,
) -> StreamState | None:
    expected = app.expected_live(listed.id)
    if listed.id not in sessions:
        # Listed as not live and not live before: the listing alone is the whole truth.
        last = prev.session if prev is not None else None
        return StreamState(
            listed, live=False, session=last, last_update=now, expected_live=expected
        )
    outcome = sessions[listed.id]
    if outcome is None:
        # The fetch failed. The listing is fresh, so liveness follows it; only the session
        # values are old, and they age out after max_staleness while the stream stays LIVE.
        live = listed.status == LIVE
        last_update = now
        if live and prev is not None:
            if now - prev.last_update > max_staleness:
                return None
            last_update = prev.last_update
        return StreamState(
            listed,
            live=live,
            session=prev.session if prev is not None else None,
            last_update=last_update,
            expected_live=expected,
        )
    stream = listed
    if outcome.livestream is not None and outcome.livestream.status != listed.status:
        stream = Livestream(
            id=listed.id,
            status=outcome.livestream.status,
            name=listed.name,
            meeting_id=listed.meeting_id,
            disabled=listed.disabled,
        )
    session = outcome.session
    if session is None:
        # No active session: not live; keep the last session seen for its final values.
        last = prev.session if prev is not None else None
        return StreamState(
            stream, live=False, session=last, last_update=now, expected_live=expected
        )
    return StreamState(
        stream, live=session.active, session=session, last_update=now, expected_live=expected
    )


def _with_expectation(state: StreamState, app: AppConfig) -> StreamState:
    expected = app.expected_live(state.id)
    if expected == state.expected_live:
        return state
    return StreamState(
        state.livestream,
        live=state.live,
        session=state.session,
        last_update=state.last_update,
        expected_live=expected,
    )
