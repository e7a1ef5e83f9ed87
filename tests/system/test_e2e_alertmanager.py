"""End to end to a person: simulator -> exporter -> Prometheus with the shipped rules ->
Alertmanager with the shipped configuration -> a loopback webhook receiver that records
every notification. All real processes on loopback.

The test runs temporary copies of deploy/prometheus/alerts.yml and
deploy/alertmanager/alertmanager.yml in which only durations are shortened (every rule's
``for``, and ``group_wait``, ``group_interval``, ``repeat_interval``) and the receivers'
URLs point at the test's receiver; :func:`test_the_copies_differ_from_the_shipped_files_only_there`
proves that. The stop scenario runs the "fast" setting of docs/alerts.md (poll every 15 s,
scrape and evaluate every 5 s, ``for: 10s``, ``group_wait: 3s``) and measures the time from
a stop to its notification, by polling and by webhook.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests import REPO
from tests.procs import (
    LOOPBACK,
    Pipeline,
    Proc,
    Prometheus,
    exporter_command,
    free_port,
    get,
    post,
    request,
    require_tool,
    run,
    spawned_alertmanager,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
JOB = "realtimekit-exporter"
ACCOUNT = "am-account"
APP = "am-app"
STOPPED = "RealtimeKitLivestreamStoppedLive"
EXPECTED = "RealtimeKitLivestreamExpectedLiveNotLive"
API_DOWN = "RealtimeKitApiDown"
TOKEN_REJECTED = "RealtimeKitApiTokenRejected"
EXPORTER_DOWN = "RealtimeKitExporterDown"
# The durations of the copies: the test's "for" of every rule, and Alertmanager's.
FOR = "10s"
GROUP_WAIT, GROUP_INTERVAL, REPEAT_INTERVAL = "3s", "5s", "1h"
# After the last expected notification, how long the receiver is watched for any other:
# two group intervals, in which a duplicate or a late sibling would have been sent.
QUIET = 12.0
_FOR_LINE = re.compile(r"^(\s+for: )\S+$", re.M)
_TIMING = re.compile(r"^(\s+(?:group_wait|group_interval|repeat_interval): )\S+", re.M)
_URL = re.compile(r"(- url: )http://127\.0\.0\.1:9095/(\w+)")


def fast_rules(text: str) -> str:
    """alerts.yml with every rule's ``for`` set to :data:`FOR`."""
    return _FOR_LINE.sub(rf"\g<1>{FOR}", text)


def fast_alertmanager(text: str, receiver: str) -> str:
    """alertmanager.yml with the grouping timings shortened and the receivers' URLs on
    ``receiver`` (``http://host:port``), each keeping its path."""
    timings = {"group_wait": GROUP_WAIT, "group_interval": GROUP_INTERVAL}
    timings["repeat_interval"] = REPEAT_INTERVAL

    def timing(m: re.Match[str]) -> str:
        return m.group(1) + timings[m.group(1).strip().rstrip(":")]

    return _URL.sub(rf"\g<1>{receiver}/\g<2>", _TIMING.sub(timing, text))


def test_the_copies_differ_from_the_shipped_files_only_there() -> None:
    """The copies the tests run change durations and the receivers' URLs, nothing else:
    line by line, every changed line is a ``for``, a grouping timing or a receiver URL."""
    for shipped, copy in (
        (ALERTS.read_text(), fast_rules(ALERTS.read_text())),
        (ALERTMANAGER.read_text(), fast_alertmanager(ALERTMANAGER.read_text(), "http://x:1")),
    ):
        old, new = shipped.splitlines(), copy.splitlines()
        assert len(old) == len(new)
        changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
        assert changed  # something was shortened
        for before, after in changed:
            key = before.split(":")[0].strip().lstrip("- ")
            assert key in ("for", "group_wait", "group_interval", "repeat_interval", "url"), (
                before,
                after,
            )
            assert after.split(":")[0] == before.split(":")[0]


# -- the receiver ------------------------------------------------------------------------------
@dataclass
class Notification:
    at: float  # monotonic, when it arrived
    path: str  # /pager or /tickets
    status: str  # firing or resolved (of the group)
    alerts: list[dict[str, Any]]

    def names(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.alerts}


@dataclass
class Receiver:
    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Notification]:
        with self.lock:
            return list(self.notifications)

    def about(self, alertname: str, status: str | None = None, **labels: str) -> list[Notification]:
        """Notifications holding an alert called ``alertname`` with ``labels`` (and, if
        given, the alert's own ``status``)."""
        out = []
        for note in self.received():
            for alert in note.alerts:
                found = alert["labels"]
                if found["alertname"] != alertname:
                    continue
                if any(found.get(k) != v for k, v in labels.items()):
                    continue
                if status is not None and alert["status"] != status:
                    continue
                out.append(note)
                break
        return out

    def per_stream(self) -> list[Notification]:
        return [
            n
            for n in self.received()
            if any(a["labels"]["alertname"].startswith("RealtimeKitLivestream") for a in n.alerts)
        ]


