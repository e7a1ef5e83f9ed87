"""End to end: simulator -> exporter -> Prometheus with the shipped alerting and recording
rules, all three as real processes on loopback.

One manual stream goes live (right away, so that RealtimeKit's 40-50 s placeholder of 60 is
over while the test runs), Prometheus sees it live with its counters, the recording rules
count it and measure its viewers (the 5-minute average of a series younger than 5 minutes
counts the time before it as no viewers); then it stops, and RealtimeKitLivestreamStoppedLive goes
pending for it and for no other stream. Neither the token nor any stream key ever shows in
the exporter's /metrics or logs.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import REPO
from tests.procs import Pipeline, get, post, require_tool, wait_for

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
RECORDING = REPO / "deploy" / "prometheus" / "recording.yml"
JOB = "realtimekit-exporter"
STOPPED_LIVE = "RealtimeKitLivestreamStoppedLive"
LIVE_PER_APP = "account_id_app_id:realtimekit_livestream_live:sum"
VIEWERS_PER_STREAM = "account_id_app_id_livestream_id:realtimekit_livestream_viewer_seconds:rate5m"

ACCOUNT = "sim-account"
APP = "sim-app"
SEED = 7
STREAMS = 4  # autopilot streams; the realistic profile changes none within minutes
LIVE_AT_START = 2
MANUAL_ID = "e2e-manual"
MANUAL_NAME = "E2E manual stream"
VIEWERS = 50
# The placeholder lasts 40-50 s from going live; then a scrape, an evaluation, and slack.
PLACEHOLDER_OVER_WITHIN = 65.0


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _selector(livestream_id: str) -> str:
    return f'{{job="{JOB}",app_id="{APP}",livestream_id="{livestream_id}"}}'


@pytest.mark.timeout(90)
def test_stream_goes_live_then_stops_and_prometheus_alerts() -> None:
    """Live is seen and counted, viewers measured, stopping raises StoppedLive for that
    stream only, and no secret leaks into /metrics or the exporter's logs."""
    require_tool("prometheus")
    token = "e2e-" + secrets.token_hex(20)
    with tempfile.TemporaryDirectory(prefix="rtk-e2e-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        token_file = workdir / "token"
        token_file.write_text(token + "\n", encoding="utf-8")
        pipeline = stack.enter_context(
            Pipeline(workdir, account=ACCOUNT, app=APP, token_file=token_file)
        )
        origin = pipeline.start_simulator(
            *("--seed", str(SEED), "--livestreams", str(STREAMS), "--live", str(LIVE_AT_START)),
            *("--profile", "realistic"),
        )
        control = origin + "/-/simulator"

        # The manual stream, live at once so the placeholder phase starts now.
        created = post(control + "/livestreams", {"id": MANUAL_ID, "name": MANUAL_NAME})
        assert created.status == 201, created.text
        went_live = post(f"{control}/livestreams/{MANUAL_ID}/live", {"viewers": VIEWERS})
        assert went_live.status == 200 and went_live.json()["live"], went_live.text
        live_since = time.monotonic()
        session_started = _unix(went_live.json()["session"]["started_time"])

        # What RealtimeKit would hand out: the stream keys the exporter must never show.
        listing = get(
            f"{origin}/client/v4/accounts/{ACCOUNT}/realtime/kit/{APP}/livestreams?per_page=100",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert listing.status == 200, listing.text
        stream_keys = [s["stream_key"] for s in listing.json()["data"]]
        assert len(stream_keys) == STREAMS + 1 and all(stream_keys)
        world = get(control + "/livestreams").json()["livestreams"]
        live_ids = {s["id"] for s in world if s["live"]}
        assert len(live_ids) == LIVE_AT_START + 1 and MANUAL_ID in live_ids
        never_live = {s["id"] for s in world} - live_ids
        assert len(never_live) == STREAMS - LIVE_AT_START

        exporter, target = pipeline.start_exporter(
            "--log.level", "debug", max_staleness="10s", expect_live=[MANUAL_ID]
        )
        prometheus = pipeline.start_prometheus(job=JOB, rule_files=[ALERTS, RECORDING])
        procs = pipeline.procs

        def check(what: str, condition: Any, timeout: float = 20) -> Any:
            def describe() -> str:
                # Scrape gaps and the stream's own history tell most failures apart.
                up = prometheus.history(f'up{{job="{JOB}"}}')
                live = prometheus.history(f"realtimekit_livestream_live{_selector(MANUAL_ID)}")
                return f"{what}\n  up: {up}\n  live: {live}"

            return wait_for(condition, timeout=timeout, what=describe, watch=procs, interval=0.2)

        # 1. Prometheus sees the manual stream live, with its session counters.
        check("the target to be up", lambda: prometheus.value(f'up{{job="{JOB}"}}') == 1)
        manual = _selector(MANUAL_ID)
        check(
            "the manual stream to be live in Prometheus",
            lambda: prometheus.value(f"realtimekit_livestream_live{manual}") == 1,
        )
        for series in ("ingest_seconds", "viewer_seconds", "session_start_timestamp_seconds"):
            check(
                f"realtimekit_livestream_{series} of the manual stream",
                lambda series=series: prometheus.query(f"realtimekit_livestream_{series}{manual}"),
            )
        check(
            "expected_live 1 for the manual stream",
            lambda: prometheus.value(f"realtimekit_livestream_expected_live{manual}") == 1,
        )
        assert prometheus.alerts(STOPPED_LIVE) == []

        # 2. The live-streams-per-app recording rule counts exactly the live streams.
        live_count = f'{LIVE_PER_APP}{{account_id="{ACCOUNT}",app_id="{APP}"}}'
        check(
            f"{LIVE_PER_APP} to be {len(live_ids)}",
            lambda: prometheus.value(live_count) == len(live_ids),
        )

        # 3. Average concurrent viewers, once the placeholder phase is over.
        viewers = VIEWERS_PER_STREAM + _selector(MANUAL_ID).replace(f'job="{JOB}",', "")

        def positive_rate() -> tuple[float, float] | None:
            """(evaluation time, value) of the recorded series, once positive."""
            result = prometheus.query(viewers)
            assert len(result) <= 1, result
            at, value = (float(v) for v in result[0]["value"]) if result else (0.0, 0.0)
            return (at, value) if value > 0 else None

        at, rate = check(
            f"{VIEWERS_PER_STREAM} of the manual stream to be positive",
            positive_rate,
            timeout=PLACEHOLDER_OVER_WITHIN - (time.monotonic() - live_since),
        )
        # rate() divides the window's increase by the whole 5 minutes, and this stream's
        # series is younger than that: no viewers before it went live, VIEWERS since (the
        # placeholder phase's are counted when it ends). The simulated audience swings by
        # up to 40% around its mean, and the increase is counted from the first scrape.
        age = at - session_started
        expected = VIEWERS * age / 300
        assert 0.5 * expected <= rate <= 1.5 * expected, (rate, expected, age)

        # No flap: the stream has read live ever since Prometheus first saw it.
        lowest = prometheus.value(f"min_over_time(realtimekit_livestream_live{manual}[10m])")
        assert lowest == 1, prometheus.history(f"realtimekit_livestream_live{manual}")

        # 4. The stream stops: StoppedLive goes pending (for: 1m) for it, and only for it.
        stopped = post(f"{control}/livestreams/{MANUAL_ID}/stop")
        assert stopped.status == 200 and not stopped.json()["live"], stopped.text
        check(
            "the manual stream to read not live in Prometheus",
            lambda: prometheus.value(f"realtimekit_livestream_live{manual}") == 0,
        )
        alert = check(
            f"{STOPPED_LIVE} for the manual stream",
            lambda: [
                a
                for a in prometheus.alerts(STOPPED_LIVE)
                if a["labels"].get("livestream_id") == MANUAL_ID
            ],
        )[0]
        assert alert["state"] in ("pending", "firing"), alert
        assert alert["labels"]["name"] == MANUAL_NAME and alert["labels"]["job"] == JOB
        assert alert["labels"]["severity"] == "warning"
        # The streams never live here are exported as not live, and never alerted; nor
        # did the streams live throughout.
        not_live = prometheus.query(f'realtimekit_livestream_live{{job="{JOB}"}} == 0')
        assert never_live <= {r["metric"]["livestream_id"] for r in not_live}, not_live
        others = prometheus.query(
            f'ALERTS{{alertname="{STOPPED_LIVE}",livestream_id!="{MANUAL_ID}"}}[10m]'
        )
        assert others == [], others

        # 5. No secret in what the exporter shows, in either format, or in its logs.
        shown = get(f"http://{target}/metrics").text
        shown += get(
            f"http://{target}/metrics",
            headers={"Accept": "application/openmetrics-text;version=1.0.0"},
        ).text
        assert MANUAL_ID in shown
        logged = exporter.log()
        assert re.search(f'msg="livestream is LIVE".* livestream_id={MANUAL_ID}', logged)
        for secret in (token, *stream_keys):
            assert secret not in shown, "a secret is in /metrics"
            assert secret not in logged, "a secret is in the exporter's log"
        assert not re.search(r"sk_sim_[0-9a-f]{8}", shown + logged)
