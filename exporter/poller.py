"""When and what to fetch; owns the latest :class:`~exporter.model.Snapshot` and the last
errors seen (:attr:`Poller.recent_errors`, for the status page).

Each cycle lists every app's livestreams (all pages), asks for session details only where
the listed status allows a live session, plus once by session id for a stream that has just
stopped (its final values), merges the answers with the previous state
(:mod:`exporter.merge`) and swaps in a new immutable snapshot. Scrapes only read it.
Logs are written on state changes (app up/down, stream went LIVE/stopped), never per poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from exporter import merge
from exporter.budget import CycleDeadline
from exporter.client import ENDPOINT_LISTING, PRIORITY_LIVE, PRIORITY_OTHER, ApiError
from exporter.config import API_RATE_LIMIT
from exporter.model import EMPTY_SNAPSHOT, AppState, Listing, Snapshot, addressable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from exporter.config import AppConfig, Config
    from exporter.model import ActiveSession, Livestream

log = logging.getLogger(__name__)

INTERNAL = "internal"  # health reason for a bug, not an API failure; never a metric label
RECENT_ERRORS = 20  # how many errors :attr:`Poller.recent_errors` keeps
_PERMISSION_HINT = "the API token needs the Realtime or Realtime Admin permission"


class Api(Protocol):
    """What the poller needs of :class:`~exporter.client.RealtimeKitClient`."""

    async def list_livestreams(
        self,
        account_id: str,
        app_id: str,
        *,
        deadline: CycleDeadline | None = None,
        stop_early: Callable[[Collection[str], int], bool] | None = None,
        max_entries: int | None = None,
    ) -> Listing: ...

    async def livestream(
        self,
        account_id: str,
        app_id: str,
        livestream_id: str,
        *,
        deadline: CycleDeadline | None = None,
    ) -> Livestream | None: ...

    async def active_session(
        self,
        account_id: str,
        app_id: str,
        livestream_id: str,
        *,
        deadline: CycleDeadline | None = None,
        priority: int = PRIORITY_LIVE,
    ) -> ActiveSession: ...

    async def session(
        self,
        account_id: str,
        app_id: str,
        session_id: str,
        *,
        deadline: CycleDeadline | None = None,
        priority: int = PRIORITY_OTHER,
    ) -> ActiveSession: ...


class PollObserver(Protocol):
    def poll_error(self, account_id: str, app_id: str, reason: str) -> None: ...

    def track_app(self, account_id: str, app_id: str) -> None: ...

    def untrack_app(self, account_id: str, app_id: str) -> None: ...

    def cycle(self, seconds: float, *, waited_for_budget: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class PollError:
    """One failed API call (or a bug, reason ``internal``) while polling an app.

    ``message`` is built from the reason, HTTP status and pause only, never from the
    :class:`ApiError`'s text: that may quote a response body, which could echo a secret.
    """

    time: float
    account_id: str
    app_id: str
    endpoint: str  # "" for an internal error
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class _Health:
    """What a log line is written for: the app going up or down, and the token being
    rejected or accepted again. Other changes of reason while down are debug lines."""

    up: bool
    auth_failing: bool = False
    internal: bool = False


class Poller:
    """Polls every configured app each ``poll.interval`` and keeps the latest snapshot."""

    def __init__(
        self,
        *,
        config: Config,
        api: Api,
        observer: PollObserver | None = None,
        on_snapshot: Callable[[], None] | None = None,
        before_cycle: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_snapshot`` is called, on the event loop, each time a new snapshot is out;
        ``before_cycle`` at the start of each cycle (where a reload may :meth:`reconfigure`)."""
        self._config = config
        self._api = api
        self._observer = observer
        self._on_snapshot = on_snapshot
        self._before_cycle = before_cycle
        self._clock = clock
        self._monotonic = monotonic
        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._health: dict[tuple[str, str], _Health] = {}
        self._missing: dict[tuple[str, str], frozenset[str]] = {}
        # limits.max_livestreams: what each app last wanted to discover, this cycle's rooms
        # (merge.rooms), and the apps whose streams the limit keeps out (logged once).
        self._wanted: dict[tuple[str, str], int] = {}
        self._rooms: dict[tuple[str, str], int] = {}
        self._limited: set[tuple[str, str]] = set()
        self._cycle_requests = 0
        self._cycle_planned = 0
        self._over_budget = False
        self._errors: deque[PollError] = deque(maxlen=RECENT_ERRORS)
        for app in config.apps:
            self._track(app)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def ready(self) -> bool:
        """True once a poll cycle has completed (successfully or not)."""
        return self._snapshot.cycles > 0

    @property
    def recent_errors(self) -> tuple[PollError, ...]:
        """The last :data:`RECENT_ERRORS` errors seen while polling, newest first."""
        return tuple(reversed(self._errors))

    def reconfigure(self, config: Config, *, api: Api | None = None) -> None:
        """Poll by ``config`` (and through ``api``) from the next cycle on; call it between
        cycles (``before_cycle``). The snapshot carries over: apps and streams still
        tracked keep their state, the others leave at that cycle."""
        keys = {app.key for app in config.apps}
        for key in set(self._health) - keys:
            del self._health[key]
        for key in set(self._missing) - keys:
            del self._missing[key]
        known = {app.key for app in self._config.apps}
        for app in config.apps:
            if app.key not in known:
                self._track(app)
        if self._observer is not None:
            for gone in known - keys:
                self._observer.untrack_app(*gone)
        self._config = config
        if api is not None:
            self._api = api

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a cycle that overruns starts the next one at once."""
        while not stop.is_set():
            started = self._monotonic()
            await self.poll_once()
            # Read after the cycle: a reload applied at its start may have changed it.
            delay = max(0.0, started + self._config.poll.interval - self._monotonic())
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def poll_once(self) -> Snapshot:
        """One cycle over every app; returns (and publishes) the new snapshot."""
        if self._before_cycle is not None:
            await self._before_cycle()
        started = self._monotonic()
        deadline = CycleDeadline(started + self._config.poll.interval, self._monotonic)
        prev = self._snapshot
        self._cycle_requests = 0
        self._cycle_planned = 0
        self._share_limit()
        apps = await asyncio.gather(
            *(self._poll_app(app, prev.app(*app.key), deadline) for app in self._config.apps)
        )
        snapshot = Snapshot(
            apps=tuple(apps),
            taken_at=self._clock(),
            cycles=prev.cycles + 1,
            app_level=self._config.shard.index == 0,
            livestream_limit=self._config.limits.max_livestreams,
        )
        self._snapshot = snapshot
        if self._on_snapshot is not None:
            self._on_snapshot()
        if self._cycle_planned == len(self._config.apps):
            # A cycle with a failed listing planned less than it needs: it says nothing.
            self._note_budget(self._cycle_requests)
        if self._observer is not None:
            self._observer.cycle(
                self._monotonic() - started, waited_for_budget=deadline.budget_bound
            )
        return snapshot

    async def _poll_app(
        self, app: AppConfig, prev: AppState | None, deadline: CycleDeadline
    ) -> AppState:
        internal = False
        try:
            state, errors = await self._fetch_app(app, prev, deadline)
        except Exception:
            # The poll loop must outlive any bug in one app's handling; the app reads as down
            # and the traceback is logged once, when the app goes down for this reason.
            before = self._health.get(app.key)
            log.log(
                logging.DEBUG if before is not None and before.internal else logging.ERROR,
                "unexpected error while polling app",
                exc_info=True,
                extra={**_app_fields(app), "reason": INTERNAL},
            )
            state, errors, internal = self._failed(app, prev), [], True
        self._note_errors(app, errors, internal=internal)
        self._note_health(app, state, errors, internal=internal)
        self._note_streams(app, prev, state)
        self._note_limit(app, state)
        return state

    async def _fetch_app(
        self, app: AppConfig, prev: AppState | None, deadline: CycleDeadline
    ) -> tuple[AppState, list[ApiError]]:
        errors: list[ApiError] = []
        try:
            listing = await self._list(app, deadline, errors)
        except ApiError as exc:
            return self._failed(app, prev), [exc]
        if listing.skipped:
            # An entry whose id could not be read may be any stream the listing seems to
            # lack: those keep their last state, as for a failed listing, and none is
            # called unlisted on this listing's word.
            listed = {s.id for s in listing.livestreams}
            lacking = {ls.id for ls in app.livestreams} | (
                {s.id for s in prev.streams} if prev is not None else set()
            )
            listing = dataclasses.replace(
                listing, unknown=listing.unknown | frozenset(lacking - listed)
            )
        self._note_missing(app, listing)
        shard = self._config.shard
        room = self._rooms.get(app.key)
        self._wanted[app.key] = merge.discovered(app, listing, shard)
        chosen = merge.tracked(app, listing, shard, room=room, prev=prev)
        _note_unaddressable(app, prev, chosen)
        plan = merge.plan(
            chosen,
            prev,
            now=self._clock(),
            max_staleness=self._config.poll.max_staleness,
        )
        self._cycle_requests += listing.pages + len(plan.active) + len(plan.final)
        self._cycle_planned += 1
        requests: list[tuple[str, Awaitable[ActiveSession]]] = [
            (sid, self._api.active_session(app.account_id, app.app_id, sid, deadline=deadline))
            for sid in plan.active
        ]
        # Asked after every possibly live stream's session, when the budget is short.
        requests += [
            (
                sid,
                self._api.session(
                    app.account_id,
                    app.app_id,
                    session_id,
                    deadline=deadline,
                    priority=PRIORITY_OTHER,
                ),
            )
            for sid, session_id in plan.final.items()
        ]
        answers = await asyncio.gather(*(call for _, call in requests), return_exceptions=True)
        sessions: dict[str, merge.SessionOutcome] = {}
        if listing.skipped:
            errors.append(
                ApiError(
                    "decode",
                    f"{listing.skipped} listing entries are not livestreams with an id",
                    endpoint=ENDPOINT_LISTING,
                )
            )
        for (sid, _), answer in zip(requests, answers, strict=True):
            if isinstance(answer, ApiError):
                errors.append(answer)
                sessions[sid] = None
            elif isinstance(answer, BaseException):
                raise _as_bug(answer)
            else:
                sessions[sid] = answer
        state = merge.merge_app(
            app,
            prev,
            listing,
            sessions,
            now=self._clock(),
            max_staleness=self._config.poll.max_staleness,
            ok=not errors,
            final=plan.final.keys(),
            shard=shard,
            room=room,
            chosen=chosen,
        )
        return state, errors

    async def _list(
        self, app: AppConfig, deadline: CycleDeadline, errors: list[ApiError]
    ) -> Listing:
        """The app's streams, by whichever costs fewer requests: the listing's pages, or, for
        an app that tracks only configured streams, its first page and one request per
        configured stream that page lacks. The listing is read only until it holds
        :meth:`_listing_cap` streams; configured streams the pages read lack are then looked
        up by id too. A failed lookup of one stream is added to ``errors``, and the stream
        to :attr:`Listing.unknown`."""
        shard = self._config.shard
        wanted = [ls.id for ls in app.livestreams if shard.owns(ls.id)]
        cap = self._listing_cap()
        if app.discover:
            listing = await self._api.list_livestreams(
                app.account_id, app.app_id, deadline=deadline, max_entries=cap
            )
        else:

            def by_id_is_cheaper(seen: Collection[str], pages_left: int) -> bool:
                return pages_left > sum(1 for i in wanted if i not in seen)

            listing = await self._api.list_livestreams(
                app.account_id,
                app.app_id,
                deadline=deadline,
                stop_early=by_id_is_cheaper,
                max_entries=cap,
            )
        if listing.complete:
            return listing
        listed = {s.id for s in listing.livestreams}
        rest = [i for i in wanted if i not in listed]
        answers = await asyncio.gather(
            *(self._api.livestream(app.account_id, app.app_id, i, deadline=deadline) for i in rest),
            return_exceptions=True,
        )
        keep = set(wanted)
        found = [s for s in listing.livestreams if app.discover or s.id in keep]
        read = len(found)
        unknown: set[str] = set()
        for sid, answer in zip(rest, answers, strict=True):
            if isinstance(answer, ApiError):
                if answer.status == 400 and answer.reason == "http_error":
                    continue  # the API says it is no livestream id: not listed
                errors.append(answer)
                unknown.add(sid)
            elif isinstance(answer, BaseException):
                raise _as_bug(answer)
            elif answer is not None:
                found.append(answer)
        return Listing(
            livestreams=tuple(found),
            pages=listing.pages + len(rest),
            skipped=listing.skipped,
            total=listing.total,
            unknown=frozenset(unknown),
            # Those found by id were among the entries left unread.
            unread=max(0, listing.unread - (len(found) - read)),
        )

    def _listing_cap(self) -> int:
        """How many streams a listing is read for: twice limits.max_livestreams (room for
        configured and already tracked streams further down), times the number of shards
        (a shard owns about 1/N of what it reads)."""
        return 2 * self._config.limits.max_livestreams * self._config.shard.total

    def _failed(self, app: AppConfig, prev: AppState | None) -> AppState:
        """The app's state when this cycle learnt nothing: last values, within staleness."""
        return merge.merge_app(
            app,
            prev,
            None,
            {},
            now=self._clock(),
            max_staleness=self._config.poll.max_staleness,
            ok=False,
            room=self._rooms.get(app.key),
        )

    def _track(self, app: AppConfig) -> None:
        if self._observer is not None:
            self._observer.track_app(app.account_id, app.app_id)

    def _note_errors(self, app: AppConfig, errors: list[ApiError], *, internal: bool) -> None:
        now = self._clock()
        for error in errors:
            if self._observer is not None:
                self._observer.poll_error(app.account_id, app.app_id, error.reason)
            self._errors.append(
                PollError(
                    time=now,
                    account_id=app.account_id,
                    app_id=app.app_id,
                    endpoint=error.endpoint,
                    reason=error.reason,
                    message=_safe(error),
                )
            )
        if internal:
            self._errors.append(
                PollError(
                    time=now,
                    account_id=app.account_id,
                    app_id=app.app_id,
                    endpoint="",
                    reason=INTERNAL,
                    message="unexpected error in the exporter; see its log",
                )
            )

    def _note_health(
        self, app: AppConfig, state: AppState, errors: list[ApiError], *, internal: bool
    ) -> None:
        auth = next((e for e in errors if e.reason == "auth"), None)
        health = _Health(up=state.up, auth_failing=auth is not None, internal=internal)
        before = self._health.get(app.key)
        self._health[app.key] = health
        fields = _app_fields(app)
        if errors:
            fields["reason"] = errors[0].reason
        if auth is not None and (before is None or not before.auth_failing):
            log.error("API rejected the token (%s): %s", _PERMISSION_HINT, auth, extra=fields)
        if before is not None and before.up == health.up:
            if errors:
                log.debug("app still down: %s", errors[0], extra=fields)
            return
        if health.up:
            if before is not None:
                log.info("app is up again", extra=fields)
        elif errors and auth is None:
            log.warning("app is down: %s", errors[0], extra=fields)

    def _note_budget(self, planned: int) -> None:
        """Warn once when a cycle's needs, at this interval, outrun ``api.rate_limit``."""
        rate = self._config.shard.budget(self._config.api.rate_limit)
        needed = planned * rate.window / self._config.poll.interval
        over = needed > rate.requests
        if over == self._over_budget:
            return
        self._over_budget = over
        if over:
            log.warning(
                "this cycle planned %d requests, %.0f per %gs at this interval, but "
                "api.rate_limit allows %d: cycles will wait for the budget and take longer "
                "than poll.interval; raise poll.interval or api.rate_limit, or shard",
                planned,
                needed,
                rate.window,
                rate.requests,
            )
        else:
            log.info("polling fits api.rate_limit again (%d requests this cycle)", planned)

    def _share_limit(self) -> None:
        """This cycle's rooms (:func:`merge.rooms`); apps no longer configured are forgotten."""
        keys = {app.key for app in self._config.apps}
        self._wanted = {key: n for key, n in self._wanted.items() if key in keys}
        self._limited &= keys
        limit = self._config.limits.max_livestreams
        self._rooms = merge.rooms(self._config.apps, limit, self._wanted, self._config.shard)

    def _note_limit(self, app: AppConfig, state: AppState) -> None:
        """One warning when limits.max_livestreams starts keeping the app's listed streams
        out, one info line when it no longer does."""
        limited = state.dropped > 0
        if limited == (app.key in self._limited):
            return
        if limited:
            self._limited.add(app.key)
            log.warning(
                "livestream limit reached: %d listed livestreams of the app are not tracked "
                "(%d are; limits.max_livestreams is %d for the process)",
                state.dropped,
                len(state.streams),
                self._config.limits.max_livestreams,
                extra=_app_fields(app),
            )
        else:
            self._limited.discard(app.key)
            log.info(
                "livestream limit no longer reached: every listed livestream of the app is "
                "tracked (%d)",
                len(state.streams),
                extra=_app_fields(app),
            )

    def _note_missing(self, app: AppConfig, listing: Listing) -> None:
        now_missing = frozenset(merge.missing(app, listing, self._config.shard)) - listing.unknown
        if now_missing == self._missing.get(app.key, frozenset()):
            return
        self._missing[app.key] = now_missing
        if now_missing:
            log.warning(
                "configured livestreams are not in the app's listing: %s",
                ", ".join(sorted(now_missing)),
                extra=_app_fields(app),
            )

    def _note_streams(self, app: AppConfig, prev: AppState | None, state: AppState) -> None:
        before = {s.id: s for s in prev.streams} if prev is not None else {}
        for stream in state.streams:
            old = before.pop(stream.id, None)
            fields = {**_app_fields(app), "livestream_id": stream.id}
            if old is None:
                log.debug("tracking livestream (status %s)", stream.livestream.status, extra=fields)
                if stream.live:
                    log.info("livestream is LIVE", extra=fields)
            elif stream.live != old.live:
                if stream.live:
                    log.info("livestream went LIVE", extra=fields)
                else:
                    log.info(
                        "livestream stopped being LIVE (status %s)",
                        stream.livestream.status,
                        extra=fields,
                    )
        for gone in before:
            log.info(
                "livestream no longer tracked", extra={**_app_fields(app), "livestream_id": gone}
            )


