"""``--demo`` and ``simulate`` as real subprocesses: what a first-time user sees, signals,
usage errors, and simulate's flags reaching the simulator."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo import ACCOUNT_ID, EVENTS_APP, MAIN_APP
from tests.conftest import TOKEN, shape
from tests.procs import (
    exporter_command,
    get,
    post,
    run,
    spawned,
    spawned_simulator,
    wait_for,
    wait_for_exit,
    wait_for_log,
)

if TYPE_CHECKING:
    from pathlib import Path

READY_WITHIN = 60.0  # seconds from start until the exposition shows the demo working
CHANGE_WITHIN = 80.0  # seconds from start until a stream has gone live and one has stopped
SCRAPE_EVERY = 0.5


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """metric name -> sorted label items -> value."""
    response = get(url)
    assert response.status == 200, response.text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _statuses(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, str]:
    """livestream_id -> current status."""
    current = {}
    for labels, value in metrics.get("realtimekit_livestream_status", {}).items():
        if value == 1:
            found = dict(labels)
            current[found["livestream_id"]] = found["status"]
    return current


def _live(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, float]:
    """livestream_id -> realtimekit_livestream_live."""
    return {
        dict(k)["livestream_id"]: v
        for k, v in metrics.get("realtimekit_livestream_live", {}).items()
    }


def _working(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> list[str]:
    """What the exposition still lacks of a working demo (empty: nothing)."""
    missing = []
    up = {dict(k)["app_id"]: v for k, v in metrics.get("realtimekit_up", {}).items()}
    for app in (MAIN_APP, EVENTS_APP):
        if up.get(app) != 1:
            missing.append(f"realtimekit_up 1 for {app}")
    live = {
        dict(k)["livestream_id"]
        for k, v in metrics.get("realtimekit_livestream_live", {}).items()
        if v == 1
    }
    if not live:
        missing.append("a stream with realtimekit_livestream_live 1")
    for name in ("realtimekit_livestream_ingest_seconds", "realtimekit_livestream_viewer_seconds"):
        if not {dict(k)["livestream_id"] for k in metrics.get(name, {})} & live:
            missing.append(f"{name} of a live stream")
    analytics = metrics.get("realtimekit_app_livestream_sessions_total", {})
    if {dict(k)["app_id"] for k, v in analytics.items() if v > 0} != {MAIN_APP, EVENTS_APP}:
        missing.append("realtimekit_app_livestream_sessions_total above 0 for both apps")
    return missing


@pytest.mark.timeout(100)
def test_demo_shows_streams_changing_and_stops_on_sigterm(tmp_path: Path) -> None:
    """A user running --demo sees both apps up, live streams with counters, a stream going
    live and one stopping within a minute and a bit, and a clean exit 0 on SIGTERM."""
    command = exporter_command("--demo", "--web.listen-address", "127.0.0.1:0")
    started = time.monotonic()
    with spawned("demo", command, log_path=tmp_path / "demo.log") as demo:
        port = wait_for_log(demo, r"listening on 127\.0\.0\.1:(\d+)", timeout=20).group(1)
        banner = wait_for_log(demo, r"demo mode: .* metrics at (http://\S+/metrics)", timeout=20)
        url = f"http://127.0.0.1:{port}/metrics"
        assert banner.group(1) == url  # the bound port, not the 0 asked for

        seen: dict[str, str] = {}
        changes: list[str] = []
        live_before: dict[str, float] = {}
        went_live: list[str] = []
        stopped: list[str] = []
        working_at: float | None = None
        missing: list[str] = []

        def observe() -> bool:
            nonlocal working_at, missing
            metrics = _scrape(url)
            elapsed = time.monotonic() - started
            if working_at is None:
                missing = _working(metrics)
                if not missing:
                    working_at = elapsed
                elif elapsed > READY_WITHIN:
                    pytest.fail(f"after {READY_WITHIN:g} s the demo still lacks {missing}")
            for stream, status in _statuses(metrics).items():
                before = seen.get(stream)
                if before is not None and before != status:
                    changes.append(f"{stream}: {before} -> {status} at {elapsed:.1f} s")
                seen[stream] = status
            for stream, live in _live(metrics).items():
                before_live = live_before.get(stream)
                if before_live == 0 and live == 1:
                    went_live.append(stream)
                elif before_live == 1 and live == 0:
                    stopped.append(stream)
                live_before[stream] = live
            return working_at is not None and bool(went_live) and bool(stopped)

        wait_for(
            observe,
            timeout=CHANGE_WITHIN - (time.monotonic() - started),
            what=lambda: (
                "a stream to go live and one to stop"
                + (f" (the demo still lacks {missing})" if missing else "")
                + f"; went live: {went_live}, stopped: {stopped}, status changes: {changes}"
            ),
            watch=[demo],
            interval=SCRAPE_EVERY,
        )
        assert ACCOUNT_ID in get(url).text

        # The simulator pushes each status change to the exporter's webhook receiver: a
        # stream stopped through its control interface is a verified, accepted delivery.
        hooks = wait_for_log(
            demo, r"sends status webhooks to (http://\S+/webhooks/realtimekit)", timeout=5
        )
        assert hooks.group(1).startswith("http://127.0.0.1:")
        control = wait_for_log(demo, r"\(control: (http://\S+)/\)", timeout=5).group(1)
        metrics = _scrape(url)
        accepted_key = (("event", "livestreaming.statusUpdate"), ("outcome", "accepted"))
        accepted = metrics["realtimekit_exporter_webhook_deliveries_total"][accepted_key]
        target = sorted(s for s, v in _live(metrics).items() if v == 1)[0]
        assert post(f"{control}/livestreams/{target}/stop").status == 200

        def announced() -> bool:
            now = _scrape(url)
            more = now["realtimekit_exporter_webhook_deliveries_total"][accepted_key] > accepted
            return more and _live(now).get(target, 0.0) == 0

        wait_for(announced, timeout=10, what=lambda: f"{target} stopped by webhook", watch=[demo])

        demo.popen.send_signal(signal.SIGTERM)
        assert wait_for_exit(demo, timeout=10) == 0, demo.tail()
        assert "shutting down" in demo.log()


def test_demo_with_config_file_is_a_usage_error(tmp_path: Path) -> None:
    """--demo replaces --config.file: both together exit 2 with a one-line reason."""
    config = tmp_path / "config.yaml"
    config.write_text("apps: []\n", encoding="utf-8")
    done = run(exporter_command("--demo", "--config.file", str(config)), timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("realtimekit-exporter: usage error:"), done.stderr
    assert done.stderr.count("\n") == 1 and "--demo" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--livestreams", "2", "--live", "3"],
        ["--fault.error-rate", "2"],
        ["--listen", "nowhere"],
        ["--livestreams", "-1"],
    ],
    ids=["live-over-livestreams", "error-rate-over-1", "bad-listen", "negative-count"],
)
def test_simulate_bad_flags_exit_2(args: list[str]) -> None:
    """simulate rejects impossible flags with exit 2 and a one-line reason."""
    done = run(exporter_command("simulate", "--listen", "127.0.0.1:0", *args), timeout=30)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith("realtimekit-exporter: usage error:"), done.stderr
    assert done.stderr.count("\n") == 1


def test_simulate_serves_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    """simulate serves its control interface on the port it logs and exits 0 on SIGTERM."""
    command = exporter_command(
        "simulate", "--listen", "127.0.0.1:0", "--livestreams", "3", "--live", "1", "--seed", "2"
    )
    with spawned("simulator", command, log_path=tmp_path / "simulator.log") as simulator:
        match = wait_for_log(simulator, r"address=(http://127\.0\.0\.1:\d+)", timeout=20)
        listing = get(match.group(1) + "/-/simulator/livestreams")
        assert listing.status == 200
        streams = listing.json()["livestreams"]
        assert len(streams) == 3 and sum(s["live"] for s in streams) == 1
        simulator.popen.send_signal(signal.SIGTERM)
        assert wait_for_exit(simulator, timeout=10) == 0, simulator.tail()
        assert "shutting down" in simulator.log()


def test_simulate_flags_reach_the_simulator(tmp_path: Path) -> None:
    """The new flags work end to end: faults readable at /-/simulator/faults, the
    per-address limit off (a burst is not refused), a listing in the variant shape."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    args = ("--ip-rate-limit", "off", "--fault.variant-rate", "1", "--fault.status-lag", "30s")
    with spawned_simulator(
        tmp_path, *args, "--fault.latency", "0", "--token-file", str(token_file)
    ) as (_, origin):
        faults = get(origin + "/-/simulator/faults").json()
        assert (faults["variant_rate"], faults["status_lag"], faults["latency"]) == (1.0, 30.0, 0)
        url = f"{origin}/client/v4/accounts/sim-account/realtime/kit/sim-app/livestreams"

        async def burst() -> list[int]:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as http:

                async def one() -> int:
                    async with http.get(url) as r:
                        await r.read()
                        return r.status

                return list(await asyncio.gather(*(one() for _ in range(300))))

        statuses = asyncio.run(burst())
        assert statuses == [200] * 300
        listing = get(url, headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert shape(listing) in ("listing_object", "disabled_text")
