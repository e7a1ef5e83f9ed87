"""A real Prometheus scrapes the exposition whole: the cached snapshot part and the own
part after it in one gzip member (the exposition itself: tests/unit/test_exposition.py)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest

from tests.procs import Pipeline, wait_for

JOB = "exposition"
STREAMS = 150


@pytest.mark.timeout(90)
def test_prometheus_scrapes_the_joined_gzip_body() -> None:
    """Prometheus (which asks for OpenMetrics, gzip) stores series from the cached part and
    from the own part, which comes after it in the one gzip member and ends with # EOF: a
    body cut short would fail the scrape (up 0)."""
    with tempfile.TemporaryDirectory(prefix="rtk-expo-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        token_file = workdir / "token"
        token_file.write_text("exposition-token\n", encoding="utf-8")
        pipeline = stack.enter_context(
            Pipeline(workdir, account="acc", app="app", token_file=token_file)
        )
        pipeline.start_simulator("--livestreams", str(STREAMS), "--live", "5")
        pipeline.start_exporter(max_staleness="30s")
        prometheus = pipeline.start_prometheus(job=JOB, rule_files=[])

        def arrived() -> bool:
            selector = f'{{job="{JOB}"}}'
            return (
                prometheus.value(f"up{selector}") == 1
                and prometheus.value(f"count(realtimekit_livestream_live{selector})") == STREAMS
                and prometheus.value(f"count(realtimekit_up{selector})") == 1
                and prometheus.value(f"count(realtimekit_exporter_build_info{selector})") == 1
                # The GC collector's families close the own part.
                and bool(prometheus.query(f"python_gc_collections_total{selector}"))
            )

        wait_for(
            arrived,
            timeout=45,
            what=lambda: (
                "the series of both parts in Prometheus; up: "
                + prometheus.history(f'up{{job="{JOB}"}}')
            ),
            watch=pipeline.procs,
            interval=0.5,
        )
        # No scrape failed on the way (a scrape before the first poll fails none either).
        assert prometheus.value(f'min_over_time(up{{job="{JOB}"}}[5m])') == 1
