"""When and what to fetch; owns the latest :class:`~exporter.model.Snapshot` and the last
errors seen (:attr:`Poller.recent_errors`, for the status page).

Each cycle first learns every app's statuses, then asks for session details only where
the listed status allows a live session, plus once by session id for a stream that has just
stopped (its final values), merges the answers with the previous state
(:mod:`exporter.merge`) and swaps in a new immutable snapshot. Scrapes only read it.

Two plans (:mod:`exporter.lanes`): while the budget affords it, each cycle reads every
app's listing whole and every possibly live stream's session. When it does not, statuses
still come every cycle (the listing filtered to LIVE, a stop confirmed by the stream's own
lookup, the whole listing a few pages per cycle) and sessions go in turn on what is left.

Logs are written on state changes (app up/down, stream went LIVE/stopped, a stream's
error, plan changed), never per poll at info; a line about a stream names it by id and by
name (fields ``livestream_id``, ``livestream_name``). At debug, each cycle adds one summary
line (field ``credentials``): its apps, the requests sent since the last one by endpoint,
its duration and the plan; the client adds one line per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import Counter, deque
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from exporter import lanes, merge
from exporter.analytics import Analytics, AnalyticsApi
from exporter.budget import CycleDeadline
from exporter.client import (
    ENDPOINT_LISTING,
    ENDPOINT_LIVESTREAM,
    LISTING_PAGE_SIZE,
    PRIORITY_LISTING,
    PRIORITY_LIVE,
    PRIORITY_OTHER,
    ApiError,
)
from exporter.config import DEFAULT_CREDENTIALS, rate_key
from exporter.model import (
    EMPTY_SNAPSHOT,
    LIVE,
    UNKNOWN_STATUS,
    AppState,
    Listing,
    PollError,
    Snapshot,
    addressable,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

    from exporter.config import AppConfig, Config
    from exporter.model import ActiveSession, Livestream, StreamState

log = logging.getLogger(__name__)

INTERNAL = "internal"  # health reason for a bug, not an API failure; never a metric label
RECENT_ERRORS = 20  # how many errors :attr:`Poller.recent_errors` keeps
FILTER_RETRY = 3600.0  # seconds before a status filter the API ignored is tried again
PUSH_PUBLISH_DELAY = 0.05  # seconds a push's snapshot waits to be told, to join a burst
_PERMISSION_HINT = "the API token needs the Realtime or Realtime Admin permission"


class Api(AnalyticsApi, Protocol):
    """What the poller needs of :class:`~exporter.client.RealtimeKitClient`."""

    async def list_livestreams(
        self,
        account_id: str,
        app_id: str,
        *,
        deadline: CycleDeadline | None = None,
        stop_early: Callable[[Collection[str], int], bool] | None = None,
        per_page: int | None = None,
        max_entries: int | None = None,
        status: str | None = None,
        first_page: int = 1,
        max_pages: int | None = None,
    ) -> Listing: ...

    async def livestream(
        self,
        account_id: str,
        app_id: str,
        livestream_id: str,
        *,
        deadline: CycleDeadline | None = None,
        priority: int = PRIORITY_LISTING,
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


class LimitShare:
    """limits.max_livestreams shared out among the apps of every poller of a process:
    what each app last wanted to discover, and the rooms (:func:`merge.rooms`) over all
    of ``apps()``."""

    def __init__(self, apps: Callable[[], Sequence[AppConfig]]) -> None:
        self._apps = apps
        self.wanted: dict[tuple[str, str], int] = {}

    def rooms(self, limit: int, shard: merge.Owner) -> dict[tuple[str, str], int]:
        apps = self._apps()
        keys = {app.key for app in apps}
        for key in set(self.wanted) - keys:
            del self.wanted[key]
        return merge.rooms(apps, limit, self.wanted, shard)


class PollObserver(Protocol):
    def poll_error(self, account_id: str, app_id: str, reason: str) -> None: ...

    def track_app(self, account_id: str, app_id: str) -> None: ...

    def untrack_app(self, account_id: str, app_id: str) -> None: ...

    def cycle(self, seconds: float, *, waited_for_budget: bool = False) -> None: ...

    def plan(self, *, counter_period: float, listing_period: float, lanes: bool) -> None: ...


_T = TypeVar("_T")
# The session requests one app sends in a cycle: active-session ids, then final-values ids.
_Pick = tuple[tuple[str, ...], tuple[str, ...]]


class _Bug:
    """What a step of an app's cycle gave when it raised something not an ApiError."""


