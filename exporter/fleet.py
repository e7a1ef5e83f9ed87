"""One poller per API token: the credentials of a process, each polled on its own.

A :class:`Unit` is what one named credentials own: their :class:`~exporter.apitoken.ApiToken`
(token source, budget, client), the :class:`~exporter.poller.Poller` of the apps read with
them, and, with webhooks, the :class:`~exporter.hints.Refresher` that spends their budget
on targeted refreshes. Units never wait for each other: a token that is rejected, rate
limited or slow holds back its own apps' cycles and no others'.

The :class:`Fleet` runs the units, gives the rest of the process one merged
:class:`~exporter.model.Snapshot` (apps in configuration order), and takes a reloaded
configuration: units of credentials still in use are reconfigured at their next cycle,
new ones start at once, and those no longer in use stop and leave no series behind.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import TYPE_CHECKING, TypeVar

from exporter.apitoken import ApiToken
from exporter.config import DEFAULT_CREDENTIALS
from exporter.hints import KEPT_SHARE, Refresher
from exporter.model import EMPTY_SNAPSHOT, AppAnalytics, AppState, Snapshot
from exporter.poller import RECENT_ERRORS, LimitShare, Poller
from exporter.statuspage import CredentialsStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    import aiohttp

    from exporter.budget import RequestBudget
    from exporter.config import Config
    from exporter.model import PollError
    from exporter.telemetry import CredentialMetrics, ExporterMetrics

log = logging.getLogger(__name__)

_Keyed = TypeVar("_Keyed", AppState, AppAnalytics)


class Unit:
    """One credentials' token, poller and refresher; ``config`` is scoped to them
    (:meth:`~exporter.config.Config.scoped`)."""

    def __init__(
        self,
        name: str,
        config: Config,
        *,
        session: aiohttp.ClientSession,
        metrics: CredentialMetrics,
        webhooks: ExporterMetrics | None,
        limit: LimitShare,
        on_snapshot: Callable[[], None],
        on_token: Callable[[str], None] | None,
        on_applied: Callable[[], None] | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        """``on_applied`` is called when a reload's configuration took effect here;
        ``budget`` is the one these credentials had before a reload removed them."""
        self.name = name
        self._on_applied = on_applied
        self.config = config
        self.metrics = metrics
        self._pending: Config | None = None
        self.token = ApiToken(
            config,
            session=session,
            observer=metrics,
            kept_share=KEPT_SHARE if webhooks is not None else 0.0,
            on_token=on_token,
            budget=budget,
        )
        metrics.watch_budget(self.token.budget.available, self.token.in_force)
        self.refresher: Refresher | None = None
        self.poller = Poller(
            config=config,
            api=self.token.client,
            observer=metrics,
            on_snapshot=on_snapshot,
            before_cycle=self._before_cycle,
            budget=self.token.planned,
            on_change=self._found_change,
            limit=limit,
            credentials=name,
            sent=lambda: self.token.client.sent,
        )
        if webhooks is not None:
            token = self.token
            self.refresher = Refresher(
                poller=self.poller,
                api=lambda: token.client,
                interval=lambda: self.config.poll.interval,
                observer=webhooks,
                budget=token.in_force,
                room=token.room,
            )
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Unit({self.name!r}, apps={len(self.config.apps)}, {self.token!r})"

    def reconfigure(self, config: Config) -> None:
        """Poll by ``config`` from the next cycle on; its budget is resized at once (a
        cycle may be waiting for it, and a raised limit must not wait for itself)."""
        self._pending = config
        self.token.resize(config)

    async def _before_cycle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            rebuilt = self.token.reconfigure(pending)
            self.poller.reconfigure(pending, api=self.token.client if rebuilt else None)
            self.config = pending
            if self._on_applied is not None:
                self._on_applied()
        if self.refresher is not None:
            self.refresher.settle()
        await self.token.rotate()

    def _found_change(self, app: tuple[str, str], livestream_id: str, live: bool) -> None:
        if self.refresher is not None:
            self.refresher.found_change(app, livestream_id, live)

    async def close(self) -> None:
        self.token.close()
        if self.refresher is not None:
            await self.refresher.close()


class Fleet:
    """The units of every credentials in use, run together, seen as one poller."""

    def __init__(
        self,
        config: Config,
        *,
        session: aiohttp.ClientSession,
        metrics: ExporterMetrics,
        webhooks: bool = False,
        on_snapshot: Callable[[], None] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        """``webhooks``: give each unit a refresher (the receiver's hints go to the
        units that track the stream); ``on_snapshot`` is called each time a unit
        publishes a snapshot; ``on_token`` is told each token read from a token file."""
        self.config = config
        self._session = session
        self._metrics = metrics
        self._webhooks = webhooks
        self._on_snapshot = on_snapshot
        self._on_token = on_token
        self._limit = LimitShare(lambda: self.config.apps)
        self.units: dict[str, Unit] = {}
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()  # a unit's poller ended by itself: _failure says how
        self._merged: tuple[tuple[Snapshot, ...], Config | None, Snapshot] = (
            (),
            None,
            EMPTY_SNAPSHOT,
        )
        self._was_ready = False
        self._closing: set[asyncio.Task[None]] = set()  # retired units' refreshers
        # The budgets of retired units, by name: credentials added again take theirs back,
        # so that the grants of its window still count (the API's window did not restart).
        self._retired: dict[str, RequestBudget] = {}
        for name in _names(config):
            self.units[name] = self._unit(name, config)

    def _unit(self, name: str, config: Config) -> Unit:
        return Unit(
            name,
            config.scoped(name),
            session=self._session,
            metrics=self._metrics.credentials(name),
            webhooks=self._metrics if self._webhooks else None,
            limit=self._limit,
            on_snapshot=self._published,
            on_token=self._on_token,
            on_applied=self._track_all,
            budget=self._retired.pop(name, None),
        )

    def _track_all(self) -> None:
        """Every app's error series, again: a unit an app left untracks it, maybe after
        the unit it moved to tracked it."""
        for app in self.config.apps:
            self._metrics.track_app(app.account_id, app.app_id)

    def __repr__(self) -> str:
        return f"Fleet({', '.join(map(repr, self.units.values()))})"

    def unit(self, name: str = DEFAULT_CREDENTIALS) -> Unit:
        return self.units[name]

    # What the rest of the process reads, as it read the one poller before.

    @property
    def snapshot(self) -> Snapshot:
        """The units' latest snapshots as one, apps in configuration order; the same
        object until a unit publishes a new one (the exposition renders per object)."""
        parts = tuple(unit.poller.snapshot for unit in self.units.values())
        cached, config, merged = self._merged
        if (
            config is self.config
            and len(parts) == len(cached)
            and all(a is b for a, b in zip(parts, cached, strict=True))
        ):
            return merged
        merged = _merge(tuple(self.units), parts, self.config)
        self._merged = (parts, self.config, merged)
        return merged

    @property
    def ready(self) -> bool:
        """True once every unit has completed a cycle (successfully or not), and from
        then on: credentials a reload adds do not make a serving process unready while
        their first cycle runs (one poller's readiness never went back either)."""
        if not self._was_ready:
            self._was_ready = all(unit.poller.ready for unit in self.units.values())
        return self._was_ready

    @property
    def recent_errors(self) -> tuple[PollError, ...]:
        """The latest errors of every unit, newest first."""
        newest = heapq.merge(
            *(unit.poller.recent_errors for unit in self.units.values()),
            key=lambda e: e.time,
            reverse=True,
        )
        return tuple(e for _, e in zip(range(RECENT_ERRORS), newest, strict=False))

    def credentials_status(self) -> tuple[CredentialsStatus, ...]:
        """Each credentials' polling and budget, for the status page: to be read on the
        event loop (the budgets and pollers change there), then rendered anywhere."""
        remaining = self._metrics.remaining
        rows = []
        for name, unit in self.units.items():
            budget = unit.token.budget
            requests, window = unit.token.in_force()
            plan = unit.poller.plan
            rows.append(
                CredentialsStatus(
                    name=name,
                    apps=len(unit.config.apps),
                    interval=unit.config.poll.interval,
                    requests=requests,
                    window=window,
                    available=budget.available(),
                    from_policy=budget.from_policy,
                    remaining=remaining.get(name),
                    mode=plan.mode,
                    counter_period=plan.counter_period,
                    listing_period=plan.listing_period,
                )
            )
        return tuple(rows)

    def tracking(self, livestream_id: str) -> list[tuple[str, str]]:
        return [key for unit in self.units.values() for key in unit.poller.tracking(livestream_id)]

    def hint(self, livestream_id: str, status: str) -> bool:
        """A verified webhook: to the refresher of every unit whose apps track the stream;
        False if none does."""
        taken = [
            unit.refresher.hint(livestream_id, status)
            for unit in self.units.values()
            if unit.refresher is not None
        ]
        return any(taken)

    @property
    def busy(self) -> int:
        """Streams with a webhook's refresh under way, over every unit."""
        return sum(u.refresher.busy for u in self.units.values() if u.refresher is not None)

    async def poll_once(self, *, analytics: bool = False) -> Snapshot:
        """One cycle of every unit, at once; the merged snapshot (for ``--once``, tests).
        With ``analytics``, also wait for the analytics the cycles set off."""
        units = list(self.units.values())
        await asyncio.gather(*(unit.poller.poll_once() for unit in units))
        if analytics:
            await asyncio.gather(*(unit.poller.analytics_settled() for unit in units))
        return self.snapshot

    async def run(self, stop: asyncio.Event) -> None:
        """Run every unit's poller until ``stop`` is set; raises what a poller raised
        if one ended by itself (a bug), after stopping the others."""
        self._stop = stop
        for unit in self.units.values():
            self._start(unit)
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._failed.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            tasks = [u.task for u in self.units.values() if u.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *waits, return_exceptions=True)
        if self._failure is not None and not stop.is_set():
            raise self._failure

    def _start(self, unit: Unit) -> None:
        if self._stop is None:
            return  # not running yet: run() starts it
        unit.task = asyncio.create_task(unit.poller.run(self._stop), name=f"poller-{unit.name}")
        unit.task.add_done_callback(lambda task: self._ended(unit, task))

    def _ended(self, unit: Unit, task: asyncio.Task[None]) -> None:
        if self.units.get(unit.name) is not unit:
            return  # retired by a reload
        if (
            self._stop is not None
            and self._stop.is_set()
            and (task.cancelled() or task.exception() is None)
        ):
            return  # a shutdown
        if self._failure is None:
            error = task.exception() if not task.cancelled() else None
            self._failure = error or RuntimeError(f"the poller of {unit.name} ended")
            self._failed.set()

    def reconfigure(self, config: Config) -> list[str]:
        """Poll by ``config`` (a reload's): the names of the credentials it starts and
        stops. Units still in use take it at their next cycle; new ones start now."""
        old = set(self.units)
        self.config = config
        changes = []
        for name in _names(config):
            if name in self.units:
                self.units[name].reconfigure(config.scoped(name))
            else:
                self.units[name] = unit = self._unit(name, config)
                self._start(unit)
                changes.append(f"+{name}")
        for name in old - set(_names(config)):
            self._retire(self.units.pop(name))
            changes.append(f"-{name}")
        self._published()
        return changes

    def _retire(self, unit: Unit) -> None:
        """Stop a unit a reload no longer uses, and drop its series."""
        kept = {app.key for app in self.config.apps}
        for app in unit.config.apps:
            if app.key not in kept:
                unit.metrics.untrack_app(app.account_id, app.app_id)
        self._metrics.forget_credentials(unit.name)
        self._retired[unit.name] = unit.token.budget
        task = unit.task
        if task is not None:
            task.cancel()
        closing = asyncio.ensure_future(unit.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """End the webhook refreshes under way (the pollers end with :meth:`run`)."""
        await asyncio.gather(*(unit.close() for unit in self.units.values()), *self._closing)

    def _published(self) -> None:
        if self._on_snapshot is not None:
            self._on_snapshot()


def _names(config: Config) -> tuple[str, ...]:
    """The credentials in use: those apps are read with (the default one when there
    are no apps, so that a process always has a budget and a client)."""
    return config.credential_names() or (DEFAULT_CREDENTIALS,)


def _merge(names: tuple[str, ...], parts: tuple[Snapshot, ...], config: Config) -> Snapshot:
    """The units' snapshots (``parts``, of the credentials ``names``) as one. An app a
    reload moved to other credentials is in two parts until the unit it left has had its
    next cycle: it is taken from the unit that reads it now once that one has it (twice,
    it would be duplicate series), from the other until then. The cycle count is the
    least of the units that have completed one (a unit a reload just added has none yet,
    and the others' apps are still there to show)."""
    if len(parts) == 1:
        return parts[0]
    order = {app.key: n for n, app in enumerate(config.apps)}
    owner = {app.key: app.credentials for app in config.apps}
    last = len(order)
    named = tuple(zip(names, parts, strict=True))

    def once(rows: Callable[[Snapshot], Iterable[_Keyed]]) -> list[_Keyed]:
        chosen: dict[tuple[str, str], _Keyed] = {}
        for owners in (True, False):
            for name, part in named:
                for row in rows(part):
                    if not owners or owner.get(row.key, name) == name:
                        chosen.setdefault(row.key, row)
        return sorted(chosen.values(), key=lambda row: order.get(row.key, last))

    apps = once(lambda p: p.apps)
    analytics = once(lambda p: p.analytics)
    return Snapshot(
        apps=tuple(apps),
        taken_at=max(p.taken_at for p in parts),
        cycles=min((p.cycles for p in parts if p.cycles), default=0),
        app_level=config.shard.index == 0,
        livestream_limit=config.limits.max_livestreams,
        analytics=tuple(analytics),
    )
