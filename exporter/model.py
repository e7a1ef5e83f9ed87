"""Immutable records of what the exporter knows about livestreams.

Plain data, standard library only: the decoder builds these from API bodies, the poller
merges them into a :class:`Snapshot`, and the collector reads the snapshot. Nothing here
holds a secret: stream keys and ingest URLs are dropped at the decoding edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

LIVE: Final = "LIVE"
ERRORED: Final = "ERRORED"  # the status of a stream whose session failed
KNOWN_STATUSES: Final = ("LIVE", "IDLE", "ERRORED", "INVOKED", "OFFLINE")
# Statuses that say for sure there is no active session: no session request is spent on them.
NOT_LIVE: Final = frozenset({"IDLE", "ERRORED", "INVOKED", "OFFLINE"})
# What a livestream without a readable status is exported as.
UNKNOWN_STATUS: Final = "UNKNOWN"
# The events RealtimeKit's webhooks deliver (an app subscribes to some of them), and the
# one that says a livestream's status changed.
STATUS_UPDATE_EVENT: Final = "livestreaming.statusUpdate"
WEBHOOK_EVENTS: Final = (
    "meeting.started",
    "meeting.ended",
    "meeting.participantJoined",
    "meeting.participantLeft",
    "meeting.chatSynced",
    "recording.statusUpdate",
    STATUS_UPDATE_EVENT,
    "meeting.transcript",
    "meeting.summary",
)
# Texts that cannot be one segment of a URL path, however they are encoded: "" joins its
# neighbours ("a//b"), and "." and ".." are dot segments, which URL libraries (yarl, so
# aiohttp), proxies and gateways remove (RFC 3986 5.2.4) after decoding "%2E" back to "."
# (6.2.2.2). Put in a path, they change the route. Any other text, percent-encoded whole
# (``quote(text, safe="")``), is exactly one segment.
UNADDRESSABLE: Final = frozenset({"", ".", ".."})


def addressable(segment: str) -> bool:
    """Whether ``segment`` can name something as one URL path segment (see
    :data:`UNADDRESSABLE`); ids from the API that cannot are never put in a request."""
    return segment not in UNADDRESSABLE


@dataclass(frozen=True, slots=True)
class Livestream:
    """One livestream as the API lists it."""

    id: str
    status: str
    name: str | None = None
    meeting_id: str | None = None
    disabled: bool | None = None


@dataclass(frozen=True, slots=True)
class Session:
    """One livestream session; times are Unix seconds."""

    id: str
    started_time: float | None = None
    stopped_time: float | None = None
    err_message: str | None = None
    ingest_seconds: float | None = None
    viewer_seconds: float | None = None
    ended: bool = False  # known to have ended though no readable stop time was given

    @property
    def active(self) -> bool:
        """Sessions carry no status: one that has not stopped is active."""
        return self.stopped_time is None and not self.ended

    @property
    def errored(self) -> bool:
        return bool(self.err_message)


@dataclass(frozen=True, slots=True)
class ActiveSession:
    """The answer of ``active-livestream-session``: either part may be missing."""

    livestream: Livestream | None
    session: Session | None


@dataclass(frozen=True, slots=True)
class Listing:
    """All pages of an app's livestream listing, de-duplicated by id (first wins), or, if
    not ``complete``, only its first pages."""

    livestreams: tuple[Livestream, ...]
    pages: int = 1
    skipped: int = 0  # entries that were not livestream objects with an id
    total: int | None = None  # the paging block's total_count, if it had one
    complete: bool = True
    # Entries of a listing cut short (at the client's max_entries) left unread, as far as
    # its total_count tells; 0 when it was read whole or does not tell.
    unread: int = 0
    # Configured streams looked up by id whose lookup failed: neither listed nor missing.
    unknown: frozenset[str] = frozenset()
    per_page: int | None = None  # the page size it was read with, if it was paged


@dataclass(frozen=True, slots=True)
class Webhook:
    """One webhook registration of an app: RealtimeKit posts the ``events`` to ``url``."""

    id: str
    url: str
    name: str | None = None
    events: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class StreamState:
    """What is exported for one tracked livestream, and what the next cycle needs to know.

    ``session`` is the current session while live, else the last one seen (with its final
    values once they were fetched), or ``None`` if no session was ever seen.
    ``last_update`` is when all of the stream's data was last fetched fresh (exported);
    once it is older than ``poll.max_staleness`` the session values are dropped.
    ``listed_at`` (default: ``last_update``) is when the listing last included the stream;
    if the listing fails, the stream is dropped once that is older than max_staleness.
    ``last_live`` is when the stream was last seen live; final values of its session are
    asked for until max_staleness after that.
    ``counted_at`` is when ``session`` (its counters) was last fetched; ``None`` reads as
    ``last_update``. While many streams are live, their status is read every cycle but
    their counters only in turn (:mod:`exporter.lanes`), so the two times part.
    """

    livestream: Livestream
    live: bool
    session: Session | None
    last_update: float
    expected_live: bool | None = None
    listed_at: float | None = None
    last_live: float | None = None
    counted_at: float | None = None

    @property
    def id(self) -> str:
        return self.livestream.id

    @property
    def counters_at(self) -> float:
        """When the session's values were last fetched."""
        return self.last_update if self.counted_at is None else self.counted_at

    @property
    def seen_at(self) -> float:
        """When the listing last included the stream."""
        return self.last_update if self.listed_at is None else self.listed_at

    @property
    def in_error(self) -> bool:
        """Listed ERRORED, or its (last) session reports an error message."""
        return self.livestream.status == ERRORED or (
            self.session is not None and self.session.errored
        )

    @property
    def session_current(self) -> bool:
        return self.live and self.session is not None and self.session.active


