"""How a poll cycle spends the token's budget: the status first, counters on what is left.

With B requests per W seconds in force (the smaller of ``api.rate_limit`` and the API's
``Ratelimit-Policy``, divided among shards) and T = ``poll.interval``, one cycle may
spend about A = B x T / W (:func:`allowance`). Two plans:

- **full**: the whole listing and the session of every stream that may be live, each
  cycle, when that fits in A (the plan for every app of modest size);
- **lanes**: when it does not fit. The *status lane* reads the listing filtered to LIVE
  every cycle (a stop costs a by-id lookup to confirm, by the poller); the full listing
  is read in *passes* of a few pages per cycle (:func:`pass_pages`); the *counter lane*
  gets what is left, through a :class:`Credit` refilled at A per T, and spends it on the
  streams whose counters are oldest, newly LIVE ones and stopped ones' final values
  first (:func:`turns`).

Plain arithmetic on numbers the poller measured; nothing here does I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable

Mode = Literal["full", "lanes"]

MARGIN: Final = 0.01  # of the budget never planned: room for retries and clock skew
FULL_SHARE: Final = 0.05  # the least of each cycle's allowance a full listing pass gets
FIRST_SHARE: Final = 0.5  # the most of the budget a process's first listing takes at once
LOOKUP_SHARE: Final = 0.5  # of what the status lane leaves, the most stop lookups may take
ABSENCE_SHARE: Final = 0.25  # the most of the LIVE streams a listing may lack, for absence
BACK_TO_FULL: Final = 0.8  # the full plan comes back only when it needs this much of A


@dataclass(frozen=True, slots=True)
class Demand:
    """What one cycle needs, as the last cycles showed (requests)."""

    full_pages: int = 0  # the full listings of the apps that discover
    live_pages: int = 0  # their listings filtered to LIVE
    sessions: int = 0  # one session request per stream that may be live, plus finals
    fixed: int = 0  # requests made every cycle whatever the plan (configured-only apps)
    apps: int = 1  # apps that discover: each pass reads at least a page a cycle


def allowance(requests: int, window: float, interval: float) -> float:
    """Requests one cycle may spend so that cycles every ``interval`` keep to the budget."""
    return requests * (1.0 - MARGIN) * interval / window


def per_window(per_cycle: float, window: float, interval: float) -> int:
    """Requests per ``window`` that ``per_cycle`` requests every ``interval`` make, rounded
    up: "needs 1200 ... allows 1200" would read as no problem at all."""
    return math.ceil(per_cycle * window / interval)


def choose(demand: Demand, allowance: float, current: Mode | None) -> Mode:
    """The full plan while it fits the allowance (coming back to it only with room to
    spare, so that a demand near the edge does not flip the plan every cycle), or when
    the lanes plan's least status lane (the LIVE listings, and a page of each app's pass)
    would leave the sessions less than :data:`FULL_SHARE` of it: then no plan keeps the
    interval, and the full one at least refreshes everything each (longer) cycle."""
    need = demand.full_pages + demand.sessions + demand.fixed
    room = allowance if current != "lanes" else allowance * BACK_TO_FULL
    status = demand.live_pages + demand.apps + demand.fixed
    if need <= room or status > allowance * (1.0 - FULL_SHARE):
        return "full"
    return "lanes"


def pass_pages(
    demand: Demand, allowance: float, interval: float, every: float | None = None
) -> int:
    """Pages of the full listing one cycle reads in the lanes plan: enough to finish a
    pass every ``every`` seconds (``poll.full_listing_interval``) if that is set, else
    what the LIVE listing and a refresh of every counter leave, and at least
    :data:`FULL_SHARE` of the allowance, or less, down to one page, when the LIVE listing
    leaves less than that for the counters: the stop signal comes first."""
    if demand.full_pages <= 0:
        return 1
    if every is not None:
        return max(1, math.ceil(demand.full_pages * interval / every))
    live = demand.live_pages + demand.fixed
    left = allowance - live - demand.sessions
    least = min(math.ceil(FULL_SHARE * allowance), math.floor((1 - FULL_SHARE) * allowance - live))
    return max(demand.apps, least, math.floor(left))


def lookup_room(allowance: float, demand: Demand, pages: int) -> int:
    """Stops one cycle may confirm by lookup in the lanes plan: :data:`LOOKUP_SHARE` of
    what the LIVE listing and the pass leave, at least one. Beyond that (a burst of stops,
    or thousands live with sessions of minutes) a stream is taken as stopped when two LIVE
    listings in a row lack it: the stop then shows a cycle later, and the sessions keep
    their share."""
    left = allowance - demand.live_pages - demand.fixed - pages
    return max(1, math.floor(LOOKUP_SHARE * left))


def counter_period(
    live: int, allowance: float, demand: Demand, pages: int, interval: float
) -> float:
    """Seconds between two refreshes of one live stream's counters in the lanes plan:
    the sessions to refresh over those the cycle has room for after the status lane and
    the listing pass (``inf`` when nothing is left)."""
    room = allowance - demand.live_pages - demand.fixed - pages
    if live <= 0:
        return interval
    if room < 1:
        return math.inf
    return max(1.0, live / math.floor(room)) * interval


def listing_period(pages_total: int, pages: int, interval: float, every: float | None) -> float:
    """Seconds between the starts of two full listing passes."""
    cycles = max(1, math.ceil(pages_total / max(1, pages)))
    return max(cycles * interval, every or 0.0)


class Credit:
    """Requests the counter lane may send: refilled with time at the budget's rate
    (less :data:`MARGIN`), at most one cycle's allowance banked, and spent by every
    request of the cycle, the status lane's first. A cycle that spends more (a burst of
    stops to confirm) leaves a debt that the next cycles' counters repay, so that over
    any window the total stays at the rate."""

    def __init__(self, now: float) -> None:
        self._credit: float | None = None
        self._at = now

    def refill(self, now: float, *, requests: int, window: float, interval: float) -> None:
        """Add what the time since the last refill earned, up to one cycle's allowance
        however long that time was: what a long cycle (or a clock jump) earned, spent at
        once, would be a burst that the next cycles wait for."""
        elapsed = max(0.0, now - self._at)
        cap = allowance(requests, window, interval)
        if self._credit is None:
            self._credit = cap
        else:
            gained = requests * (1.0 - MARGIN) / window * elapsed
            self._credit = max(-requests, min(cap, self._credit + gained))
        self._at = now

    def spend(self, requests: int) -> None:
        if self._credit is not None:
            self._credit -= requests

    @property
    def available(self) -> int:
        return max(0, math.floor(self._credit or 0.0))


# What a session request in the lanes plan is for.
NEW: Final = 0  # live without a current session seen: its first values
FINAL: Final = 1  # stopped: its session's final values
REFRESH: Final = 2  # live with values: the oldest first
FOREVER: Final = 1e9  # how far ahead first answers go when no refresh period is planned


@dataclass(frozen=True, slots=True, order=True)
class Turn:
    """One session request the counter lane could send; sorts in the order they go:
    by ``due``, the time its values date from (for a refresh, when they were read; for a
    first answer or final values, when it began to wait less a refresh period, so that
    those go first unless a refresh is overdue)."""

    due: float
    kind: int
    app: int  # the app's place in the config
    livestream_id: str


def turns(candidates: Iterable[Turn], available: int) -> list[Turn]:
    """The ``available`` turns that go this cycle, earliest due first."""
    return sorted(candidates)[: max(0, available)]