@contextlib.contextmanager
def receiving() -> Iterator[tuple[Receiver, str]]:
    """A webhook receiver on a free loopback port, recording every notification; yields it
    and its ``http://host:port``."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            doc = json.loads(body)
            with receiver.lock:
                receiver.notifications.append(
                    Notification(time.monotonic(), self.path, doc["status"], doc["alerts"])
                )
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def alertmanager_for(workdir: Path, receiver_url: str) -> Iterator[tuple[Proc, str]]:
    """Alertmanager running the shipped configuration's fast copy (its receivers on
    ``receiver_url``); yields it and its ``host:port``, once ready."""
    config = workdir / "alertmanager.yml"
    config.write_text(fast_alertmanager(ALERTMANAGER.read_text(), receiver_url))
    with spawned_alertmanager(workdir, config) as (proc, url):
        yield proc, url.removeprefix("http://")


def watch_quiet(procs: list[Proc], seconds: float) -> None:
    """Watch for ``seconds`` with every process alive (a bounded observation window for
    "nothing more was sent")."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for proc in procs:
            assert not proc.exited(), proc.describe()
        time.sleep(0.2)


@dataclass
class Stack:
    pipeline: Pipeline
    receiver: Receiver
    control: str  # the simulator's control URL
    alertmanager: str  # host:port
    procs: list[Proc]
    workdir: Path
    token: str
    prometheus: Prometheus

    def wait(self, what: str, condition: Any, timeout: float) -> None:
        wait_for(condition, timeout=timeout, what=what, watch=self.procs, interval=0.2)

    def quiet(self, seconds: float = QUIET) -> None:
        watch_quiet(self.procs, seconds)

    def inhibited(self, alertname: str) -> list[dict[str, Any]]:
        """Alertmanager's alerts called ``alertname`` that an inhibition silences."""
        response = get(f"http://{self.alertmanager}/api/v2/alerts?inhibited=true")
        assert response.status == 200, response.text
        return [
            a
            for a in response.json()
            if a["labels"]["alertname"] == alertname and a["status"]["inhibitedBy"]
        ]

    def faults(self, **changes: Any) -> None:
        answer = request("PUT", f"{self.control}/faults", body=changes)
        assert answer.status == 200, answer.text


@contextlib.contextmanager
def stack(
    *,
    interval: str,
    scrape: str,
    max_staleness: str,
    live: list[str],
    idle: list[str],
    expect_live: list[str],
    webhooks: bool = False,
) -> Iterator[Stack]:
    """The whole chain, with manual streams ``live`` (live now) and ``idle``, and the
    exporter expecting ``expect_live`` to be live."""
    require_tool("prometheus")
    token = "am-" + secrets.token_hex(20)
    with (
        tempfile.TemporaryDirectory(prefix="rtk-am-") as tmp,
        contextlib.ExitStack() as exits,
    ):
        workdir = Path(tmp)
        token_file = workdir / "token"
        token_file.write_text(token + "\n")
        receiver, receiver_url = exits.enter_context(receiving())
        pipeline = exits.enter_context(
            Pipeline(workdir, account=ACCOUNT, app=APP, token_file=token_file)
        )
        origin = pipeline.start_simulator(
            "--livestreams", "2", "--live", "0", "--profile", "realistic"
        )
        control = origin + "/-/simulator"
        for sid in live + idle:
            created = post(control + "/livestreams", {"id": sid, "name": sid})
            assert created.status == 201, created.text
        for sid in live:
            went = post(f"{control}/livestreams/{sid}/live", {"viewers": 10})
            assert went.status == 200, went.text
        hooks = (
            {
                "listen_address": f"{LOOPBACK}:{free_port()}",
                "public_key_url": origin + "/.well-known/webhooks.json",
            }
            if webhooks
            else None
        )
        pipeline.start_exporter(
            max_staleness=max_staleness, interval=interval, expect_live=expect_live, webhooks=hooks
        )
        _, alertmanager = exits.enter_context(alertmanager_for(workdir, receiver_url))
        rules = workdir / "alerts.yml"
        rules.write_text(fast_rules(ALERTS.read_text()))
        prometheus = pipeline.start_prometheus(
            job=JOB, rule_files=[rules], interval=scrape, alertmanager=alertmanager
        )
        yield Stack(
            pipeline, receiver, control, alertmanager, pipeline.procs, workdir, token, prometheus
        )


