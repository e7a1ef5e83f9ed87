"""deploy/alertmanager/alertmanager.yml, the example Alertmanager configuration, against the
alerts it receives (deploy/prometheus/alerts.yml).

- amtool accepts the file (``amtool check-config``).
- Routing, as amtool resolves it (``amtool config routes test``): critical alerts go to the
  receiver ``pager``, warnings to ``tickets``, and any other severity (or none) falls through
  every child route to the root's receiver; every alert of alerts.yml, with its own labels,
  is taken by a child route for its severity.
- Grouping: one group per incident, ``group_by`` alertname, job, credentials, account_id,
  app_id and livestream_id, set once on the root for every route.
- Inhibition: every alertname an inhibit rule names is an alert of alerts.yml (a regular
  expression matches one at least), no rule's sources are among its targets, and a real
  Alertmanager with the file suppresses what the file's comments say, and nothing else.

amtool and Alertmanager are looked up on PATH (``alertmanager``, or Debian's
``prometheus-alertmanager``): when one is missing the tests that need it skip, except in CI
(``CI`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests import REPO
from tests.procs import (
    get,
    post,
    require_tool,
    run,
    spawned_alertmanager,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
RECEIVER_OF = {"critical": "pager", "warning": "tickets"}  # severity -> receiver
DEFAULT_RECEIVER = "tickets"  # the root's: alerts no child route takes
# One group per incident: a stream, an app, or an exporter target (the file says why).
GROUP_BY = {"alertname", "job", "credentials", "account_id", "app_id", "livestream_id"}
TIMEOUT = 30  # seconds for one amtool run; it takes a few milliseconds

Matcher = tuple[str, str, str]  # (label, operator, value)


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _alerts() -> dict[str, dict[str, str]]:
    """Every alert of alerts.yml: its name and the labels its rule sets."""
    rules = [rule for group in _load(ALERTS)["groups"] for rule in group["rules"]]
    return {rule["alert"]: dict(rule.get("labels", {})) for rule in rules if "alert" in rule}


def _matcher(text: str) -> Matcher:
    """One matcher of Alertmanager's syntax (``name="value"``, ``name=~"regex"``...)."""
    match = re.fullmatch(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|[^"\s]*)\s*', text)
    assert match, f"not a matcher: {text!r}"
    name, operator, value = match.groups()
    return name, operator, json.loads(value) if value.startswith('"') else value


def _matches(matcher: Matcher, value: str) -> bool:
    """Whether a label value satisfies a matcher; Alertmanager anchors regular expressions."""
    _, operator, expected = matcher
    if operator in ("=", "!="):
        return (value == expected) == (operator == "=")
    return (re.fullmatch(expected, value) is not None) == (operator == "=~")


def _alertnames_matched(matchers: list[str]) -> set[str]:
    """The alerts of alerts.yml whose names satisfy every alertname matcher."""
    parsed = [_matcher(text) for text in matchers]
    assert {name for name, _, _ in parsed} == {"alertname"}, matchers
    return {name for name in _alerts() if all(_matches(m, name) for m in parsed)}


def _amtool() -> str:
    return require_tool("amtool")


@dataclass(frozen=True)
class Routed:
    receivers: list[str]  # what amtool resolves the labels to
    path: list[str]  # the matching routes, from the root: "default-route", then matchers


def _route(labels: Mapping[str, str]) -> Routed:
    """Where the file routes an alert with ``labels``, as ``amtool config routes test``
    (with --tree, which prints the route path) resolves it."""
    command = [_amtool(), "config", "routes", "test", "--tree", f"--config.file={CONFIG}"]
    done = run([*command, *(f"{k}={v}" for k, v in labels.items())], timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.rstrip() for line in done.stdout.splitlines() if line.strip()]
    assert lines[:2] == ["Matching routes:", "."], done.stdout
    # Tree lines: "└── default-route  receiver: tickets", '    └── {severity="critical"}  ...'
    path = [re.split(r"\s{2,}receiver:", line.split("── ", 1)[1])[0] for line in lines[2:-1]]
    return Routed(receivers=lines[-1].split(","), path=path)


def test_amtool_accepts_the_config() -> None:
    done = run([_amtool(), "check-config", str(CONFIG)], timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("severity", "receiver"), sorted(RECEIVER_OF.items()), ids=sorted(RECEIVER_OF)
)
def test_each_severity_goes_to_its_receiver(severity: str, receiver: str) -> None:
    """critical pages a person now, warning opens a ticket: one child route each."""
    routed = _route({"alertname": "RealtimeKitTest", "severity": severity})
    assert routed.receivers == [receiver]
    assert routed.path == ["default-route", f'{{severity="{severity}"}}']


@pytest.mark.parametrize(
    "labels",
    [{"severity": "info"}, {"severity": "Critical"}, {}],
    ids=["info", "capitalised", "no-severity"],
)
def test_an_unknown_severity_falls_through_to_the_default_receiver(
    labels: dict[str, str],
) -> None:
    """An alert no child route takes still notifies: the root's receiver gets it."""
    routed = _route({"alertname": "SomeOtherAlert", **labels})
    assert routed.path == ["default-route"]
    assert routed.receivers == [DEFAULT_RECEIVER] == [_load(CONFIG)["route"]["receiver"]]


@pytest.mark.parametrize("alertname", sorted(_alerts()))
def test_every_alert_has_a_severity_a_route_handles(alertname: str) -> None:
    """Each alert of alerts.yml, with the labels its rule sets, reaches the receiver for its
    severity through that severity's route, not by falling through to the default."""
    labels = _alerts()[alertname]
    assert labels.get("severity") in RECEIVER_OF, f"{alertname}: severity {labels.get('severity')}"
    routed = _route({"alertname": alertname, **labels})
    assert routed.receivers == [RECEIVER_OF[labels["severity"]]]
    assert len(routed.path) == 2, routed.path


def test_one_group_per_incident() -> None:
    """group_by is the documented key, set on the root alone so that every route inherits
    it; the timings wait for an incident's other alerts, then renotify rarely."""
    route = _load(CONFIG)["route"]
    assert len(route["group_by"]) == len(set(route["group_by"]))
    assert set(route["group_by"]) == GROUP_BY
    for child in route["routes"]:
        assert not {"group_by", "group_wait", "group_interval"} & set(child), child
    seconds = {key: _seconds(route[key]) for key in ("group_wait", "group_interval")}
    seconds["repeat_interval"] = _seconds(route["repeat_interval"])
    assert 0 < seconds["group_wait"] < seconds["group_interval"] <= seconds["repeat_interval"]


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, duration
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


def test_inhibit_rules_name_the_shipped_alerts() -> None:
    """Every alertname of an inhibit rule is an alert of alerts.yml (each name of an
    alternation, and a regular expression matches one at least), so a renamed alert cannot
    silently stop inhibiting or being inhibited; no rule's sources are among its targets."""
    alerts = set(_alerts())
    rules = _load(CONFIG)["inhibit_rules"]
    assert rules
    for rule in rules:
        # The matchers syntax only: source_match(_re) and target_match(_re) are deprecated.
        assert set(rule) == {"source_matchers", "target_matchers", "equal"}, rule
        for text in rule["source_matchers"] + rule["target_matchers"]:
            _, operator, value = _matcher(text)
            names = value.split("|") if operator in ("=~", "!~") else [value]
            literal = [name for name in names if re.escape(name) == name]
            assert set(literal) <= alerts, f"{text}: {sorted(set(literal) - alerts)}"
        sources = _alertnames_matched(rule["source_matchers"])
        targets = _alertnames_matched(rule["target_matchers"])
        assert sources, f"no alert is a source of {rule}"
        assert targets, f"no alert is a target of {rule}"
        assert not sources & targets, f"{sorted(sources & targets)} would inhibit themselves"
        assert "job" in rule["equal"], rule  # never across exporters of another job


# -- inhibition in a real Alertmanager --------------------------------------------------
@contextlib.contextmanager
def _spawned_alertmanager(workdir: Path) -> Iterator[str]:
    """Alertmanager running the shipped file (tests/procs.py): yields its URL."""
    with spawned_alertmanager(workdir, CONFIG) as (_, url):
        yield url


STREAM = {"account_id": "acc", "app_id": "app-1", "livestream_id": "stream-1"}
OTHER_APP_STREAM = {"account_id": "acc", "app_id": "app-2", "livestream_id": "stream-2"}
APP = {"account_id": "acc", "app_id": "app-1"}
OTHER_APP = {"account_id": "acc", "app_id": "app-2"}
SHARD_0, SHARD_1 = "10.0.0.10:10241", "10.0.0.11:10241"

# Each case: alerts of one job (every inhibit rule has job in `equal`, so cases do not
# meet), as (alertname, labels besides job and severity, suppressed?).
INHIBITION_CASES: dict[str, list[tuple[str, dict[str, str], bool]]] = {
    "exporter-down-hides-its-own-alerts-only": [
        ("RealtimeKitExporterDown", {"instance": SHARD_0}, False),
        ("RealtimeKitLivestreamStoppedLive", {"instance": SHARD_0, **STREAM}, True),
        ("RealtimeKitApiRateLimited", {"instance": SHARD_0, **APP}, True),
        ("RealtimeKitLivestreamStoppedLive", {"instance": SHARD_1, **STREAM}, False),
    ],
    "exporter-absent-hides-the-whole-job": [
        ("RealtimeKitExporterAbsent", {}, False),
        ("RealtimeKitExporterDown", {"instance": SHARD_0}, True),
        ("RealtimeKitApiDown", {"instance": SHARD_0, **APP}, True),
    ],
    # App-level alerts come from shard 0 alone; they hide the app's streams on every shard.
    "api-down-hides-the-apps-streams-only": [
        ("RealtimeKitApiDown", {"instance": SHARD_0, **APP}, False),
        ("RealtimeKitLivestreamExpectedLiveNotLive", {"instance": SHARD_1, **STREAM}, True),
        ("RealtimeKitLivestreamErrored", {"instance": SHARD_0, **STREAM}, True),
        ("RealtimeKitLivestreamStoppedLive", {"instance": SHARD_0, **OTHER_APP_STREAM}, False),
        ("RealtimeKitApiRateLimited", {"instance": SHARD_0, **APP}, False),
    ],
    "data-stale-hides-the-apps-streams": [
        ("RealtimeKitDataStale", {"instance": SHARD_0, **APP}, False),
        ("RealtimeKitLivestreamIngestStalled", {"instance": SHARD_0, **STREAM}, True),
    ],
    "token-rejected-is-the-one-notification": [
        ("RealtimeKitApiTokenRejected", {"instance": SHARD_0, **APP}, False),
        ("RealtimeKitApiDown", {"instance": SHARD_0, **APP}, True),
        ("RealtimeKitDataStale", {"instance": SHARD_0, **APP}, True),
        ("RealtimeKitLivestreamStoppedLive", {"instance": SHARD_0, **STREAM}, True),
        ("RealtimeKitApiDown", {"instance": SHARD_0, **OTHER_APP}, False),
    ],
}


def _case_alerts(job: str) -> list[dict[str, str]]:
    severity = {name: labels["severity"] for name, labels in _alerts().items()}
    return [
        {"alertname": name, "job": job, "severity": severity[name], **labels}
        for name, labels, _ in INHIBITION_CASES[job]
    ]


@pytest.mark.timeout(60)
def test_alertmanager_inhibits_what_the_comments_say(tmp_path: Path) -> None:
    """Posted to a real Alertmanager running the file, the alerts of each case (one job
    each) are suppressed exactly where the file's comments say: behind their exporter,
    their app's failing polls or its rejected token, never another target's or app's.
    Everything happens well within group_wait (30 s): no notification is attempted."""
    with _spawned_alertmanager(tmp_path) as url:
        sent = [alert for job in INHIBITION_CASES for alert in _case_alerts(job)]
        answer = post(f"{url}/api/v2/alerts", [{"labels": labels} for labels in sent])
        assert answer.status == 200, answer.text
        # Alertmanager takes an alert in as an inhibition source in the background, in the
        # order it receives alerts: once a pair sent afterwards shows inhibited, every alert
        # above has been taken in, and their states are final.
        marker = {"job": "marker", "instance": SHARD_0, "severity": "critical"}
        answer = post(
            f"{url}/api/v2/alerts",
            [
                {"labels": {**marker, "alertname": "RealtimeKitExporterDown"}},
                {"labels": {**marker, "alertname": "RealtimeKitLivestreamErrored", **STREAM}},
            ],
        )
        assert answer.status == 200, answer.text

        def states() -> dict[tuple[tuple[str, str], ...], str]:
            alerts = get(f"{url}/api/v2/alerts").json()
            return {tuple(sorted(a["labels"].items())): a["status"]["state"] for a in alerts}

        wait_for(
            lambda: "suppressed" in {s for k, s in states().items() if ("job", "marker") in k},
            timeout=10,
            what="the marker alert to be inhibited",
        )
        found = states()
        for job, alerts in INHIBITION_CASES.items():
            for labels, (_, _, suppressed) in zip(_case_alerts(job), alerts, strict=True):
                expected = "suppressed" if suppressed else "active"
                state = found.get(tuple(sorted(labels.items())))
                assert state == expected, f"{job}: {labels['alertname']} {labels}: {state}"
