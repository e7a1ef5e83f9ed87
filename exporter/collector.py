"""Snapshot -> Prometheus metric families: a pure function, no I/O, no clock.

The families are built as plain rows first (:func:`gauge_rows`), which :func:`families`
hands to prometheus_client and :mod:`exporter.render` formats directly.

Sample of the exposition for one live stream (help lines shortened)::

    # TYPE realtimekit_livestream_live gauge
    realtimekit_livestream_live{account_id="a",app_id="b",livestream_id="ls-1"} 1.0
    # TYPE realtimekit_livestream_status gauge
    realtimekit_livestream_status{account_id="a",app_id="b",livestream_id="ls-1",status="LIVE"} 1.0
    realtimekit_livestream_status{account_id="a",app_id="b",livestream_id="ls-1",status="IDLE"} 0.0
    ...
    realtimekit_livestream_ingest_seconds{account_id="a",app_id="b",livestream_id="ls-1"} 116.1
    realtimekit_up{account_id="a",app_id="b"} 1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from exporter.model import KNOWN_STATUSES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from prometheus_client.core import Metric

    from exporter.model import Snapshot

_STREAM = ("account_id", "app_id", "livestream_id")
_APP = ("account_id", "app_id")
_STATES = tuple((known,) for known in KNOWN_STATUSES)

# One sample: the values of the family's key labels, of its extra labels, and the value.
# The rows of a stream (or app) share one key tuple.
Row: TypeAlias = tuple[tuple[str, ...], tuple[str, ...], float]


@dataclass(frozen=True, slots=True)
class GaugeRows:
    """One family as plain rows: a gauge, or a counter if ``counter`` (its samples are
    then named ``name`` + ``_total``). Its labels are ``key`` (the same in every family of
    a stream, or of an app) then ``extra``."""

    name: str
    documentation: str
    key: tuple[str, ...]
    extra: tuple[str, ...] = ()
    rows: list[Row] = field(default_factory=list)
    counter: bool = False

    def metric(self, rows: Iterable[Row] | None = None) -> GaugeMetricFamily | CounterMetricFamily:
        """The family with ``rows`` (default: its own) as prometheus_client holds it."""
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        family = kind(self.name, self.documentation, labels=[*self.key, *self.extra])
        for key, extra, value in self.rows if rows is None else rows:
            family.add_metric([*key, *extra], value)
        return family


def _stream(name: str, text: str, extra: tuple[str, ...] = ()) -> GaugeRows:
    return GaugeRows(name, text + ".", _STREAM, extra)


def _app(name: str, text: str) -> GaugeRows:
    return GaugeRows(name, text + ".", _APP)


def gauge_rows(snapshot: Snapshot) -> list[GaugeRows]:
    """Every gauge family the snapshot implies, with its rows, in a stable order."""
    info = _stream(
        "realtimekit_livestream_info", "Livestream metadata; always 1", ("name", "meeting_id")
    )
    status = _stream(
        "realtimekit_livestream_status",
        "1 for the livestream's current status, 0 for the other known ones",
        ("status",),
    )
    live = _stream(
        "realtimekit_livestream_live", "1 if the livestream has an active session, else 0"
    )
    ingest = _stream(
        "realtimekit_livestream_ingest_seconds",
        "ingest_seconds of the current, or last seen, session",
    )
    viewer = _stream(
        "realtimekit_livestream_viewer_seconds",
        "viewer_seconds of the current, or last seen, session",
    )
    started = _stream(
        "realtimekit_livestream_session_start_timestamp_seconds",
        "Start of the current, or last seen, session as Unix time",
    )
    session_info = _stream(
        "realtimekit_livestream_session_info", "The current session; always 1", ("session_id",)
    )
    errored = _stream(
        "realtimekit_livestream_session_errored",
        "1 if the current, or last seen, session reports an error message, else 0",
    )
    disabled = _stream("realtimekit_livestream_disabled", "1 if the livestream is disabled, else 0")
    expected = _stream(
        "realtimekit_livestream_expected_live",
        "1 if the config expects the livestream to be live (expect_live), else 0",
    )
    unlisted = _stream(
        "realtimekit_livestream_unlisted",
        "1 for a configured livestream that the app's last successful listing lacked",
    )
    updated = _stream(
        "realtimekit_livestream_last_update_timestamp_seconds",
        "When the livestream's status was last read fresh, as Unix time",
    )
    counted = _stream(
        "realtimekit_livestream_session_last_update_timestamp_seconds",
        "When the session values (ingest_seconds, viewer_seconds, ...) were last read "
        "fresh, as Unix time",
    )
    up = _app("realtimekit_up", "1 if the last poll of the app fully succeeded, else 0")
    last_success = _app(
        "realtimekit_exporter_last_success_timestamp_seconds",
        "When the app was last polled without any error, as Unix time",
    )
    tracked = _app(
        "realtimekit_exporter_livestreams_tracked", "Livestreams of the app the exporter exports"
    )
    dropped = _app(
        "realtimekit_exporter_livestreams_dropped",
        "Listed livestreams of the app not exported because of limits.max_livestreams",
    )
    limit = GaugeRows(
        "realtimekit_exporter_livestreams_limit",
        "limits.max_livestreams: the most livestreams this process exports.",
        (),
    )
    if snapshot.livestream_limit is not None:
        limit.rows.append(((), (), float(snapshot.livestream_limit)))
    app_info = GaugeRows(
        "realtimekit_app_info",
        "The app and the name of the credentials (API token) it is read with; always 1.",
        _APP,
        ("credentials",),
    )

    for app in snapshot.apps:
        app_key = (app.account_id, app.app_id)
        if snapshot.app_level:
            up.rows.append((app_key, (), 1.0 if app.up else 0.0))
            if app.last_success is not None:
                last_success.rows.append((app_key, (), app.last_success))
        app_info.rows.append((app_key, (app.credentials,), 1.0))
        tracked.rows.append((app_key, (), float(len(app.streams))))
        dropped.rows.append((app_key, (), float(app.dropped)))
        for stream in app.streams:
            key = (*app_key, stream.id)
            ls = stream.livestream
            info.rows.append((key, (ls.name or "", ls.meeting_id or ""), 1.0))
            for state in _STATES:
                status.rows.append((key, state, 1.0 if ls.status == state[0] else 0.0))
            if ls.status not in KNOWN_STATUSES:
                status.rows.append((key, (ls.status,), 1.0))
            live.rows.append((key, (), 1.0 if stream.live else 0.0))
            if ls.disabled is not None:
                disabled.rows.append((key, (), 1.0 if ls.disabled else 0.0))
            if stream.expected_live is not None:
                expected.rows.append((key, (), 1.0 if stream.expected_live else 0.0))
            updated.rows.append((key, (), stream.last_update))
            session = stream.session
            if session is None:
                continue
            if session.ingest_seconds is not None:
                ingest.rows.append((key, (), session.ingest_seconds))
            if session.viewer_seconds is not None:
                viewer.rows.append((key, (), session.viewer_seconds))
            if session.started_time is not None:
                started.rows.append((key, (), session.started_time))
            errored.rows.append((key, (), 1.0 if session.errored else 0.0))
            counted.rows.append((key, (), stream.counters_at))
            if stream.session_current:
                session_info.rows.append((key, (session.id,), 1.0))
        for gone in app.unlisted:
            key = (*app_key, gone.id)
            unlisted.rows.append((key, (), 1.0))
            if gone.expected_live is not None:
                expected.rows.append((key, (), 1.0 if gone.expected_live else 0.0))

    return [
        up,
        last_success,
        app_info,
        *_analytics(snapshot),
        tracked,
        dropped,
        limit,
        info,
        status,
        live,
        ingest,
        viewer,
        started,
        session_info,
        errored,
        disabled,
        expected,
        unlisted,
        updated,
        counted,
    ]


def _analytics(snapshot: Snapshot) -> list[GaugeRows]:
    """The families of the apps' livestream analytics (exporter.analytics)."""
    window = " of the current UTC day so far (daywise analytics); resets at 00:00 UTC"
    overall = " over all time (overall analytics)"
    sessions = _app_counter("realtimekit_app_livestream_sessions", "Livestream sessions" + overall)
    ingest = _app_counter(
        "realtimekit_app_livestream_ingest_seconds", "Seconds of ingest of livestreams" + overall
    )
    viewer = _app_counter(
        "realtimekit_app_livestream_viewer_seconds", "Seconds watched by viewers" + overall
    )
    day_sessions = _app("realtimekit_app_livestream_today_sessions", "Livestream sessions" + window)
    day_ingest = _app(
        "realtimekit_app_livestream_today_ingest_seconds", "Seconds of ingest" + window
    )
    day_viewer = _app(
        "realtimekit_app_livestream_today_viewer_seconds", "Seconds watched by viewers" + window
    )
    enabled = _app(
        "realtimekit_app_analytics_enabled",
        "1 while the app's livestream analytics are read; 0 once the API answered 403 or 404 "
        "for them (tried again hourly and at a reload)",
    )
    updated = _app(
        "realtimekit_app_analytics_last_success_timestamp_seconds",
        "When the app's livestream analytics were last read, as Unix time",
    )
    # Like realtimekit_up: app-level values, exported by shard 0 alone (the families stay).
    for a in snapshot.analytics if snapshot.app_level else ():
        key = (a.account_id, a.app_id)
        enabled.rows.append((key, (), 1.0 if a.enabled else 0.0))
        if a.updated_at is not None:
            updated.rows.append((key, (), a.updated_at))
        if a.overall is not None:
            sessions.rows.append((key, (), float(a.overall.count)))
            ingest.rows.append((key, (), a.overall.ingest_seconds))
            viewer.rows.append((key, (), a.overall.viewer_seconds))
        if a.today is not None:
            day_sessions.rows.append((key, (), float(a.today.count)))
            day_ingest.rows.append((key, (), a.today.ingest_seconds))
            day_viewer.rows.append((key, (), a.today.viewer_seconds))
    return [enabled, updated, sessions, ingest, viewer, day_sessions, day_ingest, day_viewer]


def _app_counter(name: str, text: str) -> GaugeRows:
    return GaugeRows(name, text + ".", _APP, counter=True)


def families(snapshot: Snapshot) -> list[Metric]:
    """Every metric family the snapshot implies, in a stable order."""
    return [family.metric() for family in gauge_rows(snapshot)]


class SnapshotCollector:
    """A prometheus_client collector that renders whatever snapshot ``source`` returns."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        # Declaring no families up front keeps registration free of a first collect().
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from families(self._source())
