"""The collector is a pure function of a snapshot."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import SnapshotCollector, families, gauge_rows
from exporter.model import (
    EMPTY_SNAPSHOT,
    AppAnalytics,
    AppState,
    Livestream,
    Session,
    Snapshot,
    StreamState,
    Totals,
    Unlisted,
)
from tests import REPO

LIVE_SESSION = Session(
    id="sess-1",
    started_time=1_700_000_000.0,
    err_message=None,
    ingest_seconds=116.11599994199997,
    viewer_seconds=240.0,
)
ERRORED_SESSION = Session(
    id="sess-2",
    started_time=1_700_000_100.0,
    stopped_time=1_700_000_200.0,
    err_message="encoder went away",
    ingest_seconds=90.0,
    viewer_seconds=10.0,
)
SNAPSHOT = Snapshot(
    apps=(
        AppState(
            account_id="acc",
            app_id="app",
            up=True,
            last_success=1_700_000_300.0,
            streams=(
                StreamState(
                    Livestream("ls-1", "LIVE", name="Main stage", meeting_id="m-1", disabled=False),
                    live=True,
                    session=LIVE_SESSION,
                    last_update=1_700_000_300.0,
                    expected_live=True,
                ),
                StreamState(
                    Livestream("ls-2", "ERRORED", name=None, meeting_id=None, disabled=True),
                    live=False,
                    session=ERRORED_SESSION,
                    last_update=1_700_000_300.0,
                ),
                StreamState(
                    Livestream("ls-3", "PAUSED"),
                    live=False,
                    session=None,
                    last_update=1_700_000_250.0,
                    expected_live=False,
                ),
            ),
        ),
        AppState(
            account_id="acc", app_id="down", up=False, last_success=None, credentials="agency-b"
        ),
    ),
    taken_at=1_700_000_300.0,
    cycles=3,
    analytics=(
        AppAnalytics(
            "acc",
            "app",
            overall=Totals(4, 531.0, 116.5),
            today=Totals(1, 60.0, 12.0, "2023-11-14"),
            updated_at=1_700_000_290.0,
        ),
        AppAnalytics("acc", "down", enabled=False),
    ),
)
ANALYTICS = {
    "realtimekit_app_analytics_enabled",
    "realtimekit_app_analytics_last_success_timestamp_seconds",
    "realtimekit_app_livestream_sessions",
    "realtimekit_app_livestream_ingest_seconds",
    "realtimekit_app_livestream_viewer_seconds",
    "realtimekit_app_livestream_today_sessions",
    "realtimekit_app_livestream_today_ingest_seconds",
    "realtimekit_app_livestream_today_viewer_seconds",
}


def samples(snapshot: Snapshot) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snapshot))
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.timestamp is None
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(name: str, /, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def stream(ls: str, **extra: str) -> dict[str, str]:
    return {"account_id": "acc", "app_id": "app", "livestream_id": ls, **extra}


def test_live_stream_exports_every_stream_metric() -> None:
    """A live stream gets status, live, counters, session info and metadata."""
    got = samples(SNAPSHOT)
    s1 = stream("ls-1")
    assert got[key("realtimekit_livestream_live", **s1)] == 1
    assert got[key("realtimekit_livestream_ingest_seconds", **s1)] == 116.11599994199997
    assert got[key("realtimekit_livestream_viewer_seconds", **s1)] == 240
    assert got[key("realtimekit_livestream_session_start_timestamp_seconds", **s1)] == 1.7e9
    assert got[key("realtimekit_livestream_session_info", **s1, session_id="sess-1")] == 1
    assert got[key("realtimekit_livestream_session_errored", **s1)] == 0
    assert got[key("realtimekit_livestream_disabled", **s1)] == 0
    assert got[key("realtimekit_livestream_expected_live", **s1)] == 1
    assert got[key("realtimekit_livestream_last_update_timestamp_seconds", **s1)] == 1_700_000_300
    info = key("realtimekit_livestream_info", **s1, name="Main stage", meeting_id="m-1")
    assert got[info] == 1


def test_status_is_a_state_set_over_known_statuses() -> None:
    """One series per known status, 1 for the current one."""
    got = samples(SNAPSHOT)
    for status in ("LIVE", "IDLE", "ERRORED", "INVOKED", "OFFLINE"):
        expected = 1 if status == "LIVE" else 0
        assert (
            got[key("realtimekit_livestream_status", **stream("ls-1", status=status))] == expected
        )


def test_unknown_status_adds_its_own_series() -> None:
    """A status the exporter does not know is exported as one more state, set to 1."""
    got = samples(SNAPSHOT)
    assert got[key("realtimekit_livestream_status", **stream("ls-3", status="PAUSED"))] == 1
    assert got[key("realtimekit_livestream_status", **stream("ls-3", status="IDLE"))] == 0
    statuses = [
        k
        for k in got
        if k[0] == "realtimekit_livestream_status" and ("livestream_id", "ls-3") in k[1]
    ]
    assert len(statuses) == 6


def test_last_seen_session_values_stay_but_session_info_does_not() -> None:
    """A stopped stream keeps its final counters; session_info marks only current sessions."""
    got = samples(SNAPSHOT)
    s2 = stream("ls-2")
    assert got[key("realtimekit_livestream_live", **s2)] == 0
    assert got[key("realtimekit_livestream_ingest_seconds", **s2)] == 90
    assert got[key("realtimekit_livestream_session_errored", **s2)] == 1
    assert got[key("realtimekit_livestream_disabled", **s2)] == 1
    assert not [
        k
        for k in got
        if k[0] == "realtimekit_livestream_session_info" and ("livestream_id", "ls-2") in k[1]
    ]
    assert got[key("realtimekit_livestream_info", **s2, name="", meeting_id="")] == 1


def test_stream_without_session_or_expectation_omits_those_series() -> None:
    """No session seen: no counters; expect_live unset: no expected_live series."""
    got = samples(SNAPSHOT)
    s3 = frozenset(stream("ls-3").items())
    names = {name for name, labels in got if labels == s3}
    assert "realtimekit_livestream_ingest_seconds" not in names
    assert "realtimekit_livestream_session_errored" not in names
    assert got[key("realtimekit_livestream_expected_live", **stream("ls-3"))] == 0
    assert key("realtimekit_livestream_expected_live", **stream("ls-2")) not in got


def test_app_metrics() -> None:
    """Per app: up, last success (only once there was one) and the tracked count."""
    got = samples(SNAPSHOT)
    assert got[key("realtimekit_up", account_id="acc", app_id="app")] == 1
    assert got[key("realtimekit_up", account_id="acc", app_id="down")] == 0
    assert got[key("realtimekit_exporter_livestreams_tracked", account_id="acc", app_id="app")] == 3
    assert (
        got[key("realtimekit_exporter_livestreams_tracked", account_id="acc", app_id="down")] == 0
    )
    last = "realtimekit_exporter_last_success_timestamp_seconds"
    assert got[key(last, account_id="acc", app_id="app")] == 1_700_000_300
    assert key(last, account_id="acc", app_id="down") not in got


def test_same_snapshot_same_output_and_empty_snapshot_has_no_samples() -> None:
    """Pure: equal snapshots give equal families; the empty snapshot gives no samples."""
    assert families(SNAPSHOT) == families(SNAPSHOT)
    assert all(not f.samples for f in families(EMPTY_SNAPSHOT))


def test_help_is_one_sentence_and_openmetrics_renders() -> None:
    """No help text repeats that the value is the last poll's (docs/metrics.md says it once,
    for every metric); each is one sentence. OpenMetrics renders too."""
    for family in families(SNAPSHOT):
        assert "last poll)" not in family.documentation, family.name
        assert family.documentation.endswith("."), family.name
    doc = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8").lower()
    assert doc.count("values are those of the last poll") == 1
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: SNAPSHOT))
    text = generate_openmetrics(registry).decode()
    assert text.endswith("# EOF\n")
    assert (
        'realtimekit_livestream_live{account_id="acc",app_id="app",livestream_id="ls-1"} 1.0'
        in text
    )


def test_unlisted_configured_streams_export_unlisted_and_their_expectation() -> None:
    """A configured stream the listing lacks is exported as unlisted, with expected_live
    when it is set, and nothing else (no status, no live)."""
    app = AppState(
        account_id="acc",
        app_id="app",
        up=True,
        last_success=1.0,
        unlisted=(Unlisted("gone", True), Unlisted("typo", None)),
    )
    got = samples(Snapshot(apps=(app,)))
    assert got[key("realtimekit_livestream_unlisted", **stream("gone"))] == 1
    assert got[key("realtimekit_livestream_unlisted", **stream("typo"))] == 1
    assert got[key("realtimekit_livestream_expected_live", **stream("gone"))] == 1
    per_stream = {name for name, labels in got if ("livestream_id", "typo") in labels}
    assert per_stream == {"realtimekit_livestream_unlisted"}
    gone = {name for name, labels in got if ("livestream_id", "gone") in labels}
    assert gone == {"realtimekit_livestream_unlisted", "realtimekit_livestream_expected_live"}


def test_a_shard_other_than_0_exports_no_app_level_samples() -> None:
    """With app_level false, realtimekit_up and the last success have no samples (the
    families stay); everything else is as on shard 0."""
    shard = dataclasses.replace(SNAPSHOT, app_level=False)
    app_level = {"realtimekit_up", "realtimekit_exporter_last_success_timestamp_seconds"}
    app_level |= ANALYTICS
    got = {f.name: f for f in families(shard)}
    assert {f.name for f in families(SNAPSHOT)} == set(got)
    assert all(not got[name].samples for name in app_level)
    every = samples(SNAPSHOT)
    assert {k: v for k, v in every.items() if k[0].removesuffix("_total") not in app_level} == (
        samples(shard)
    )
    assert any(name == "realtimekit_app_info" for name, _ in samples(shard))


def test_analytics_are_counters_over_all_time_and_gauges_of_the_day() -> None:
    """The overall totals are counters (_total), today's totals gauges; an app whose
    analytics were refused shows enabled 0 and no values; every app has its info with the
    name of its credentials."""
    got = samples(SNAPSHOT)

    def at(name: str, app: str = "app", **extra: str) -> float | None:
        return got.get((name, frozenset({"account_id": "acc", "app_id": app, **extra}.items())))

    assert at("realtimekit_app_livestream_sessions_total") == 4
    assert at("realtimekit_app_livestream_ingest_seconds_total") == 531
    assert at("realtimekit_app_livestream_viewer_seconds_total") == 116.5
    assert at("realtimekit_app_livestream_today_sessions") == 1
    assert at("realtimekit_app_livestream_today_ingest_seconds") == 60
    assert at("realtimekit_app_livestream_today_viewer_seconds") == 12
    assert at("realtimekit_app_analytics_enabled") == 1
    assert at("realtimekit_app_analytics_last_success_timestamp_seconds") == 1_700_000_290
    assert at("realtimekit_app_analytics_enabled", "down") == 0
    assert at("realtimekit_app_livestream_sessions_total", "down") is None
    assert at("realtimekit_app_info", credentials="default") == 1
    assert at("realtimekit_app_info", "down", credentials="agency-b") == 1
    kinds = {f.name: f.type for f in families(SNAPSHOT) if f.name in ANALYTICS}
    assert {n for n, t in kinds.items() if t == "counter"} == {
        "realtimekit_app_livestream_sessions",
        "realtimekit_app_livestream_ingest_seconds",
        "realtimekit_app_livestream_viewer_seconds",
    }


def test_families_are_the_rows_handed_to_prometheus_client() -> None:
    """families() converts gauge_rows(): same families in the same order, one sample per
    row, labels the key labels then the extra ones."""
    rows = gauge_rows(SNAPSHOT)
    got = families(SNAPSHOT)
    assert [f.name for f in got] == [t.name for t in rows]
    assert [f.documentation for f in got] == [t.documentation for t in rows]
    for family, table in zip(got, rows, strict=True):
        assert [s.value for s in family.samples] == [value for _, _, value in table.rows]
        assert [s.labels for s in family.samples] == [
            dict(zip((*table.key, *table.extra), (*key, *extra), strict=True))
            for key, extra, _ in table.rows
        ]