@pytest.mark.timeout(170)
def test_a_stop_notifies_once_then_resolves_by_polling_and_by_webhook() -> None:
    """The fast setting (poll 15 s, scrape and evaluate 5 s, for 10 s, group_wait 3 s): a
    stream expected live that is not pages (critical) once; a stream that stops gets one
    "stopped being live" ticket within the documented budget (docs/alerts.md: by polling
    15 + 5 + 5 + 10 + 5 + 3 = 43 s, by webhook 1 + 5 + 5 + 10 + 5 + 3 = 29 s), and one
    resolved notification when it is live again; nothing else is sent."""
    polled, pushed, expected = "am-polled", "am-pushed", "am-expected"
    with stack(
        interval="15s",
        scrape="5s",
        max_staleness="5m",
        live=[polled, pushed],
        idle=[expected],
        expect_live=[expected],
        webhooks=True,
    ) as s:
        s.wait(
            "the expected-live stream's page",
            lambda: s.receiver.about(EXPECTED, "firing", livestream_id=expected),
            timeout=60,
        )
        page = s.receiver.about(EXPECTED, livestream_id=expected)
        assert [n.path for n in page] == ["/pager"]
        # Both streams have been live in Prometheus for a few scrapes by now.
        stopped = post(f"{s.control}/livestreams/{polled}/stop")
        assert stopped.status == 200, stopped.text
        polled_at = time.monotonic()
        # Then webhooks on: the second stop comes by webhook.
        config = str(s.workdir / "exporter.yaml")
        hook_port = yaml.safe_load(Path(config).read_text())["webhooks"]["listen_address"]
        url = f"http://{hook_port}/webhooks/realtimekit"
        registered = run(
            [*exporter_command("webhooks", "register", "--config.file", config), "--url", url],
            timeout=30,
        )
        assert registered.returncode == 0, registered.stderr
        stopped = post(f"{s.control}/livestreams/{pushed}/stop")
        assert stopped.status == 200, stopped.text
        pushed_at = time.monotonic()
        s.wait(
            "both stops' tickets",
            lambda: (
                s.receiver.about(STOPPED, "firing", livestream_id=polled)
                and s.receiver.about(STOPPED, "firing", livestream_id=pushed)
            ),
            timeout=70,
        )
        by_poll = s.receiver.about(STOPPED, "firing", livestream_id=polled)[0].at - polled_at
        by_hook = s.receiver.about(STOPPED, "firing", livestream_id=pushed)[0].at - pushed_at
        print(f"stop to notification: by polling {by_poll:.1f} s, by webhook {by_hook:.1f} s")
        assert by_poll <= 15 + 5 + 5 + 10 + 5 + 3 + 2  # the budget, and 2 s of slack
        assert by_hook <= 1 + 5 + 5 + 10 + 5 + 3 + 2
        went = post(f"{s.control}/livestreams/{polled}/live", {"viewers": 10})
        assert went.status == 200, went.text
        s.wait(
            "the resolved notification",
            lambda: s.receiver.about(STOPPED, "resolved", livestream_id=polled),
            timeout=60,
        )
        s.quiet()
        for sid in (polled, pushed):
            firing = s.receiver.about(STOPPED, "firing", livestream_id=sid)
            assert len(firing) == 1, [n.alerts for n in firing]
            assert firing[0].path == "/tickets"
        assert len(s.receiver.about(STOPPED, "resolved", livestream_id=polled)) == 1
        assert len(s.receiver.about(EXPECTED, "firing", livestream_id=expected)) == 1
        names = set().union(*(n.names() for n in s.receiver.received()))
        assert names == {STOPPED, EXPECTED}


@pytest.mark.timeout(120)
def test_an_api_outage_pages_once_for_the_app_and_never_per_stream() -> None:
    """The API answers 5xx past poll.max_staleness: one ApiDown notification for the app,
    and no notification about any stream, live, idle or expected live, while the outage
    lasts (the streams' series go when stale; a failure never reads as a stop)."""
    with stack(
        interval="1s",
        scrape="1s",
        max_staleness="8s",
        live=["am-live", "am-expected"],
        idle=["am-idle"],
        expect_live=["am-expected"],
    ) as s:
        s.wait("the streams scraped", lambda: _scraped(s, "am-expected"), timeout=30)
        s.faults(error_rate=1.0)
        s.wait("the app's notification", lambda: s.receiver.about(API_DOWN, "firing"), timeout=45)
        s.wait(
            "the streams' series gone stale",
            lambda: (
                s.prometheus.value('realtimekit_livestream_live{livestream_id="am-live"}') is None
            ),
            timeout=45,
        )
        s.quiet()
        assert len(s.receiver.about(API_DOWN, "firing", app_id=APP)) == 1
        assert s.receiver.per_stream() == []
        assert {n.path for n in s.receiver.received()} == {"/tickets"}