class _Failed(Exception):
    """The status lane of an app failed: ``error``, after ``requests`` requests."""

    def __init__(self, error: ApiError, requests: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.requests = requests


@dataclass(slots=True)
class _Status:
    """One app's status lane: the listing to merge (None: it failed), the streams it
    tracks, the session requests they call for, the errors, and the requests spent."""

    listing: Listing | None
    chosen: list[Livestream]
    plan: merge.Plan
    errors: list[ApiError]
    requests: int
    full: bool  # the listing is a whole listing finished this cycle


@dataclass(slots=True)
class _Answers:
    sessions: dict[str, merge.SessionOutcome]
    errors: list[ApiError]


@dataclass(slots=True)
class _Pass:
    """A full listing read a few pages per cycle (lanes plan)."""

    started: float  # monotonic
    next_page: int = 1
    per_page: int | None = None
    pages: int = 0
    skipped: int = 0
    entries: dict[str, Livestream] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _LanePlan:
    """The plan of the next cycle (:mod:`exporter.lanes`); mode None before a first cycle."""

    mode: lanes.Mode | None = None
    pages: int = 0  # full listing pages per cycle in the lanes plan, over all apps
    shares: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    listing_every: float = 0.0
    counter_period: float = 0.0
    status_requests: int = 0
    lookups: int = 1_000_000  # stops confirmed by lookup a cycle (lanes.lookup_room)

    def pages_for(self, key: tuple[str, str]) -> int:
        return self.shares.get(key, max(1, self.pages))


@dataclass(frozen=True, slots=True)
class PollPlan:
    """The plan of the next cycle, as the status page and the cycle's log line tell it:
    ``mode`` "full" or "lanes" (None before a first cycle); in the lanes plan, about how
    often each live stream's counters and the full listing are read (seconds)."""

    mode: str | None
    counter_period: float
    listing_period: float


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
        budget: Callable[[], tuple[int, float]] | None = None,
        on_change: Callable[[tuple[str, str], str, bool], None] | None = None,
        limit: LimitShare | None = None,
        credentials: str = DEFAULT_CREDENTIALS,
        sent: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """``on_snapshot`` is called, on the event loop, each time a new snapshot is out;
        ``before_cycle`` at the start of each cycle (where a reload may :meth:`reconfigure`);
        ``budget`` gives the requests per window in force (default: the config's share);
        ``on_change`` is told each stream a cycle found going live or not live (app key,
        stream id, live), not those :meth:`push` changed; ``limit`` shares
        limits.max_livestreams with the other pollers of the process (default: this
        poller's apps have it to themselves); ``credentials`` the name of the token, as
        the cycle's debug line names it (and the budget warning its rate_limit key);
        ``sent`` the client's count of requests sent by endpoint, for that line (the
        client may be replaced by a reload: it is asked each time)."""
        self._rate_key = rate_key(credentials)  # the setting of the budget, as logs name it
        self._credentials = credentials
        self._sent = sent
        self._sent_before: dict[str, int] = {}
        self._config = config
        self._api = api
        self._observer = observer
        self._on_snapshot = on_snapshot
        self._on_change = on_change
        # Streams a push (a webhook's refresh) changed, and when: a cycle that began before
        # keeps the push's state for them, as its own answers are older.
        self._pushed: dict[tuple[tuple[str, str], str], float] = {}
        self._publish_soon: asyncio.TimerHandle | None = None
        self._cycle_began = 0.0
        self._before_cycle = before_cycle
        self._clock = clock
        self._monotonic = monotonic
        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._health: dict[tuple[str, str], _Health] = {}
        self._missing: dict[tuple[str, str], frozenset[str]] = {}
        # limits.max_livestreams: what each app last wanted to discover, this cycle's rooms
        # (merge.rooms), and the apps whose streams the limit keeps out (logged once).
        self._limit = limit if limit is not None else LimitShare(lambda: self._config.apps)
        self._rooms: dict[tuple[str, str], int] = {}
        self._limited: set[tuple[str, str]] = set()
        self._cycle_requests = 0
        self._cycle_planned = 0
        self._over_budget = False
        self._errors: deque[PollError] = deque(maxlen=RECENT_ERRORS)
        self._budget_source = budget
        # The lanes plan (exporter.lanes): what the last cycles measured, and its state.
        self._lanes = _LanePlan()
        self._credit = lanes.Credit(monotonic())
        self._full_pages: dict[tuple[str, str], int] = {}
        self._live_pages: dict[tuple[str, str], int] = {}
        self._page_size: dict[tuple[str, str], int] = {}
        self._untracked: dict[tuple[str, str], int] = {}
        self._passes: dict[tuple[str, str], _Pass] = {}
        self._pass_started: dict[tuple[str, str], float] = {}  # the last pass's start
        self._listed: set[tuple[str, str]] = set()  # apps listed whole at least once
        # Streams a LIVE listing lacked whose lookup had no room yet: how many listings in
        # a row lacked them, and how many of those were whole; and those taken as stopped
        # (status UNKNOWN until read).
        self._absent: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        self._left_live: dict[tuple[str, str], set[str]] = {}
        self._lookups_left = 0
        # When each stream waiting for a first answer or its final values began to wait.
        self._first_wait: dict[tuple[str, str], dict[str, float]] = {}
        # Apps whose API ignored the status filter, and when that was seen (it is tried
        # again after FILTER_RETRY); and those already warned about.
        self._unfiltered: dict[tuple[str, str], float] = {}
        self._filter_warned: set[tuple[str, str]] = set()
        self._analytics = Analytics(on_read=self._analytics_read, clock=clock, monotonic=monotonic)
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

    @property
    def plan(self) -> PollPlan:
        """The plan of the next cycle."""
        plan = self._lanes
        if plan.mode != "lanes":
            interval = self._config.poll.interval
            return PollPlan(plan.mode, counter_period=interval, listing_period=interval)
        return PollPlan(plan.mode, plan.counter_period, plan.listing_every)

    def reconfigure(self, config: Config, *, api: Api | None = None) -> None:
        """Poll by ``config`` (and through ``api``) from the next cycle on; call it between
        cycles (``before_cycle``). The snapshot carries over: apps and streams still
        tracked keep their state, the others leave at that cycle."""
        keys = {app.key for app in config.apps}
        for key in set(self._health) - keys:
            del self._health[key]
        for key in set(self._missing) - keys:
            del self._missing[key]
        for table in (
            self._passes,
            self._pass_started,
            self._unfiltered,
            self._absent,
            self._left_live,
            self._first_wait,
        ):
            for key in set(table) - keys:
                del table[key]
        self._listed &= keys
        # A new client (base_url, proxy) may heed the filter: it is tried again.
        if api is not None:
            self._unfiltered.clear()
        known = {app.key for app in self._config.apps}
        for app in config.apps:
            if app.key not in known:
                self._track(app)
        if self._observer is not None:
            for gone in known - keys:
                self._observer.untrack_app(*gone)
        self._config = config
        self._analytics.reconfigure(config.apps)
        if api is not None:
            self._api = api
            self._sent_before = {}  # a new client: its count starts from nothing

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a cycle that overruns starts the next one at once."""
        try:
            while not stop.is_set():
                started = self._monotonic()
                await self.poll_once()
                # Read after the cycle: a reload applied at its start may have changed it.
                delay = max(0.0, started + self._config.poll.interval - self._monotonic())
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
        finally:
            await self._analytics.close()

    async def analytics_settled(self) -> None:
        """Wait for the analytics being read, if any (tests)."""
        await self._analytics.settled()

    async def close(self) -> None:
        """Stop reading analytics (cycles end with :meth:`run`)."""
        await self._analytics.close()

    async def poll_once(self) -> Snapshot:
        """One cycle over every app; returns (and publishes) the new snapshot.

        First every app's status (:meth:`_status`), then the session requests the plan
        has room for (:meth:`_pick`, :meth:`_sessions`), then the merge."""
        if self._before_cycle is not None:
            await self._before_cycle()
        started = self._monotonic()
        cycle_began = self._cycle_began = self._clock()
        deadline = CycleDeadline(started + self._config.poll.interval, self._monotonic)
        prev = self._snapshot
        self._cycle_requests = 0
        self._cycle_planned = 0
        self._lookups_left = self._lanes.lookups
        self._share_limit()
        apps = self._config.apps
        befores = [prev.app(*app.key) for app in apps]
        statuses = await asyncio.gather(
            *(
                self._guarded(app, self._status(app, before, deadline))
                for app, before in zip(apps, befores, strict=True)
            )
        )
        spent = sum(st.requests for st in statuses if isinstance(st, _Status))
        requests, window = self._budget()
        self._credit.refill(
            self._monotonic(), requests=requests, window=window, interval=self._config.poll.interval
        )
        self._credit.spend(spent)
        picks = self._pick(statuses, befores)
        answers = await asyncio.gather(
            *(
                self._guarded(app, self._sessions(app, st, pick, deadline))
                for app, st, pick in zip(apps, statuses, picks, strict=True)
            )
        )
        asked = sum(len(pick[0]) + len(pick[1]) for pick in picks)
        self._credit.spend(asked)
        self._cycle_requests = spent + asked
        states = [
            self._finish(app, before, st, answer, pick)
            for app, before, st, answer, pick in zip(
                apps, befores, statuses, answers, picks, strict=True
            )
        ]
        states = self._keep_pushed(states, since=cycle_began)
        snapshot = Snapshot(
            apps=tuple(states),
            taken_at=self._clock(),
            cycles=prev.cycles + 1,
            app_level=self._config.shard.index == 0,
            livestream_limit=self._config.limits.max_livestreams,
            analytics=self._analytics.current(apps),
        )
        self._snapshot = snapshot
        if self._on_snapshot is not None:
            self._on_snapshot()
        self._replan(statuses)
        self._read_analytics(until=started + self._config.poll.interval)
        took = self._monotonic() - started
        if self._observer is not None:
            self._observer.cycle(took, waited_for_budget=deadline.budget_bound)
        sent = self._requests_sent()
        if log.isEnabledFor(logging.DEBUG):
            self._log_cycle(snapshot, took, sent)
        return snapshot

    def _log_cycle(self, snapshot: Snapshot, took: float, requests: dict[str, int]) -> None:
        """The cycle's debug line: its apps, the requests sent since the last cycle ended
        by endpoint (the cycle's, and a webhook's refreshes and the analytics read in
        between), its duration and the plan of the next cycle."""
        by_endpoint = " ".join(f"{e}={n}" for e, n in sorted(requests.items()))
        plan = self.plan
        planned = plan.mode or "none"
        if plan.mode == "lanes":
            planned += (
                f" (counters about every {plan.counter_period:.0f}s, the full listing about "
                f"every {plan.listing_period:.0f}s)"
            )
        log.debug(
            "poll cycle done in %.2fs: %d apps (%d up), %d requests%s; plan %s",
            took,
            len(snapshot.apps),
            sum(1 for app in snapshot.apps if app.up),
            sum(requests.values()) if self._sent is not None else self._cycle_requests,
            f" ({by_endpoint})" if by_endpoint else "",
            planned,
            extra={"credentials": self._credentials},
        )

    def _requests_sent(self) -> dict[str, int]:
        """Requests sent by endpoint since the last call, each cycle's end ({} without a
        count to read)."""
        if self._sent is None:
            return {}
        now, before = dict(self._sent()), self._sent_before
        self._sent_before = now
        return dict(Counter(now) - Counter(before))

    def _read_analytics(self, *, until: float) -> None:
        """Hand the analytics what this cycle left of its allowance: nothing while the
        budget is short (statuses and counters come first), and only on shard 0 (the
        values are the app's, like realtimekit_up). They have ``until`` (monotonic: the
        next cycle's start): requests still out then would hold connection slots the
        next cycle's statuses wait for."""
        poll = self._config.poll
        requests, window = self._budget()
        spare = 0
        if self._lanes.mode == "full":
            allowance = lanes.allowance(requests, window, poll.interval)
            spare = math.floor(allowance) - self._cycle_requests
        self._analytics.after_cycle(
            self._config.apps,
            self._api,
            interval=poll.analytics_interval if self._config.shard.index == 0 else None,
            spare=spare,
            timeout=max(0.0, until - self._monotonic()),
            cycles_per_window=window / poll.interval,
        )

    def _analytics_read(self) -> None:
        self._snapshot = dataclasses.replace(
            self._snapshot, analytics=self._analytics.current(self._config.apps)
        )
        self._published_soon()

    def tracking(self, livestream_id: str) -> list[tuple[str, str]]:
        """The keys of the apps whose latest snapshot tracks ``livestream_id``."""
        return [a.key for a in self._snapshot.apps if a.stream(livestream_id) is not None]

    def spent_elsewhere(self, requests: int) -> None:
        """Requests of the token's budget spent outside the cycles (a webhook's refresh):
        they come out of the counter lane's credit."""
        self._credit.spend(requests)

    def push(
        self,
        key: tuple[str, str],
        livestream_id: str,
        update: Callable[[StreamState], StreamState],
    ) -> StreamState | None:
        """Apply ``update`` to one tracked stream's state in the latest snapshot now, out
        of cycle (a webhook's targeted refresh), and publish the result; the stream's new
        state, or None if the stream is not tracked (any more). A cycle under way keeps
        this state for the stream: its own answers about it are older."""
        snapshot = self._snapshot
        app = snapshot.app(*key)
        old = app.stream(livestream_id) if app is not None else None
        if app is None or old is None:
            return None
        new = update(old)
        if new == old:
            return old
        streams = tuple(new if s is old else s for s in app.streams)
        apps = tuple(
            dataclasses.replace(a, streams=streams) if a is app else a for a in snapshot.apps
        )
        self._snapshot = dataclasses.replace(snapshot, apps=apps)
        self._pushed[(key, livestream_id)] = self._clock()
        _log_change(old, new, _stream_fields(key, new), source="a webhook, confirmed by the API")
        self._published_soon()
        return new

    def _published_soon(self) -> None:
        """Tell ``on_snapshot`` within :data:`PUSH_PUBLISH_DELAY`, once for a burst of
        pushes: each tells of a new snapshot, whose exposition it starts rendering."""
        if self._on_snapshot is None or self._publish_soon is not None:
            return

        def publish() -> None:
            self._publish_soon = None
            if self._on_snapshot is not None:
                self._on_snapshot()

        loop = asyncio.get_running_loop()
        self._publish_soon = loop.call_later(PUSH_PUBLISH_DELAY, publish)

    def _keep_pushed(self, states: list[AppState], *, since: float) -> list[AppState]:
        """``states`` with the latest snapshot's state of each stream a push changed after
        ``since`` (the cycle's start), where the cycle still tracks it."""
        pushed = {k: at for k, at in self._pushed.items() if at >= since}
        self._pushed = pushed
        if not pushed:
            return states
        out = []
        for state in states:
            ids = {sid for (key, sid) in pushed if key == state.key}
            current = self._snapshot.app(*state.key) if ids else None
            if current is None:
                out.append(state)
                continue
            newer = {s.id: s for s in current.streams if s.id in ids}
            out.append(
                dataclasses.replace(state, streams=tuple(newer.get(s.id, s) for s in state.streams))
            )
        return out

    async def _guarded(self, app: AppConfig, work: Awaitable[_T]) -> _T | _Bug:
        """``work``'s result, or the bug it raised (logged once per app going down for it):
        the poll loop must outlive any bug in one app's handling."""
        try:
            return await work
        except Exception:
            before = self._health.get(app.key)
            log.log(
                logging.DEBUG if before is not None and before.internal else logging.ERROR,
                "unexpected error while polling app",
                exc_info=True,
                extra={**_app_fields(app), "reason": INTERNAL},
            )
            return _Bug()

    def _finish(
        self,
        app: AppConfig,
        prev: AppState | None,
        status: _Status | _Bug,
        answer: _Answers | _Bug,
        pick: _Pick,
    ) -> AppState:
        """The app's new state from its status and session answers, with the log lines
        and error records of the cycle."""
        internal = isinstance(status, _Bug) or isinstance(answer, _Bug)
        errors: list[ApiError] = []
        if isinstance(status, _Status):
            errors += status.errors
        if isinstance(answer, _Answers):
            errors += answer.errors
        try:
            if internal or not isinstance(status, _Status) or not isinstance(answer, _Answers):
                state, errors = self._failed(app, prev), []
            elif status.listing is None:
                state = self._failed(app, prev)
            else:
                active, final = pick
                deferred = [sid for sid in status.plan.active if sid not in set(active)]
                state = merge.merge_app(
                    app,
                    prev,
                    status.listing,
                    answer.sessions,
                    now=self._clock(),
                    max_staleness=self._config.poll.max_staleness,
                    ok=not errors,
                    final=final,
                    shard=self._config.shard,
                    room=self._rooms.get(app.key),
                    chosen=status.chosen,
                    deferred=deferred,
                    counter_hold=self._config.poll.max_staleness + self._hold_extra(),
                )
        except Exception:
            log.error(
                "unexpected error while polling app",
                exc_info=True,
                extra={**_app_fields(app), "reason": INTERNAL},
            )
            state, errors, internal = self._failed(app, prev), [], True
        self._note_errors(app, errors, internal=internal)
        self._note_health(app, state, errors, internal=internal)
        self._note_streams(app, prev, state)
        self._note_limit(app, state)
        if isinstance(status, _Status) and status.full and status.listing is not None:
            self._untracked[app.key] = state.dropped
        return state

    def _hold_extra(self) -> float:
        """How much longer than max_staleness session values outlive failed requests: the
        lanes plan's period between two refreshes, when it is finite."""
        period = self._lanes.counter_period
        if self._lanes.mode != "lanes" or not math.isfinite(period):
            return 0.0
        return period

    async def _status(
        self, app: AppConfig, prev: AppState | None, deadline: CycleDeadline
    ) -> _Status:
        """The app's listing for this cycle and the session requests it calls for.

        An app with only configured streams is listed as before, whole, each cycle (at most
        one page plus one lookup per configured stream). An app that discovers is listed
        whole in the full plan; in the lanes plan by :meth:`_lanes_listing`."""
        errors: list[ApiError] = []
        requests = 0
        try:
            if not app.discover or self._lanes.mode != "lanes" or self._filter_off(app):
                # A process's first listing of a discovering app may take at most half the
                # budget: an app too large for that goes on in passes, beside the LIVE one.
                first = self._lanes.mode is None and app.discover
                listing = await self._list(
                    app, deadline, errors, max_pages=self._first_pages() if first else None
                )
                requests = listing.pages
                full = True
                if _cut_by_pages(listing, self._listing_cap()):
                    self._begin_pass(app, listing)
                    listing, more, full = await self._lanes_listing(app, prev, deadline, errors)
                    requests += more
                else:
                    self._note_full(app, listing)
            else:
                listing, requests, full = await self._lanes_listing(app, prev, deadline, errors)
        except _Failed as failed:
            return _Status(None, [], merge.Plan(), [failed.error], failed.requests, full=False)
        except ApiError as exc:
            return _Status(None, [], merge.Plan(), [exc], requests, full=False)
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
            errors.append(
                ApiError(
                    "decode",
                    f"{listing.skipped} listing entries are not livestreams with an id",
                    endpoint=ENDPOINT_LISTING,
                )
            )
        self._note_missing(app, listing)
        shard = self._config.shard
        room = self._rooms.get(app.key)
        if full:
            self._limit.wanted[app.key] = merge.discovered(app, listing, shard)
        chosen = merge.tracked(app, listing, shard, room=room, prev=prev)
        _note_unaddressable(app, prev, chosen)
        plan = merge.plan(
            chosen,
            prev,
            now=self._clock(),
            max_staleness=self._config.poll.max_staleness,
            stopped=self._left_live.get(app.key, frozenset()),
        )
        self._cycle_planned += 1
        return _Status(listing, chosen, plan, errors, requests, full=full)

    async def _lanes_listing(
        self,
        app: AppConfig,
        prev: AppState | None,
        deadline: CycleDeadline,
        errors: list[ApiError],
    ) -> tuple[Listing, int, bool]:
        """The status lane of a discovering app: its LIVE streams from the listing filtered
        to LIVE, the part of the full listing pass due this cycle, and a by-id lookup of
        each stream that was LIVE and is no longer in the LIVE listing (paging through a
        set that changes can skip an entry: a stop is shown only once its own lookup says
        so). Returns the listing to merge, the requests spent, and whether it holds a
        full listing finished this cycle."""
        cap = self._listing_cap()
        requests = 0
        try:
            live = await self._api.list_livestreams(
                app.account_id, app.app_id, deadline=deadline, max_entries=cap, status=LIVE
            )
        except ApiError as exc:
            raise _Failed(exc, 1) from None
        requests += live.pages
        if _filter_ignored(live):
            # The API answered every status: the listing is the full one. The full listing
            # is read every cycle from now on, as the filter cannot be relied on; it is
            # tried again after FILTER_RETRY.
            self._unfiltered[app.key] = self._monotonic()
            if app.key not in self._filter_warned:
                self._filter_warned.add(app.key)
                log.warning(
                    "the API ignored the listing's status filter (entries of other statuses "
                    "came back): reading the full listing every cycle for this app",
                    extra=_app_fields(app),
                )
            if live.complete:
                self._note_full(app, live)
                return live, requests, True
            listing = await self._list(app, deadline, errors)
            self._note_full(app, listing)
            return listing, requests + listing.pages, True
        self._live_pages[app.key] = live.pages
        full = None
        try:
            full, pages = await self._pass_step(app, deadline)
            requests += pages
        except ApiError as exc:
            errors.append(exc)  # the pass goes on from the same page next cycle
        base: dict[str, Livestream] = (
            {s.id: s for s in full.livestreams}
            if full is not None
            else {s.id: s.livestream for s in prev.streams}
            if prev is not None
            else {}
        )
        going = self._passes.get(app.key)
        if full is None and going is not None:
            # Streams the pass under way has read and the export lacks come in now, not
            # at its end (a pass at 100,000 streams takes an hour); those it read as LIVE
            # only if the LIVE listing still holds them, below.
            for s in going.entries.values():
                if s.status != LIVE:
                    base.setdefault(s.id, s)
        live_ids = {s.id for s in live.livestreams if s.status == LIVE}
        for s in live.livestreams:
            if s.status == LIVE:
                base[s.id] = s
        # Missing from the LIVE listing twice is a stop only if that listing is whole by
        # its own count (give or take the streams that start and stop while its pages are
        # read) and lacks at most a quarter of the streams known LIVE: a larger gap is
        # likelier a fault of the listing, and waits for lookups.
        known = sum(1 for s in base.values() if s.status == LIVE)
        trusted = (
            live.total is not None
            and abs(live.total - len(live.livestreams)) <= max(5, 0.02 * live.total)
            and not live.skipped
            and known - len(live_ids) <= lanes.ABSENCE_SHARE * known
        )
        suspects = self._stop_lookups(app, base, live_ids, trusted=trusted)
        if full is not None and prev is not None:
            # A pass read over several cycles may skip a stream whose page shifted when
            # another was deleted: one it lacks is looked up before it is dropped.
            suspects += [s.id for s in prev.streams if s.id not in base]
        suspects = [i for i in suspects if addressable(i)]
        looked_up, failed = await self._look_up(app, suspects, deadline)
        requests += len(suspects)
        for sid, found in looked_up.items():
            if found is None:
                base.pop(sid, None)  # deleted, or the API says it is no livestream id
            else:
                base[sid] = found
        errors += failed.values()
        unknown = set(failed)
        for sid in failed:
            base.pop(sid, None)  # its last state stands (Listing.unknown)
        if app.key not in self._listed:
            # Before a first full listing, a configured stream not LIVE is not known to be
            # missing: it is neither listed nor unlisted yet.
            unknown |= {ls.id for ls in app.livestreams if ls.id not in base}
        listing = Listing(
            livestreams=tuple(base.values()),
            pages=requests,
            skipped=full.skipped if full is not None else 0,
            total=full.total if full is not None else None,
            unknown=frozenset(unknown),
            unread=full.unread if full is not None else self._untracked.get(app.key, 0),
        )
        return listing, requests, full is not None

    def _stop_lookups(
        self,
        app: AppConfig,
        base: dict[str, Livestream],
        live_ids: Collection[str],
        *,
        trusted: bool,
    ) -> list[str]:
        """The streams of ``base`` listed LIVE that the LIVE listing lacks, to be looked up
        this cycle, as many as :attr:`_LanePlan.lookups` leaves (configured ones expected
        live first, then those waiting longest). One that waits while two ``trusted``
        listings in a row lack it is taken as stopped: its status in ``base`` becomes
        UNKNOWN, and it is not live."""
        absent = self._absent.setdefault(app.key, {})
        left = self._left_live.setdefault(app.key, set())
        left &= {i for i, s in base.items() if s.status == UNKNOWN_STATUS}
        stops = [i for i, s in base.items() if s.status == LIVE and i not in live_ids]
        for sid in [i for i in stops if not addressable(i)]:
            # No request can name it: the LIVE listing's word is all there is.
            base[sid] = dataclasses.replace(base[sid], status=UNKNOWN_STATUS)
            left.add(sid)
        stops = [i for i in stops if addressable(i)]
        for sid in set(absent) - set(stops):
            del absent[sid]
        expected = app.expectations()
        # Those waiting longest first, so that none waits for ever behind newer stops.
        stops.sort(key=lambda i: (expected.get(i) is not True, -absent.get(i, (0, 0))[0], i))
        room = max(0, self._lookups_left)
        ask, wait = stops[:room], stops[room:]
        self._lookups_left -= len(ask)
        for sid in ask:
            absent.pop(sid, None)
        for sid in wait:
            waited, whole = absent.get(sid, (0, 0))
            absent[sid] = (waited + 1, whole + 1 if trusted else whole)
            if absent[sid][1] >= 2:
                del absent[sid]
                base[sid] = dataclasses.replace(base[sid], status=UNKNOWN_STATUS)
                left.add(sid)
        return ask

    async def _pass_step(
        self, app: AppConfig, deadline: CycleDeadline
    ) -> tuple[Listing | None, int]:
        """Read this cycle's part of the app's full listing pass; the finished listing
        when the pass ends with it, and the pages read."""
        key = app.key
        now = self._monotonic()
        current = self._passes.get(key)
        if current is None:
            last = self._pass_started.get(key)
            if last is not None and now < last + self._lanes.listing_every:
                return None, 0
            current = self._passes[key] = _Pass(started=now)
            self._pass_started[key] = now
        cap = self._listing_cap()
        pages = self._lanes.pages_for(key)
        part = await self._api.list_livestreams(
            app.account_id,
            app.app_id,
            deadline=deadline,
            max_entries=max(1, cap - len(current.entries)),
            first_page=current.next_page,
            per_page=current.per_page,
            max_pages=pages,
        )
        current.pages += part.pages
        current.skipped += part.skipped
        current.next_page += part.pages
        current.per_page = part.per_page
        before = len(current.entries)
        for s in part.livestreams:
            current.entries.setdefault(s.id, s)
        capped = len(current.entries) >= cap
        # Pages that bring nothing new end the pass, as they end a listing (an API that
        # repeats its pages would otherwise keep the pass going for ever).
        stale = len(current.entries) == before
        if not part.complete and not capped and not stale:
            return None, part.pages
        del self._passes[key]
        listing = Listing(
            livestreams=tuple(current.entries.values()),
            pages=current.pages,
            skipped=current.skipped,
            total=part.total,
            unread=part.unread if capped else 0,
            per_page=current.per_page,
        )
        self._note_full(app, listing)
        return listing, part.pages

    async def _look_up(
        self, app: AppConfig, ids: Sequence[str], deadline: CycleDeadline
    ) -> tuple[dict[str, Livestream | None], dict[str, ApiError]]:
        """Each stream of ``ids`` by its own lookup: what was found (``None``: no such
        livestream, as the API says with a 404 or 400 in its own envelope), and the
        lookups that failed. An answer about another stream is a failure, not a find."""
        answers = await asyncio.gather(
            *(self._api.livestream(app.account_id, app.app_id, i, deadline=deadline) for i in ids),
            return_exceptions=True,
        )
        found: dict[str, Livestream | None] = {}
        failed: dict[str, ApiError] = {}
        for sid, answer in zip(ids, answers, strict=True):
            if isinstance(answer, ApiError):
                if answer.status == 400 and answer.reason == "http_error" and answer.service:
                    found[sid] = None
                else:
                    failed[sid] = answer
            elif isinstance(answer, BaseException):
                raise _as_bug(answer)
            elif answer is not None and answer.id != sid:
                failed[sid] = ApiError(
                    "decode",
                    "the lookup answered about another livestream",
                    endpoint=ENDPOINT_LIVESTREAM,
                )
            else:
                found[sid] = answer
        return found, failed

    def _filter_off(self, app: AppConfig) -> bool:
        """Whether the app's API ignored the status filter lately (FILTER_RETRY)."""
        seen = self._unfiltered.get(app.key)
        if seen is None:
            return False
        if self._monotonic() - seen < FILTER_RETRY:
            return True
        del self._unfiltered[app.key]
        return False

    def _first_pages(self) -> int:
        requests, _ = self._budget()
        return max(1, math.floor(lanes.FIRST_SHARE * requests))

    def _begin_pass(self, app: AppConfig, part: Listing) -> None:
        """Go on with ``part``, the first pages of the app's listing, as a pass; the size
        the listing says it has is the plan's measure meanwhile."""
        entries: dict[str, Livestream] = {}
        for s in part.livestreams:
            entries.setdefault(s.id, s)
        self._passes[app.key] = _Pass(
            started=self._monotonic(),
            next_page=1 + part.pages,
            per_page=part.per_page,
            pages=part.pages,
            skipped=part.skipped,
            entries=entries,
        )
        self._measure(app, part.total if part.total is not None else len(entries), part)

    def _note_full(self, app: AppConfig, listing: Listing) -> None:
        """A full listing of the app was read: its size in pages is the plan's measure,
        counted from what it held (and what a cut left unread), not from its total_count,
        which an API may get wrong."""
        self._listed.add(app.key)
        if app.discover:
            self._measure(app, len(listing.livestreams) + listing.skipped + listing.unread, listing)
        else:
            self._full_pages[app.key] = max(1, listing.pages)
            self._page_size[app.key] = listing.per_page or LISTING_PAGE_SIZE

    def _measure(self, app: AppConfig, entries: int, listing: Listing) -> None:
        """The app's full listing holds ``entries`` streams: so many pages of the size
        ``listing`` was read with, up to the listing cap, is what a full listing costs."""
        per_page = listing.per_page or LISTING_PAGE_SIZE
        self._full_pages[app.key] = max(1, math.ceil(min(entries, self._listing_cap()) / per_page))
        self._page_size[app.key] = per_page

    def _pick(
        self, statuses: Sequence[_Status | _Bug], befores: Sequence[AppState | None]
    ) -> list[_Pick]:
        """Which session requests each app sends this cycle: all of them in the full plan;
        in the lanes plan as many as the credit allows, newly LIVE streams and final
        values first, then the oldest counters."""
        requests, window = self._budget()
        allowance = lanes.allowance(requests, window, self._config.poll.interval)
        if self._lanes.mode != "lanes" and (
            lanes.choose(self._demand(statuses), allowance, self._lanes.mode) == "full"
        ):
            return [
                (st.plan.active, tuple(st.plan.final)) if isinstance(st, _Status) else ((), ())
                for st in statuses
            ]
        now = self._clock()
        # A first answer (newly LIVE) or final values wait as if their counters were a
        # refresh period older than they have waited: they go ahead of every refresh that
        # is not overdue, and none of the three kinds can starve the others.
        period = self._lanes.counter_period
        ahead = period if math.isfinite(period) else lanes.FOREVER
        candidates: list[lanes.Turn] = []
        for n, (st, before) in enumerate(zip(statuses, befores, strict=True)):
            if not isinstance(st, _Status):
                continue
            old = {s.id: s for s in before.streams} if before is not None else {}
            key = self._config.apps[n].key
            waits = self._first_wait.get(key, {})
            due: dict[str, float] = {}
            for sid in st.plan.final:
                due[sid] = waits.get(sid, now) - ahead
                candidates.append(lanes.Turn(due[sid], lanes.FINAL, n, sid))
            listed = {s.id: s.status for s in st.chosen}
            for sid in st.plan.active:
                prev = old.get(sid)
                if prev is None or prev.counted_at is None or prev.livestream.status != listed[sid]:
                    # Not asked since it was listed so: its first answer comes early. Once
                    # answered (with a session or not), it waits its turn by age.
                    due[sid] = waits.get(sid, now) - ahead
                    candidates.append(lanes.Turn(due[sid], lanes.NEW, n, sid))
                else:
                    candidates.append(lanes.Turn(prev.counted_at, lanes.REFRESH, n, sid))
            self._first_wait[key] = {sid: at + ahead for sid, at in due.items()}
        going = lanes.turns(candidates, self._credit.available)
        active: list[list[str]] = [[] for _ in statuses]
        final: list[list[str]] = [[] for _ in statuses]
        for turn in going:
            (final if turn.kind == lanes.FINAL else active)[turn.app].append(turn.livestream_id)
        return [(tuple(a), tuple(f)) for a, f in zip(active, final, strict=True)]

    async def _sessions(
        self, app: AppConfig, status: _Status | _Bug, pick: _Pick, deadline: CycleDeadline
    ) -> _Answers:
        """Send the app's chosen session requests."""
        if not isinstance(status, _Status):
            return _Answers({}, [])
        active, final = pick
        requests: list[tuple[str, Awaitable[ActiveSession]]] = [
            (sid, self._api.active_session(app.account_id, app.app_id, sid, deadline=deadline))
            for sid in active
        ]
        # Asked after every possibly live stream's session, when the budget is short.
        requests += [
            (
                sid,
                self._api.session(
                    app.account_id,
                    app.app_id,
                    status.plan.final[sid],
                    deadline=deadline,
                    priority=PRIORITY_OTHER,
                ),
            )
            for sid in final
        ]
        answers = await asyncio.gather(*(call for _, call in requests), return_exceptions=True)
        sessions: dict[str, merge.SessionOutcome] = {}
        errors: list[ApiError] = []
        for (sid, _), answer in zip(requests, answers, strict=True):
            if isinstance(answer, ApiError):
                errors.append(answer)
                sessions[sid] = None
            elif isinstance(answer, BaseException):
                raise _as_bug(answer)
            else:
                sessions[sid] = answer
        return _Answers(sessions, errors)

    def _demand(self, statuses: Sequence[_Status | _Bug]) -> lanes.Demand:
        """What a cycle needs, from this cycle's statuses and the last full listings."""
        live_pages = fixed = sessions = 0
        for app, st in zip(self._config.apps, statuses, strict=True):
            if not isinstance(st, _Status):
                continue
            sessions += len(st.plan.active) + len(st.plan.final)
            if not app.discover:
                fixed += st.requests
                continue
            if self._filter_off(app):
                # Its API ignores the filter: its status lane is the whole listing.
                live_pages += self._full_pages.get(app.key, 1)
                continue
            per_page = self._page_size.get(app.key, LISTING_PAGE_SIZE)
            live_pages += self._live_pages.get(app.key) or max(
                1, math.ceil(len(st.plan.active) / per_page)
            )
        full_pages = sum(
            self._full_pages.get(app.key, 1) for app in self._config.apps if app.discover
        )
        return lanes.Demand(
            full_pages=full_pages,
            live_pages=live_pages,
            sessions=sessions,
            fixed=fixed,
            apps=sum(1 for app in self._config.apps if app.discover),
        )

    def _budget(self) -> tuple[int, float]:
        if self._budget_source is not None:
            return self._budget_source()
        rate = self._config.shard.budget(self._config.api.rate_limit)
        return rate.requests, rate.window

    def _replan(self, statuses: Sequence[_Status | _Bug]) -> None:
        """The plan of the next cycle, from what this one showed. A cycle in which an app's
        status failed (a 429's pause, an outage) shows too little of what a cycle needs:
        the plan stays as it was, or the cycle after an outage would be a burst."""
        poll = self._config.poll
        requests, window = self._budget()
        allowance = lanes.allowance(requests, window, poll.interval)
        if self._lanes.mode is not None and self._cycle_planned < len(self._config.apps):
            return
        keys = {app.key for app in self._config.apps}
        for table in (self._full_pages, self._live_pages, self._page_size, self._untracked):
            for key in set(table) - keys:
                del table[key]
        demand = self._demand(statuses)
        full_pages, live_pages, fixed = demand.full_pages, demand.live_pages, demand.fixed
        live = sum(len(st.plan.active) for st in statuses if isinstance(st, _Status))
        pages = lanes.pass_pages(demand, allowance, poll.interval, poll.full_listing_interval)
        mode = lanes.choose(demand, allowance, self._lanes.mode)
        if mode == "full":
            pages = full_pages
        plan = _LanePlan(
            mode=mode,
            pages=pages,
            shares={
                app.key: max(1, math.ceil(pages * self._full_pages.get(app.key, 1) / full_pages))
                for app in self._config.apps
                if app.discover
            },
            listing_every=lanes.listing_period(
                full_pages, pages, poll.interval, poll.full_listing_interval
            ),
            counter_period=(
                poll.interval
                if mode == "full"
                else lanes.counter_period(live, allowance, demand, pages, poll.interval)
            ),
            status_requests=(full_pages + demand.sessions if mode == "full" else live_pages + pages)
            + fixed,
            lookups=lanes.lookup_room(allowance, demand, pages),
        )
        if plan.mode != self._lanes.mode and self._lanes.mode is not None:
            if plan.mode == "lanes":
                log.info(
                    "the budget cannot refresh every stream each cycle: reading statuses "
                    "every cycle and counters in turn (each about every %.0fs), the full "
                    "listing about every %.0fs",
                    plan.counter_period,
                    plan.listing_every,
                )
            else:
                log.info("the budget allows the full listing and every session each cycle again")
        if plan.mode == "full":
            self._passes.clear()
            self._pass_started.clear()
        self._lanes = plan
        if self._observer is not None:
            self._observer.plan(
                counter_period=plan.counter_period,
                listing_period=plan.listing_every if plan.mode == "lanes" else poll.interval,
                lanes=plan.mode == "lanes",
            )
        if self._cycle_planned == len(self._config.apps):
            # A cycle with a failed listing planned less than it needs: it says nothing.
            self._note_budget(plan.status_requests, allowance)

    async def _list(
        self,
        app: AppConfig,
        deadline: CycleDeadline,
        errors: list[ApiError],
        *,
        max_pages: int | None = None,
    ) -> Listing:
        """The app's streams, by whichever costs fewer requests: the listing's pages, or, for
        an app that tracks only configured streams, its first page and one request per
        configured stream that page lacks. The listing is read only until it holds
        :meth:`_listing_cap` streams; configured streams the pages read lack are then looked
        up by id too. A failed lookup of one stream is added to ``errors``, and the stream
        to :attr:`Listing.unknown`. With ``max_pages``, a discovering app's listing stops
        after that many pages, and such a part is returned as it is (not complete, fewer
        than the cap's streams)."""
        shard = self._config.shard
        wanted = [ls.id for ls in app.livestreams if shard.owns(ls.id)]
        cap = self._listing_cap()
        if app.discover:
            listing = await self._api.list_livestreams(
                app.account_id, app.app_id, deadline=deadline, max_entries=cap, max_pages=max_pages
            )
            if _cut_by_pages(listing, cap):
                return listing
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
        looked_up, failed = await self._look_up(app, rest, deadline)
        keep = set(wanted)
        found = [s for s in listing.livestreams if app.discover or s.id in keep]
        read = len(found)
        found += [s for s in looked_up.values() if s is not None]
        errors += failed.values()
        unknown = set(failed)
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

    def _note_budget(self, needed: int, allowance: float) -> None:
        """Warn once when a cycle cannot keep to its share of the budget: in the lanes plan
        when reading the statuses alone needs more, in the full plan when the whole cycle
        does (it is kept only when lanes would leave the sessions next to nothing)."""
        requests, window = self._budget()
        per_window = lanes.per_window(needed, window, self._config.poll.interval)
        over = needed > allowance
        if over == self._over_budget:
            return
        self._over_budget = over
        if over:
            log.warning(
                "a cycle needs %d requests, %d per %gs at this interval, but the budget "
                "(%s, or the API's stated limit if lower) allows %d: cycles will "
                "wait for the budget and take longer than poll.interval; raise poll.interval "
                "or %s, or shard",
                needed,
                per_window,
                window,
                self._rate_key,
                requests,
                self._rate_key,
            )
        else:
            log.info("polling fits the budget again (%d requests a cycle)", needed)

    def _share_limit(self) -> None:
        """This cycle's rooms (:func:`merge.rooms`); apps no longer configured are forgotten."""
        self._limited &= {app.key for app in self._config.apps}
        self._rooms = self._limit.rooms(self._config.limits.max_livestreams, self._config.shard)

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
            fields = _stream_fields(app.key, stream)
            if self._pushed.get((app.key, stream.id), -math.inf) >= self._cycle_began:
                continue  # a push changed it while the cycle ran, and told of it
            if old is None:
                log.debug("tracking livestream (status %s)", stream.livestream.status, extra=fields)
                if stream.live:
                    log.info("livestream is LIVE", extra=fields)
                continue
            if stream.live != old.live and self._on_change is not None:
                self._on_change(app.key, stream.id, stream.live)
            _log_change(old, stream, fields)
        for gone in before.values():
            log.info("livestream no longer tracked", extra=_stream_fields(app.key, gone))


def _stream_fields(key: tuple[str, str], stream: StreamState) -> dict[str, str]:
    """The log fields of a line about ``stream``: its app, its id, and its name if it
    has one (the formatter escapes it: it is the API's text)."""
    fields = {"account_id": key[0], "app_id": key[1], "livestream_id": stream.id}
    if stream.livestream.name:
        fields["livestream_name"] = stream.livestream.name
    return fields


def _stream_error(stream: StreamState) -> tuple[str, str] | None:
    """What puts the stream in error, as (session id, message; either may be ""): its
    status ERRORED, or an error message of its (last) session; None if neither."""
    if not stream.in_error:
        return None
    session = stream.session
    return (session.id, session.err_message or "") if session is not None else ("", "")


def _log_change(
    old: StreamState, new: StreamState, fields: dict[str, str], *, source: str = ""
) -> None:
    """The log lines of a stream that went live or stopped being live, or is newly in
    error: a warning once per error (its session and message), with the message, which
    the decoder and client have already redacted. An error whose message comes a cycle
    after the stop (with the session's final values) is told again then, with it.
    ``source``: what showed the change, if not a poll cycle."""
    by = f"; {source}" if source else ""
    error, was = _stream_error(new), _stream_error(old)
    if error is not None and (was is None or (error[1] and error != was)):
        message = error[1] or "no error message (yet)"
        status = new.livestream.status
        if old.live and not new.live:
            log.warning(
                "livestream stopped being LIVE (status %s%s): %s", status, by, message, extra=fields
            )
        else:
            log.warning(
                "livestream is in error (status %s%s): %s", status, by, message, extra=fields
            )
        return
    if new.live == old.live:
        return
    if new.live:
        log.info("livestream went LIVE%s", f" ({source})" if source else "", extra=fields)
    else:
        log.info(
            "livestream stopped being LIVE (status %s%s)",
            new.livestream.status,
            by,
            extra=fields,
        )


_REASON_TEXT = {
    "auth": "the API rejected the token",
    "rate_limited": "rate limited: the API paused the token, request not sent",
    "timeout": "no answer in time, or no time left in the poll cycle",
    "connection": "cannot connect to the API",
    "http_error": "the API answered with an error",
    "decode": "the answer could not be understood",
}


def _cut_by_pages(listing: Listing, cap: int) -> bool:
    """Whether a listing read with ``max_pages`` stopped there, short of its end and of the
    ``cap`` of streams."""
    return (
        not listing.complete and listing.per_page is not None and (len(listing.livestreams) < cap)
    )


def _filter_ignored(listing: Listing) -> bool:
    """Whether a listing asked for status=LIVE shows the API ignored the filter: more of
    its entries, and at least two, have another status than LIVE. (A few may: a stream
    that stops while the listing is served; such entries are looked up by id.)"""
    others = sum(1 for s in listing.livestreams if s.status != LIVE)
    return others >= 2 and others > len(listing.livestreams) - others


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