def budget_warnings(config: Config) -> list[str]:
    """Warnings when the budget, or the configured polling, may go over a limit.

    Polling is estimated per cycle and app as one listing page plus one session request
    per configured stream (each may be LIVE); discovered streams are unknown at start-up,
    and the poller checks every real cycle against the budget as it runs.
    """
    warnings = []
    rate = config.api.rate_limit
    api_requests, api_window = API_RATE_LIMIT
    # The most the budget lets through in any one API window: a whole budget at once when
    # its window is at least as long, else one budget per started window of ours.
    burst = rate.requests * max(1, math.ceil(api_window / rate.window))
    if burst > api_requests:
        warnings.append(
            f"api.rate_limit {rate} is above the API's own limit of {api_requests} requests "
            f"per {api_window:g}s per token; going over blocks the token for 5 minutes"
        )
    share = config.shard.budget(rate)
    per_cycle = sum(
        1 + sum(1 for ls in app.livestreams if config.shard.owns(ls.id)) for app in config.apps
    )
    needed = per_cycle * share.window / config.poll.interval
    if needed > share.requests:
        warnings.append(
            f"polling may need up to {needed:.0f} requests per {share.window:g}s "
            f"({per_cycle} per cycle every {config.poll.interval:g}s) but the budget allows "
            f"{share.requests}; cycles will wait for the budget and take longer than "
            "poll.interval: raise poll.interval or api.rate_limit"
        )
    return warnings