@pytest.mark.timeout(120)
def test_a_rejected_token_pages_once_naming_the_permission() -> None:
    """Every request answered 401: one notification, the token's, naming the permission
    it needs; the API-down alert that follows is inhibited, and no stream is paged."""
    with stack(
        interval="1s",
        scrape="1s",
        max_staleness="8s",
        live=["am-live"],
        idle=[],
        expect_live=["am-live"],
    ) as s:
        s.wait("the stream scraped", lambda: _scraped(s, "am-live"), timeout=30)
        s.faults(reject_token=True)
        s.wait(
            "the token's page",
            lambda: s.receiver.about(TOKEN_REJECTED, "firing"),
            timeout=45,
        )
        s.wait("the API-down alert, inhibited", lambda: s.inhibited(API_DOWN), timeout=45)
        s.quiet()
        notes = s.receiver.received()
        assert len(notes) == 1, [n.alerts for n in notes]
        (alert,) = notes[0].alerts
        assert notes[0].path == "/pager"
        assert "Realtime or Realtime Admin permission" in alert["annotations"]["description"]
        assert s.token not in json.dumps(alert)


@pytest.mark.timeout(120)
def test_a_killed_exporter_pages_once_and_nothing_per_stream() -> None:
    """The exporter is killed: one exporter-level page; no stream notification (its
    series are gone with it)."""
    with stack(
        interval="1s",
        scrape="1s",
        max_staleness="30s",
        live=["am-live", "am-expected"],
        idle=["am-idle"],
        expect_live=["am-expected"],
    ) as s:
        s.wait("the streams scraped", lambda: _scraped(s, "am-expected"), timeout=30)
        exporter = s.pipeline.procs[1]
        exporter.popen.send_signal(signal.SIGKILL)
        exporter.popen.wait(timeout=10)
        s.procs = [p for p in s.procs if p is not exporter]
        s.wait(
            "the exporter's page",
            lambda: s.receiver.about(EXPORTER_DOWN, "firing"),
            timeout=45,
        )
        s.quiet()
        notes = s.receiver.received()
        assert len(notes) == 1, [n.alerts for n in notes]
        assert notes[0].path == "/pager"
        assert s.receiver.per_stream() == []


def _scraped(s: Stack, sid: str) -> bool:
    """Prometheus has the stream live (the exporter polled it, and it was scraped)."""
    return s.prometheus.value(f'realtimekit_livestream_live{{livestream_id="{sid}"}}') == 1


@pytest.mark.timeout(60)
def test_the_inhibition_rules_in_a_real_alertmanager() -> None:
    """Alerts posted straight to Alertmanager (the shipped configuration's copy): an app's
    API-down silences that app's stream alerts and stale data, not another app's; a rejected token
    silences the app's API-down; an exporter down silences everything of that target.
    Only the causes are notified."""
    with (
        tempfile.TemporaryDirectory(prefix="rtk-am-") as tmp,
        receiving() as (receiver, url),
        alertmanager_for(Path(tmp), url) as (proc, address),
    ):
        base = {"job": JOB, "instance": "exp:1", "account_id": ACCOUNT}

        def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
            return {"labels": {"alertname": name, "severity": severity, **base, **labels}}

        alerts = [
            alert(API_DOWN, "warning", app_id="a"),
            alert("RealtimeKitDataStale", "warning", app_id="a"),
            alert(STOPPED, "warning", app_id="a", livestream_id="s1"),
            alert(STOPPED, "warning", app_id="b", livestream_id="s2"),
            alert(TOKEN_REJECTED, "critical", app_id="c"),
            alert(API_DOWN, "warning", app_id="c"),
            alert(EXPORTER_DOWN, "critical", instance="exp:2", app_id=""),
            alert(EXPECTED, "critical", instance="exp:2", app_id="d", livestream_id="s3"),
        ]
        for item in alerts:
            if item["labels"].get("app_id") == "":
                del item["labels"]["app_id"]
                del item["labels"]["account_id"]
        posted = post(f"http://{address}/api/v2/alerts", alerts)
        assert posted.status == 200, posted.text

        def delivered() -> set[tuple[str, str]]:
            return {
                (a["labels"]["alertname"], a["labels"].get("app_id", "-"))
                for n in receiver.received()
                for a in n.alerts
            }

        causes = {(API_DOWN, "a"), (STOPPED, "b"), (TOKEN_REJECTED, "c"), (EXPORTER_DOWN, "-")}
        wait_for(
            lambda: causes <= delivered(), timeout=30, what="the causes notified", watch=[proc]
        )
        watch_quiet([proc], QUIET)
        assert delivered() == causes
        silenced = get(f"http://{address}/api/v2/alerts?inhibited=true&active=false")
        names = {
            (a["labels"]["alertname"], a["labels"].get("app_id"))
            for a in silenced.json()
            if a["status"]["inhibitedBy"]
        }
        assert names == {
            (STOPPED, "a"),
            ("RealtimeKitDataStale", "a"),
            (API_DOWN, "c"),
            (EXPECTED, "d"),
        }
