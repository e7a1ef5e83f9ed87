"""End to end with webhooks: the simulator, the exporter and Prometheus as real processes on
loopback; the exporter's URL registered through ``realtimekit-exporter webhooks register``
against the simulator's API, as a user would against RealtimeKit's.

The exporter polls only once a minute, so a stop that shows in Prometheus within seconds
can only have come by webhook: the simulator delivers the signed status change, the
exporter verifies it, asks the API about that one stream, and shows it stopped.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import time
from pathlib import Path

import pytest

from tests.procs import (
    LOOPBACK,
    Pipeline,
    exporter_command,
    free_port,
    get,
    post,
    require_tool,
    run,
    wait_for,
    wait_for_log,
)

JOB = "realtimekit-exporter"
ACCOUNT = "sim-account"
APP = "sim-app"
STREAMS = 5
LIVE_AT_START = 3
SHOWN_WITHIN = 8.0  # seconds from the stop to live 0 in Prometheus (scrapes every second)


@pytest.mark.timeout(90)
def test_a_stop_reaches_prometheus_by_webhook_within_seconds() -> None:
    """Registered once (a second run keeps it), the receiver turns the simulator's stop
    delivery into live 0 in Prometheus seconds later, with the stream's final values and
    its IDLE status, while polling waits a minute; a forged delivery changes nothing."""
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
            *("--seed", "11", "--livestreams", str(STREAMS), "--live", str(LIVE_AT_START)),
            *("--profile", "realistic"),  # nothing changes by itself for minutes
        )
        control = origin + "/-/simulator"
        hook_port = free_port()
        exporter, target = pipeline.start_exporter(
            max_staleness="5m",
            interval="60s",
            webhooks={
                "listen_address": f"{LOOPBACK}:{hook_port}",
                "public_key_url": origin + "/.well-known/webhooks.json",
            },
        )
        wait_for_log(exporter, r"webhook public key \w+ loaded", timeout=20)
        url = f"http://{LOOPBACK}:{hook_port}/webhooks/realtimekit"
        config = str(workdir / "exporter.yaml")
        register = [
            *exporter_command("webhooks", "register", "--config.file", config),
            "--url",
            url,
        ]
        first = run(register, timeout=30)
        assert first.returncode == 0, first.stderr
        assert "created" in first.stdout
        again = run(register, timeout=30)
        assert again.returncode == 0, again.stderr
        assert "kept" in again.stdout
        hooks = get(control + "/webhooks").json()
        assert len(hooks["webhooks"]) == 1, hooks

        prometheus = pipeline.start_prometheus(job=JOB, rule_files=[])
        procs = pipeline.procs

        def live_query(livestream_id: str) -> str:
            return f'realtimekit_livestream_live{{job="{JOB}",livestream_id="{livestream_id}"}}'

        world = get(control + "/livestreams").json()["livestreams"]
        live_ids = sorted(s["id"] for s in world if s["live"])
        assert len(live_ids) == LIVE_AT_START
        wait_for(
            lambda: all(prometheus.value(live_query(i)) == 1 for i in live_ids),
            timeout=30,
            what="every live stream live in Prometheus",
            watch=procs,
            interval=0.2,
        )

        # A forged stop (signed by no one) for another live stream: refused, nothing shown.
        forged = post(
            url,
            {"event": "livestreaming.statusUpdate", "streamId": live_ids[1], "status": "IDLE"},
            headers={"rtk-signature": "Zm9yZ2Vk", "rtk-uuid": "forged-1"},
        )
        assert forged.status == 401

        target_id = live_ids[0]
        stopped = post(f"{control}/livestreams/{target_id}/stop")
        assert stopped.status == 200, stopped.text
        at, stopped_wall = time.monotonic(), time.time()
        wait_for(
            lambda: prometheus.value(live_query(target_id)) == 0,
            timeout=SHOWN_WITHIN,
            what=f"{target_id} live 0 in Prometheus within {SHOWN_WITHIN:g} s of its stop",
            watch=procs,
            interval=0.1,
        )
        shown_after = time.monotonic() - at
        assert shown_after < SHOWN_WITHIN
        status = prometheus.value(
            f'realtimekit_livestream_status{{job="{JOB}",livestream_id="{target_id}",'
            f'status="IDLE"}}'
        )
        assert status == 1
        # Its final values were fetched after the stop (polling last read them a cycle ago).
        counted = prometheus.value(
            "realtimekit_livestream_session_last_update_timestamp_seconds"
            f'{{livestream_id="{target_id}"}}'
        )
        assert counted is not None
        assert counted >= stopped_wall
        accepted = prometheus.value(
            f'realtimekit_exporter_webhook_deliveries_total{{job="{JOB}",'
            f'event="livestreaming.statusUpdate",outcome="accepted"}}'
        )
        assert accepted is not None
        assert accepted >= 1
        assert prometheus.value(live_query(live_ids[1])) == 1  # the forged one
        bad = prometheus.value(
            f'realtimekit_exporter_webhook_deliveries_total{{job="{JOB}",'
            f'event="unverified",outcome="bad_signature"}}'
        )
        assert bad == 1
        metrics = get(f"http://{target}/metrics").text
        assert token not in metrics
        assert token not in exporter.log()