@dataclass(frozen=True, slots=True)
class Unlisted:
    """A configured livestream that the app's last successful listing did not contain."""

    id: str
    expected_live: bool | None = None


@dataclass(frozen=True, slots=True)
class AppState:
    """One polled app: its health, its tracked streams sorted by id, and the configured
    streams its last successful listing lacked (deleted, or a wrong id), sorted by id."""

    account_id: str
    app_id: str
    up: bool
    last_success: float | None
    streams: tuple[StreamState, ...] = ()
    unlisted: tuple[Unlisted, ...] = ()
    # Listed streams not tracked because of limits.max_livestreams.
    dropped: int = 0
    credentials: str = "default"  # the name of the token the app is read with

    @property
    def key(self) -> tuple[str, str]:
        return (self.account_id, self.app_id)

    def stream(self, livestream_id: str) -> StreamState | None:
        for s in self.streams:
            if s.id == livestream_id:
                return s
        return None


@dataclass(frozen=True, slots=True)
class Totals:
    """What an analytics endpoint adds up for an app's livestreams: over all time
    (``/analytics/livestreams/overall``) or over one UTC day (``/daywise``, ``day`` set)."""

    count: int  # sessions
    ingest_seconds: float
    viewer_seconds: float
    day: str | None = None  # "YYYY-MM-DD"


@dataclass(frozen=True, slots=True)
class AppAnalytics:
    """One app's analytics as last read. ``enabled`` is False once the API answered 403
    or 404 for them (a token without the permission, an API without the endpoint): they
    are then not read again for a while, and the app is not marked down for it."""

    account_id: str
    app_id: str
    enabled: bool = True
    overall: Totals | None = None  # all time
    today: Totals | None = None  # the current UTC day so far
    updated_at: float | None = None  # Unix time of the last successful read

    @property
    def key(self) -> tuple[str, str]:
        return (self.account_id, self.app_id)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the collector needs, replaced whole after every poll cycle."""

    apps: tuple[AppState, ...] = ()
    taken_at: float = 0.0
    cycles: int = 0
    # False on every shard but 0 (``--shard``): the app-level families (``realtimekit_up``,
    # last success) then have no samples, so that summing over shards counts each app once.
    app_level: bool = True
    livestream_limit: int | None = None  # limits.max_livestreams of the cycle
    analytics: tuple[AppAnalytics, ...] = ()  # apps whose analytics were read or refused

    def app(self, account_id: str, app_id: str) -> AppState | None:
        for a in self.apps:
            if a.key == (account_id, app_id):
                return a
        return None


EMPTY_SNAPSHOT: Final = Snapshot()


@dataclass(frozen=True, slots=True)
class PollError:
    """One failed API call (or a bug, reason ``internal``) while polling an app.

    ``message`` is built from the reason, HTTP status and pause only, never from the
    :class:`~exporter.client.ApiError`'s text: that may quote a response body, which
    could echo a secret.
    """

    time: float
    account_id: str
    app_id: str
    endpoint: str  # "" for an internal error
    reason: str
    message: str
