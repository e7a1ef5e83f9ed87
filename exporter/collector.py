"""Snapshot -> Prometheus metric families: a pure function, no I/O, no clock.

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

from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily

from exporter.model import KNOWN_STATUSES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from prometheus_client.core import Metric

    from exporter.model import Snapshot

_STREAM = ["account_id", "app_id", "livestream_id"]
_APP = ["account_id", "app_id"]
_CACHED = " (cached from the last poll)."


def _gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text + _CACHED, labels=[*_STREAM, *extra])


def families(snapshot: Snapshot) -> list[Metric]:
    """Every metric family the snapshot implies, in a stable order."""
    info = _gauge(
        "realtimekit_livestream_info", "Livestream metadata; always 1", ("name", "meeting_id")
    )
    status = _gauge(
        "realtimekit_livestream_status",
        "1 for the livestream's current status, 0 for the other known ones",
        ("status",),
    )
    live = _gauge(
        "realtimekit_livestream_live", "1 if the livestream has an active session, else 0"
    )
    ingest = _gauge(
        "realtimekit_livestream_ingest_seconds",
        "ingest_seconds of the current, or last seen, session",
    )
    viewer = _gauge(
        "realtimekit_livestream_viewer_seconds",
        "viewer_seconds of the current, or last seen, session",
    )
    started = _gauge(
        "realtimekit_livestream_session_start_timestamp_seconds",
        "Start of the current, or last seen, session as Unix time",
    )
    session_info = _gauge(
        "realtimekit_livestream_session_info", "The current session; always 1", ("session_id",)
    )
    errored = _gauge(
        "realtimekit_livestream_session_errored",
        "1 if the current, or last seen, session reports an error message, else 0",
    )
    disabled = _gauge("realtimekit_livestream_disabled", "1 if the livestream is disabled, else 0")
    expected = _gauge(
        "realtimekit_livestream_expected_live",
        "1 if the config expects the livestream to be live (expect_live), else 0",
    )
    unlisted = _gauge(
        "realtimekit_livestream_unlisted",
        "1 for a configured livestream that the app's last successful listing lacked",
    )
    updated = _gauge(
        "realtimekit_livestream_last_update_timestamp_seconds",
        "When fresh data for the livestream last arrived, as Unix time",
    )
    up = GaugeMetricFamily(
        "realtimekit_up",
        "1 if the last poll of the app fully succeeded, else 0" + _CACHED,
        labels=_APP,
    )
    last_success = GaugeMetricFamily(
        "realtimekit_exporter_last_success_timestamp_seconds",
        "When the app was last polled without any error, as Unix time" + _CACHED,
        labels=_APP,
    )
    tracked = GaugeMetricFamily(
        "realtimekit_exporter_livestreams_tracked",
        "Livestreams of the app the exporter exports" + _CACHED,
        labels=_APP,
    )

    for app in snapshot.apps:
        app_labels = [app.account_id, app.app_id]
        if snapshot.app_level:
            up.add_metric(app_labels, 1.0 if app.up else 0.0)
            if app.last_success is not None:
                last_success.add_metric(app_labels, app.last_success)
        tracked.add_metric(app_labels, float(len(app.streams)))
        for stream in app.streams:
            labels = [*app_labels, stream.id]
            ls = stream.livestream
            info.add_metric([*labels, ls.name or "", ls.meeting_id or ""], 1.0)
            for known in KNOWN_STATUSES:
                status.add_metric([*labels, known], 1.0 if ls.status == known else 0.0)
            if ls.status not in KNOWN_STATUSES:
                status.add_metric([*labels, ls.status], 1.0)
            live.add_metric(labels, 1.0 if stream.live else 0.0)
            if ls.disabled is not None:
                disabled.add_metric(labels, 1.0 if ls.disabled else 0.0)
            if stream.expected_live is not None:
                expected.add_metric(labels, 1.0 if stream.expected_live else 0.0)
            updated.add_metric(labels, stream.last_update)
            session = stream.session
            if session is None:
                continue
            if session.ingest_seconds is not None:
                ingest.add_metric(labels, session.ingest_seconds)
            if session.viewer_seconds is not None:
                viewer.add_metric(labels, session.viewer_seconds)
            if session.started_time is not None:
                started.add_metric(labels, session.started_time)
            errored.add_metric(labels, 1.0 if session.errored else 0.0)
            if stream.session_current:
                session_info.add_metric([*labels, session.id], 1.0)
        for gone in app.unlisted:
            labels = [*app_labels, gone.id]
            unlisted.add_metric(labels, 1.0)
            if gone.expected_live is not None:
                expected.add_metric(labels, 1.0 if gone.expected_live else 0.0)

    return [
        up,
        last_success,
        tracked,
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
    ]


class SnapshotCollector:
    """A prometheus_client collector that renders whatever snapshot ``source`` returns."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def describe(self) -> Iterator[Metric]:
        # Declaring no families up front keeps registration free of a first collect().
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from families(self._source())