_REASON_TEXT = {
    "auth": "the API rejected the token",
    "rate_limited": "rate limited: the API paused the token, request not sent",
    "timeout": "no answer in time, or no time left in the poll cycle",
    "connection": "cannot connect to the API",
    "http_error": "the API answered with an error",
    "decode": "the answer could not be understood",
}


def _safe(error: ApiError) -> str:
    """What :class:`PollError` says of ``error``: no text of the API's answer."""
    text = _REASON_TEXT.get(error.reason, error.reason)
    if error.reason == "rate_limited" and error.status is not None:
        text = "throttled by the API"
    if error.status is not None:
        text += f" (HTTP {error.status})"
    if error.retry_after is not None:
        text += f", pausing requests for {error.retry_after:g} s"
    return text


def _as_bug(exc: BaseException) -> BaseException:
    """What to raise for a request that ended in ``exc``, not an :class:`ApiError`. A
    cancellation that is not the poller's own (gather would have raised that) came from a
    library: it is made a bug, so that the poller itself lives on."""
    if isinstance(exc, asyncio.CancelledError):
        error = RuntimeError("an API request was cancelled")
        error.__cause__ = exc
        return error
    return exc


def _note_unaddressable(
    app: AppConfig, prev: AppState | None, chosen: Collection[Livestream]
) -> None:
    """One warning when the app starts tracking streams whose ids cannot be put in a
    request (:func:`~exporter.model.addressable`), naming them: they are new if ``prev``
    lacks them, so a steady listing logs once. A listing holds each id once, so the line
    names at most the few texts in :data:`~exporter.model.UNADDRESSABLE`."""
    before = {s.id for s in prev.streams} if prev is not None else set()
    new = sorted(s.id for s in chosen if not addressable(s.id) and s.id not in before)
    if not new:
        return
    log.warning(
        "%d listed livestreams have ids no request can name (URLs drop '.' and '..' path "
        "segments): exported from the listing alone, without session values: %s",
        len(new),
        ", ".join(map(repr, new)),
        extra=_app_fields(app),
    )


def _app_fields(app: AppConfig) -> dict[str, str]:
    return {"account_id": app.account_id, "app_id": app.app_id}
