"""The Grafana dashboard deploy/grafana/realtimekit-livestreams.json.

Structure: valid JSON, unique panel ids, a tidy grid, every query on the datasource
variable, every metric it names documented in docs/metrics.md or recorded by
deploy/prometheus/recording.yml (or Prometheus' own up and ALERTS), every selector on the
job variable (no query names a job), every stream-level (app-level) selector filtered
by the template variables, every query of apps or streams joined to the apps of the
selected credentials (``and on (account_id, app_id) realtimekit_app_info{credentials=~...}``),
and every selector of a family with a ``credentials`` label filtered by that variable.

Then the real check: the simulator, the exporter and Prometheus (with the recording rules)
run as processes on loopback, the simulator holding live streams, an ERRORED stream whose
session ended with an error, a stream with a status the exporter does not know, one whose
id has a regex metacharacter (and one its unescaped regex would match too), a second app
read with a second credentials (a token of its own, with a budget of its own), app
analytics read every second, and a burst of API errors. Prometheus also evaluates the
shipped alerting rules, with their ``for`` taken out so that what the world sets off fires
at once: the ERRORED stream's alerts, then a rejected configuration reload's. Every panel
query, with the template variables filled in as Grafana would, must be accepted by
Prometheus and return data; a few panels must return the values the simulator's state
implies, and selecting a job, credentials, an app or streams must narrow every result to
them. Last, the exporter is stopped: the scrape-up panel must read 0, the alerts table
must show the exporter's own alert only, and every other panel that shows "now" (stats,
tables) must show no data rather than a stale value.

The Webhooks row reads series that exist only with a ``webhooks`` section: without one (the
run above) its queries are accepted and return nothing; a second run has the exporter
receive the simulator's webhooks, and there the row shows an accepted delivery and the
count of unannounced changes.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from exporter.config import DEFAULT_CREDENTIALS, DEFAULT_WEBHOOK_PATH
from tests import REPO
from tests.procs import (
    LOOPBACK,
    exporter_command,
    free_port,
    get,
    post,
    prometheus_api,
    prometheus_config,
    reap,
    request,
    require_tool,
    run,
    spawned_exporter,
    spawned_prometheus,
    spawned_simulator,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from tests.procs import Proc

DASHBOARD = REPO / "deploy" / "grafana" / "realtimekit-livestreams.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
RECORDING = REPO / "deploy" / "prometheus" / "recording.yml"
ALERTING = REPO / "deploy" / "prometheus" / "alerts.yml"

JOB = "realtimekit-exporter"  # the job the alerts select, as Compose and the Kubernetes base
JOB_VAR = "job"
JOB_MATCHER = 'job=~"$job"'
CREDENTIALS_VAR = "credentials"
CREDENTIALS_MATCHER = 'credentials=~"$credentials"'
APP_INFO = "realtimekit_app_info"  # every app, with the credentials it is read with
# How a query keeps the apps of the selected credentials: a filter, which several shards'
# (or a rolling restart's) copies of an app's info series on the right do not break.
APP_INFO_JOIN = re.compile(
    r"\band\s+on\s*\(\s*account_id\s*,\s*app_id\s*\)\s*realtimekit_app_info\{"
)
DS_VARIABLE = "DS_PROMETHEUS"
DS_REF = "${" + DS_VARIABLE + "}"
STREAM_VARS = ("account_id", "app_id", "livestream_id")
APP_VARS = ("account_id", "app_id")
# Series Prometheus writes itself (up for every target, ALERTS for every alert pending or
# firing), with their level: neither needs the account or app variables.
PROMETHEUS_SERIES = {"up": "exporter", "ALERTS": "exporter"}
# The labels Prometheus (job, instance) and the Prometheus Operator add to every series.
TARGET_LABELS = {"job", "instance", "namespace", "service", "endpoint", "pod", "container"}
EXPORTER_UP = "Exporter scrape up"
ALERTS_TABLE = "Alerts firing"
PER_STREAM_LIMIT = re.compile(r"\b(?:topk|bottomk)\((\d+),")
GRID_COLUMNS = 24
# What Grafana would put in for its built-in variables (the test's Prometheus scrapes
# every second; 1m holds enough samples for every rate()).
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
RANGE_SECONDS = 30
RANGE_STEP = "2"
WEBHOOK_ROW = "Webhooks"
ANALYTICS_ROW = "App analytics"
WEBHOOK_METRIC = re.compile(r"realtimekit_exporter_webhook_\w+")


# -- reading the dashboard ----------------------------------------------------------------
def _dashboard() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    return dashboard


def _all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _query_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _all_panels(dashboard) if p["type"] != "row"]


def _targets(dashboard: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every target with an expression."""
    return [
        (panel, target)
        for panel in _query_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _webhook_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The panels of the Webhooks row: those between its row panel and the next row."""
    found: list[dict[str, Any]] = []
    inside = False
    for panel in _all_panels(dashboard):
        if panel["type"] == "row":
            inside = panel["title"] == WEBHOOK_ROW
        elif inside:
            found.append(panel)
    return found


def _webhook_keys(dashboard: Mapping[str, Any]) -> set[str]:
    """ "panel title/refId" of every query of the Webhooks row."""
    return {f"{p['title']}/{t['refId']}" for p in _webhook_panels(dashboard) for t in p["targets"]}


def _variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _variable_query(variable: Mapping[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)$", re.DOTALL)


def _label_values(variable: Mapping[str, Any]) -> tuple[str, str]:
    """(series selector, label) of a ``label_values(selector, label)`` variable query."""
    match = _LABEL_VALUES.match(_variable_query(variable).strip())
    assert match, f"variable {variable['name']}: not a label_values() query"
    return match["selector"].strip(), match["label"]


# -- what the docs and the rules define ---------------------------------------------------
def _documented_metrics() -> dict[str, str]:
    """Every metric of docs/metrics.md (histograms as their _bucket/_sum/_count series),
    mapped to its level: "stream", "app" or "exporter"."""
    levels = {
        "## Per livestream": "stream",
        "## Per app": "app",
        "## The exporter itself": "exporter",
    }
    found: dict[str, str] = {}
    level = None
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            level = levels.get(line.strip())
        # A row names one metric, or a few of the same kind: | `a`, `b` | gauge | ...
        match = re.match(r"\|\s*((?:`realtimekit_\w+`[,\s]*)+)\|\s*(\w+)", line)
        if match and level:
            cell, kind = match.groups()
            for name in re.findall(r"`(realtimekit_\w+)`", cell):
                if kind == "histogram":
                    suffixes = ("_bucket", "_sum", "_count")
                    found.update({f"{name}{suffix}": level for suffix in suffixes})
                else:
                    found[name] = level
    assert len(found) > 20, f"cannot read the metric tables of {METRICS_DOC}"
    return found


def _credentials_metrics() -> set[str]:
    """The exporter's families that docs/metrics.md lists with a ``credentials`` label (in
    the labels column of its table of the exporter's own metrics), histograms as their
    series."""
    found: set[str] = set()
    inside = False
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## The exporter itself"
        cells = [cell.strip() for cell in line.split("|")]
        if inside and len(cells) > 4 and "`credentials`" in cells[3]:
            for name in re.findall(r"`(realtimekit_\w+)`", cells[1]):
                if cells[2] == "histogram":
                    found.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
                else:
                    found.add(name)
    assert len(found) >= 10, f"cannot read the credentials label in {METRICS_DOC}"
    return found


def _recorded_metrics() -> dict[str, str]:
    """Every recording rule of recording.yml, mapped to the level its name gives."""
    rules = yaml.safe_load(RECORDING.read_text(encoding="utf-8"))
    found = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                level_labels = rule["record"].split(":")[0]
                found[rule["record"]] = (
                    "stream"
                    if "livestream_id" in level_labels
                    else "app"
                    if "app_id" in level_labels
                    else "exporter"
                )
    assert found, f"no recording rule in {RECORDING}"
    return found


# -- a small PromQL scanner: enough to find the vector selectors ---------------------------
_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<braces>\{(?:[^{}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})
    | (?P<range>\[[^\]]*\])
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?:ms|[smhdwy])*)  # or a duration
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers between the braces or "") of every vector selector."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    found = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "braces":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        if kind == "ident":
            if text in _GROUPING and after[1] == "(":
                i += 2  # skip the label list up to its ")"
                while i < len(tokens) and tokens[i][1] != ")":
                    i += 1
            elif after[1] == "(" or text in _AGGREGATIONS or text in _KEYWORDS:
                pass  # a function call, an aggregation, a keyword
            elif after[0] == "braces":
                found.append((text, after[1][1:-1]))
                i += 1
            else:
                found.append((text, ""))
        i += 1
    return found


def _matchers(braces: str) -> set[str]:
    """The matchers of a selector, whitespace taken out of each."""
    parts = re.findall(r'\w+\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"', braces)
    return {re.sub(r"\s+", "", part) for part in parts}


def _required(variables: tuple[str, ...]) -> set[str]:
    return {f'{name}=~"${name}"' for name in variables}


def test_scanner_finds_selectors_and_skips_labels_and_strings() -> None:
    expr = (
        'label_replace(sum by (app_id) (rate(a_total{x="1", y=~"$y"}[5m])) * on (k) '
        'group_left (name) topk by (k) (1, b), "stream", "$1", "name", "(.+)") '
        "or vector(0) and bool c:d:e offset 5m"
    )
    assert _selectors(expr) == [("a_total", 'x="1", y=~"$y"'), ("b", ""), ("c:d:e", "")]
    assert _matchers('x="1", y =~ "$y"') == {'x="1"', 'y=~"$y"'}


# -- structure ----------------------------------------------------------------------------
def test_dashboard_is_valid_json_with_its_uid_and_variables() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "realtimekit-livestreams"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard.get("id") is None, "an importable dashboard carries no database id"

    variables = _variables(dashboard)
    datasource = variables[DS_VARIABLE]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    # The job: the exporter's jobs only (All is their list, not ".*", which would take
    # every target's up), All of them by default: every deploy's job shows without picking
    # it (realtimekit-exporter, and realtimekit-exporter-demo for the Kubernetes demo).
    job = variables[JOB_VAR]
    assert job["type"] == "query" and job["multi"] and job["includeAll"]
    assert job.get("allValue") in (None, ""), "All must not select every job in Prometheus"
    assert job["datasource"]["uid"] == DS_REF
    assert _label_values(job) == ("realtimekit_exporter_build_info", JOB_VAR)
    assert job["current"]["value"] == ["$__all"], job["current"]
    # The credentials: the names the apps are read with, All by default.
    credentials = variables[CREDENTIALS_VAR]
    assert credentials["type"] == "query"
    assert credentials["multi"] and credentials["includeAll"]
    assert credentials["datasource"]["uid"] == DS_REF
    assert credentials["current"]["value"] == ["$__all"], credentials["current"]
    selector, label = _label_values(credentials)
    assert label == CREDENTIALS_VAR and _selectors(selector)[0][0] == APP_INFO
    assert _matchers(selector) == {JOB_MATCHER}
    for name in STREAM_VARS:
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["multi"] and variable["includeAll"], name
        assert variable["datasource"]["uid"] == DS_REF, name
        selector, label = _label_values(variable)
        assert label == name
        metric = _selectors(selector)[0][0]
        assert metric in (APP_INFO, "realtimekit_up", "realtimekit_livestream_info"), name
    # Chained: each on the job, account_id and app_id on the credentials, app_id on
    # account_id, livestream_id on both.
    for name in STREAM_VARS:
        assert JOB_MATCHER in _matchers(_label_values(variables[name])[0]), name
    for name in APP_VARS:
        assert CREDENTIALS_MATCHER in _matchers(_label_values(variables[name])[0]), name
    assert _matchers(_label_values(variables["app_id"])[0]) >= _required(("account_id",))
    assert _matchers(_label_values(variables["livestream_id"])[0]) >= _required(APP_VARS)
    # Variables come before those that use them.
    order = [v["name"] for v in dashboard["templating"]["list"]]
    assert order.index(DS_VARIABLE) < order.index(JOB_VAR) < order.index(CREDENTIALS_VAR)
    assert order.index(CREDENTIALS_VAR) < order.index("account_id")
    assert order.index("account_id") < order.index("app_id")
    assert order.index("app_id") < order.index("livestream_id")
    # The Livestream selector lists ids (the label values); it says where the names are.
    assert "Streams now" in variables["livestream_id"]["description"]


def test_panels_have_unique_ids_a_tidy_grid_and_the_datasource_variable() -> None:
    dashboard = _dashboard()
    panels = list(_all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"

    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        title = panel.get("title")
        assert grid["w"] > 0 and grid["h"] > 0, title
        assert grid["x"] >= 0 and grid["y"] >= 0, title
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"{title} is wider than the grid"
        boxes.append((title, grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1 :]:
            overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
            assert not overlap, f"panels {a!r} and {b!r} overlap"

    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Alerts",
        "Streams",
        "Viewers & ingest",
        ANALYTICS_ROW,
        "Exporter health",
        "Request budget",
        WEBHOOK_ROW,
    ]
    for panel in _query_panels(dashboard):
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": DS_REF}, title
        assert panel.get("description"), f"{title} has no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title} has no unit"
        assert panel["targets"], f"{title} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": DS_REF}, title
            assert target.get("expr"), title


def test_every_metric_is_documented_and_every_selector_filtered() -> None:
    """Names come from docs/metrics.md or recording.yml (or are Prometheus' own ``up`` and
    ``ALERTS``); every selector carries the job variable, but a recorded series' (its rule
    drops job), whose query joins it to a selector that does; stream-level selectors carry
    the account, app and livestream variables, app-level ones the account and app ones; a
    family with a ``credentials`` label carries the credentials variable."""
    recorded = _recorded_metrics()
    known = _documented_metrics() | recorded | PROMETHEUS_SERIES
    with_credentials = _credentials_metrics()
    dashboard = _dashboard()
    queries = [(p["title"], t["expr"]) for p, t in _targets(dashboard)]
    for name in (CREDENTIALS_VAR, *STREAM_VARS):
        queries.append((f"variable {name}", _label_values(_variables(dashboard)[name])[0]))
    used = set()
    for title, expr in queries:
        selectors = _selectors(expr)
        assert selectors, f"{title}: no metric in {expr!r}"
        on_job = [m for m, braces in selectors if JOB_MATCHER in _matchers(braces)]
        assert on_job, f"{title}: no selector on the job variable in {expr!r}"
        for metric, braces in selectors:
            assert metric in known, f"{title}: {metric} is not in docs/metrics.md or recording.yml"
            used.add(metric)
            if metric not in recorded:
                assert JOB_MATCHER in _matchers(braces), f"{title}: {metric}{{{braces}}}"
            if metric in with_credentials or (
                metric == APP_INFO and title != f"variable {CREDENTIALS_VAR}"
            ):
                assert CREDENTIALS_MATCHER in _matchers(braces), f"{title}: {metric}{{{braces}}}"
            if title.startswith("variable "):
                continue
            level = known[metric]
            needed = _required(STREAM_VARS if level == "stream" else APP_VARS)
            if level != "exporter":
                missing = needed - _matchers(braces)
                assert not missing, f"{title}: {metric}{{{braces}}} lacks {sorted(missing)}"
    # Every recording rule feeds a panel (they exist for the dashboard).
    assert set(recorded) <= used


def test_every_app_and_stream_query_keeps_the_selected_credentials() -> None:
    """A query that reads apps or streams (a series with an app_id, the exporter's or a
    recording rule's) keeps only the apps read with the selected credentials: it filters
    with ``and on (account_id, app_id) realtimekit_app_info{...}``, and realtimekit_app_info
    appears in no other way (every shard exports it, so a ``group_left`` on it would fail
    with two shards). A query of the exporter's own series with no app_id has none."""
    levels = _documented_metrics() | _recorded_metrics()
    joined = 0
    for panel, target in _targets(_dashboard()):
        expr = target["expr"]
        selectors = _selectors(expr)
        infos = [braces for metric, braces in selectors if metric == APP_INFO]
        assert len(APP_INFO_JOIN.findall(expr)) == len(infos), f"{panel['title']}: {expr}"
        reads_apps = any(
            levels.get(metric) in ("app", "stream")
            or (metric == "ALERTS" and _matchers(braces) >= _required(APP_VARS))  # apps' alerts
            for metric, braces in selectors
            if metric != APP_INFO
        )
        if reads_apps:
            # The "0 when none" fallback of a count (an "or" branch) is filtered too.
            needed = 1 + expr.count("0 * count(")
            assert len(infos) >= needed, f"{panel['title']}: not filtered on credentials: {expr}"
            joined += 1
        else:
            assert not infos, f"{panel['title']}: {expr}"
    assert joined >= 35, joined


def test_no_query_names_a_job() -> None:
    """Every job matcher of every query, panels and variables alike, is the job variable:
    the job name is picked under Job, never written into a query."""
    dashboard = _dashboard()
    texts = [t["expr"] for _, t in _targets(dashboard)]
    for variable in _variables(dashboard).values():
        if variable["type"] == "query":
            texts += [_variable_query(variable), variable.get("definition", "")]
    found = [
        f"job{op}{value}"
        for text in texts
        for op, value in re.findall(r'\bjob\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")', text)
    ]
    assert len(found) >= len(_targets(dashboard)), found
    assert set(found) == {JOB_MATCHER}, sorted(set(found) - {JOB_MATCHER})


def _stat_panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _query_panels(dashboard) if p["type"] == "stat"]


def test_stats_show_the_value_now_and_missing_data_as_missing() -> None:
    """A stat is an instant query: a range reduced to its last non-null value would keep
    showing the value from before the exporter died. No stat turns no data into a number."""
    stats = _stat_panels(_dashboard())
    assert len(stats) >= 8
    for panel in stats:
        title = panel["title"]
        for target in panel["targets"]:
            assert target.get("instant") is True and target.get("range") is False, title
        assert "lastNotNull" not in panel["options"]["reduceOptions"]["calcs"], title
        no_value = panel["fieldConfig"]["defaults"].get("noValue")
        assert no_value is None or not re.fullmatch(r"[-+.\d\s]+", no_value), (title, no_value)


def test_exporter_scrape_up_is_red_when_down_or_absent() -> None:
    """min over the job's targets; 0 reads "down", no series reads "no target", both red."""
    (panel,) = [p for p in _stat_panels(_dashboard()) if p["title"] == EXPORTER_UP]
    assert (panel["gridPos"]["x"], panel["gridPos"]["y"]) == (0, 1), "first in the Overview row"
    (target,) = panel["targets"]
    assert target["expr"] == "min(up{" + JOB_MATCHER + "})", target["expr"]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["noValue"] == "no target"
    steps = defaults["thresholds"]["steps"]
    assert steps[0]["color"] == "red", "no data is drawn in the base threshold colour"
    assert [s.get("value") for s in steps[1:]] == [1] and steps[1]["color"] == "green"
    value_maps = [m for m in defaults["mappings"] if m["type"] == "value"]
    special = [m for m in defaults["mappings"] if m["type"] == "special"]
    assert value_maps[0]["options"]["0"] == {"color": "red", "index": 0, "text": "down"}
    assert value_maps[0]["options"]["1"]["text"] == "up"
    assert special[0]["options"]["match"] == "null"
    assert special[0]["options"]["result"]["text"] == "no target"
    assert special[0]["options"]["result"]["color"] == "red"


def test_tables_hide_every_target_label() -> None:
    """Prometheus' and the Operator's target labels are no columns of a table of streams or
    apps; a table of alerts or of the exporters keeps instance, which names the exporter."""
    levels = _documented_metrics()
    of_apps = {m for m, level in levels.items() if level in ("stream", "app")}
    of_apps.discard(APP_INFO)  # a filter on the credentials, in every such query
    tables = [p for p in _query_panels(_dashboard()) if p["type"] == "table"]
    assert len(tables) >= 4
    for panel in tables:
        (organize,) = [t for t in panel["transformations"] if t["id"] == "organize"]
        hidden = {k for k, v in organize["options"]["excludeByName"].items() if v}
        metrics = {m for t in panel["targets"] for m, _ in _selectors(t["expr"])}
        shown = set() if metrics & of_apps else {"instance"}
        assert hidden >= TARGET_LABELS - shown, (panel["title"], sorted(TARGET_LABELS - hidden))
        assert not hidden & shown, panel["title"]


def test_per_stream_timeseries_are_limited_and_say_so() -> None:
    """With All selected among thousands of streams, a per-stream graph keeps the top (or
    bottom) N series at each step; its description states N."""
    per_stream = [
        p
        for p in _query_panels(_dashboard())
        if p["type"] == "timeseries"
        and any("{{stream}}" in t.get("legendFormat", "") for t in p["targets"])
    ]
    assert len(per_stream) >= 5
    for panel in per_stream:
        for target in panel["targets"]:
            match = PER_STREAM_LIMIT.search(target["expr"])
            assert match, f"{panel['title']}: no topk/bottomk limit"
            assert f"at most the {match[1]} " in panel["description"], panel["title"]


# -- against a real Prometheus ------------------------------------------------------------
ACCOUNT = "sim-account"
APP = "sim-app"
OTHER_APP = "sim-app-2"
SEED = 7  # with 4 streams, 2 live: the realistic profile changes none within minutes
STREAMS = 4
LIVE_AT_START = 2
ERRORED = "dash-errored"  # live, then stopped with an error; expect_live: true
UNKNOWN = "dash-paused"  # listed with a status the exporter does not know
UNKNOWN_STATUS = "PAUSED"
OTHER = "dash-other"  # the other app's only stream, live
DOTTED = "dash.dotted"  # an id with a regex metacharacter, which a selection must escape
DECOY = "dash-dotted"  # what the regex dash.dotted matches unescaped
EXTRA_STREAMS = (ERRORED, UNKNOWN, DOTTED, DECOY)  # of APP, besides the simulator's own
SETTLE_TIMEOUT = 25.0
SERVER_ERRORS = 'realtimekit_exporter_api_requests_total{code=~"5.."}'
SIM_RATE_LIMIT = (12000, 300)  # the simulator's limit for the token: requests, window (s)
OTHER_CREDENTIALS = "agency-b"  # OTHER_APP's credentials: another token, another name
# Each credentials' budget (requests, window in s): room for the analytics after the
# statuses and sessions of 1-second cycles, both within the simulator's limit.
BUDGETS = {DEFAULT_CREDENTIALS: (6000, 300), OTHER_CREDENTIALS: (3000, 300)}
# Shipped alerts the world sets off: the errored stream's (two of them), a rejected reload
# and, last, the exporter's target down.
STREAM_ALERTS = {"RealtimeKitLivestreamErrored", "RealtimeKitLivestreamExpectedLiveNotLive"}
RELOAD_ALERT = "RealtimeKitExporterConfigReloadFailed"
EXPORTER_DOWN_ALERT = "RealtimeKitExporterDown"


def _substitute(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with ``$var``, ``${var}`` and ``${var:format}`` filled in; an unknown
    variable fails the test rather than reach Prometheus. ``$1`` (label_replace) stays."""
    known = {**BUILTINS, **values}

    def fill(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        assert name in known, f"unknown variable ${name} in {expr!r}"
        return known[name]

    return re.sub(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?::\w+)?\}|(?P<bare>[A-Za-z_]\w*))", fill, expr)


def _regex_of(values: list[str]) -> str:
    """A multi-value selection as Grafana's Prometheus data source puts it into the query
    text: (a|b), each value regex-escaped *inside a PromQL string*, so with two backslashes
    (``a.b`` becomes ``a\\\\.b``, read by PromQL as the regex ``a\\.b``) and a backslash as
    four. This is interpolateQueryExpr and prometheusSpecialRegexEscape (classic behaviour)
    of packages/grafana-prometheus/src/escaping.ts."""
    escaped = [
        re.sub(r"[$^*{}\[\]+?.()|]", lambda m: "\\\\" + m[0], v.replace("\\", "\\" * 4))
        for v in values
    ]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _everything() -> dict[str, str]:
    """The variables of the dashboard opened as shipped: All everywhere, and All of the job
    is the list of the exporter's jobs, here the one the test's Prometheus scrapes."""
    return {JOB_VAR: _regex_of([JOB]), **dict.fromkeys((CREDENTIALS_VAR, *STREAM_VARS), ".*")}


_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _promql_string(text: str) -> str:
    """The value of the double-quoted PromQL string with content ``text``: Go's escapes (the
    one-character ones are enough here); any other escape, such as ``\\.``, is an error, as
    it is to Prometheus ("unknown escape sequence")."""

    def unescape(match: re.Match[str]) -> str:
        char = match[1]
        if char in "\\\"'":
            return char
        if char in _GO_ESCAPES:
            return _GO_ESCAPES[char]
        raise ValueError(f"unknown escape sequence {char!r} in {text!r}")

    return re.sub(r"\\(.)", unescape, text, flags=re.DOTALL)


def test_regex_of_escapes_as_grafana_does() -> None:
    assert _regex_of(["dash.dotted"]) == r"dash\\.dotted"
    assert _regex_of(["a", "b.c"]) == r"(a|b\\.c)"
    assert _regex_of([r"a\b"]) == r"a\\\\b"
    assert _regex_of(["plain-id_1"]) == "plain-id_1"
    for value in ("dash.dotted", "a+b", "x(y)|z", r"back\slash", "[c]{1}^$?*"):
        regex = _promql_string(_regex_of([value]))
        assert re.fullmatch(regex, value), (value, regex)
    assert not re.fullmatch(_promql_string(_regex_of(["dash.dotted"])), "dash-dotted")
    # What the single-backslash escaping produced: not a valid PromQL string.
    with pytest.raises(ValueError, match="unknown escape"):
        _promql_string(r"dash\.dotted")


class Queries:
    """The dashboard's queries against one Prometheus."""

    def __init__(self, url: str, dashboard: Mapping[str, Any]) -> None:
        self.url = url
        self.targets = _targets(dashboard)

    def run(self, expr: str, *, at: float | None = None) -> dict[str, Any]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return prometheus_api(self.url, "/api/v1/query", **params)

    def run_range(self, expr: str, end: float) -> dict[str, Any]:
        return prometheus_api(
            self.url,
            "/api/v1/query_range",
            query=expr,
            start=f"{end - RANGE_SECONDS:.3f}",
            end=f"{end:.3f}",
            step=RANGE_STEP,
        )

    def instant(self, values: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
        """Each target's instant result, keyed "panel title/refId"; a rejected query fails
        the test at once with Prometheus' reason."""
        at = time.time()
        results = {}
        for panel, target in self.targets:
            key = f"{panel['title']}/{target['refId']}"
            expr = _substitute(target["expr"], values)
            body = self.run(expr, at=at)
            _accepted(key, expr, body)
            results[key] = body["data"]["result"]
        return results

    def result(self, title: str, values: Mapping[str, str], ref: str = "A") -> list[dict[str, Any]]:
        """The instant result of one panel query."""
        for panel, target in self.targets:
            if panel["title"] == title and target["refId"] == ref:
                expr = _substitute(target["expr"], values)
                body = self.run(expr)
                _accepted(f"{title}/{ref}", expr, body)
                return list(body["data"]["result"])
        raise AssertionError(f"no panel {title!r} with query {ref}")

    def value(self, title: str, values: Mapping[str, str], ref: str = "A") -> float | None:
        """The single value of a one-series panel query, None without data."""
        result = self.result(title, values, ref)
        assert len(result) <= 1, (title, result)
        return float(result[0]["value"][1]) if result else None


def _accepted(key: str, expr: str, body: Mapping[str, Any]) -> None:
    if body.get("status") != "success":
        pytest.fail(
            f"Prometheus rejected the query of {key}: {body.get('errorType')}: "
            f"{body.get('error')}\n{expr}",
            pytrace=False,
        )


def _set_faults(control: str, **faults: Any) -> None:
    answer = request("PUT", control + "/faults", body=faults)
    assert answer.status == 200, answer.text


def _alerts_at_once(workdir: Path) -> Path:
    """The shipped alerting rules without their ``for``: an alert fires at the first rule
    evaluation that finds its condition, seconds into the test rather than minutes. What
    the alerts table shows of them, their names and labels, is as shipped."""
    rules = yaml.safe_load(ALERTING.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
            rule.pop("keep_firing_for", None)  # resolved means gone from the table
    path = workdir / "alerts-at-once.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def _rate_limit(credentials: str) -> str:
    return "{}/{}s".format(*BUDGETS[credentials])


@contextlib.contextmanager
def _world(workdir: Path) -> Iterator[tuple[str, str, list[Proc]]]:
    """Simulator, exporter (its config in ``workdir/exporter.yaml``) and Prometheus, with
    the recording rules and the alerting rules at once: yields the simulator's control URL,
    Prometheus' URL and the processes to watch. The exporter reads APP with the default
    credentials and OTHER_APP with OTHER_CREDENTIALS (a second token the simulator accepts
    too: two credentials may not hold one token), each with a budget of its own, and every
    app's analytics every second."""
    require_tool("prometheus")
    token_file = workdir / "token"
    token_file.write_text("dashboard-test-token\n", encoding="utf-8")
    other_token_file = workdir / "other-token"
    other_token_file.write_text("dashboard-test-other-token\n", encoding="utf-8")
    procs: list[Proc] = []
    with contextlib.ExitStack() as stack:
        simulator, origin = stack.enter_context(
            spawned_simulator(
                workdir,
                *("--account-id", ACCOUNT, "--app-id", APP, "--token-file", str(token_file)),
                *("--seed", str(SEED), "--livestreams", str(STREAMS)),
                *("--live", str(LIVE_AT_START), "--profile", "realistic"),
                *("--rate-limit", "{}/{}s".format(*SIM_RATE_LIMIT)),
            )
        )
        procs.append(simulator)
        control = origin + "/-/simulator"
        added = post(
            control + "/tokens",
            {"name": OTHER_CREDENTIALS, "token": "dashboard-test-other-token", "accounts": None},
        )
        assert added.status == 201, added.text
        for stream_id, app, name in (
            (ERRORED, APP, "Errored stream"),
            (UNKNOWN, APP, None),
            (DOTTED, APP, "Dotted stream"),
            (DECOY, APP, None),
            (OTHER, OTHER_APP, "Other app's stream"),
        ):
            created = post(
                control + "/livestreams",
                {"account_id": ACCOUNT, "app_id": app, "id": stream_id, "name": name},
            )
            assert created.status == 201, created.text
        for stream_id in (ERRORED, OTHER):
            went_live = post(f"{control}/livestreams/{stream_id}/live", {"viewers": 40})
            assert went_live.status == 200, went_live.text
        changed = post(f"{control}/livestreams/{UNKNOWN}/status", {"status": UNKNOWN_STATUS})
        assert changed.status == 200, changed.text

        config = {
            "api": {
                "base_url": origin + "/client/v4",
                "token_file": str(token_file),
                "timeout": "2s",
                "rate_limit": _rate_limit(DEFAULT_CREDENTIALS),
            },
            "credentials": {
                OTHER_CREDENTIALS: {
                    "token_file": str(other_token_file),
                    "rate_limit": _rate_limit(OTHER_CREDENTIALS),
                }
            },
            "poll": {"interval": "1s", "max_staleness": "15s", "analytics_interval": "1s"},
            "apps": [
                {
                    "account_id": ACCOUNT,
                    "app_id": APP,
                    "discover": True,
                    "livestreams": [{"id": ERRORED, "expect_live": True}],
                },
                {
                    "account_id": ACCOUNT,
                    "app_id": OTHER_APP,
                    "discover": True,
                    "credentials": OTHER_CREDENTIALS,
                },
            ],
        }
        exporter, target = stack.enter_context(
            spawned_exporter(workdir, yaml.safe_dump(config, sort_keys=False))
        )
        procs.append(exporter)
        prometheus = stack.enter_context(
            spawned_prometheus(
                workdir,
                prometheus_config(
                    job=JOB, target=target, rule_files=[RECORDING, _alerts_at_once(workdir)]
                ),
                watch=procs,
            )
        )
        procs.append(prometheus.proc)
        yield control, prometheus.url, procs


def _wait(
    what: str | Callable[[], str],
    condition: Callable[[], Any],
    procs: list[Proc],
    timeout: float = 20,
) -> Any:
    return wait_for(condition, timeout=timeout, what=what, watch=procs, interval=0.25)


@pytest.mark.timeout(90)
def test_every_panel_query_returns_data_from_the_simulator() -> None:
    dashboard = _dashboard()
    everything = _everything()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtk-dashboard-")))
        control, url, procs = stack.enter_context(_world(tmp))
        queries = Queries(url, dashboard)

        def value(promql: str) -> float | None:
            result = queries.run(promql)["data"]["result"]
            return float(result[0]["value"][1]) if len(result) == 1 else None

        def stream(stream_id: str) -> str:
            return f'{{job="{JOB}",livestream_id="{stream_id}"}}'

        # The errored stream is seen live (so the exporter knows its session), then
        # fails: ERRORED, and its session ends with an error message.
        _wait(
            f"{ERRORED} to be live in Prometheus",
            lambda: value(f"realtimekit_livestream_live{stream(ERRORED)}") == 1,
            procs,
        )
        failed = post(f"{control}/livestreams/{ERRORED}/error", {"message": "test error"})
        assert failed.status == 200, failed.text
        _wait(
            f"the session error of {ERRORED} in Prometheus",
            lambda: value(f"realtimekit_livestream_session_errored{stream(ERRORED)}") == 1,
            procs,
        )
        # A burst of 5xx answers: API error series, poll errors, an app down a moment.
        _set_faults(control, error_rate=0.5)
        try:
            _wait(
                "API errors in Prometheus",
                lambda: queries.run(SERVER_ERRORS)["data"]["result"],
                procs,
            )
        finally:
            _set_faults(control, error_rate=0.0)

        # Every panel query, all variables at All, is accepted and returns data once
        # the rates have two samples and the recording rules have run; but the Webhooks
        # row's, which are accepted and empty: this exporter has no webhooks section.
        empty: list[str] = []
        webhooks = _webhook_keys(dashboard)

        def all_have_data() -> bool:
            results = queries.instant(everything)
            empty[:] = [k for k, result in results.items() if not result and k not in webhooks]
            assert all(not results[k] for k in webhooks), "webhook series without webhooks"
            return not empty

        _wait(
            lambda: f"every panel query to return data; still empty: {empty}",
            all_have_data,
            procs,
            timeout=SETTLE_TIMEOUT,
        )
        end = time.time()
        for panel, target in queries.targets:
            if not target.get("range", True):
                continue
            key = f"{panel['title']}/{target['refId']}"
            expr = _substitute(target["expr"], everything)
            body = queries.run_range(expr, end)
            _accepted(key, expr, body)
            if key in webhooks:
                assert not body["data"]["result"], f"{key}: data without webhooks"
            else:
                assert body["data"]["result"], f"{key}: no data over the last {RANGE_SECONDS} s"

        # The 5xx burst may have left an app down at the last scrape: its next poll is fine.
        _wait(
            "every app to poll without errors again",
            lambda: queries.value("Apps with failing polls", everything) == 0,
            procs,
        )
        _check_values(queries, control, everything)
        _check_rejected_reload(queries, tmp, procs)
        _check_variables(url, dashboard)
        _check_selections(queries)
        for proc in procs:
            assert not proc.exited(), proc.describe()
        _check_exporter_down(queries, procs, everything)


def _check_values(queries: Queries, control: str, everything: Mapping[str, str]) -> None:
    """Panels that count or encode something read what the simulator's state implies."""
    world = get(control + "/livestreams").json()["livestreams"]
    live = {s["id"] for s in world if s["live"]}
    assert ERRORED not in live and OTHER in live and len(live) == LIVE_AT_START + 1, world
    assert queries.value("Streams live now", everything) == len(live)
    assert queries.value("Expected live, not live", everything) == 1  # the errored stream
    assert queries.value("Streams ERRORED", everything) == 1
    assert queries.value("Session errors", everything) == 1
    assert queries.value("Apps with failing polls", everything) == 0
    assert queries.value(EXPORTER_UP, everything) == 1
    oldest = queries.value("Oldest app data", everything)
    assert oldest is not None and 0 <= oldest < 10, oldest
    # Counts read 0, not no data, when the selection matches no stream of a reported app.
    nothing = {**everything, "livestream_id": "no-such-stream"}
    for title in (
        "Streams live now",
        "Expected live, not live",
        "Streams ERRORED",
        "Session errors",
        "Average concurrent viewers",
    ):
        assert queries.value(title, nothing) == 0, title

    # The stream table: one row per stream, no target label.
    table = next(p for p in _query_panels(_dashboard()) if p["title"] == "Streams now")
    rows = queries.run(_substitute(table["targets"][0]["expr"], everything))["data"]["result"]
    assert sorted(r["metric"]["livestream_id"] for r in rows) == sorted(s["id"] for s in world)
    for row in rows:
        assert not set(row["metric"]) & TARGET_LABELS, row["metric"]
        assert row["metric"]["status"], row["metric"]
    named = {r["metric"]["livestream_id"]: r["metric"].get("name") for r in rows}
    assert named[ERRORED] == "Errored stream" and named[DOTTED] == "Dotted stream", named

    # The status timeline: one series per stream, named, its status encoded as mapped.
    panel = next(p for p in _query_panels(_dashboard()) if p["title"] == "Status per stream")
    mapped = {
        text["text"]: int(code)
        for mapping in panel["fieldConfig"]["defaults"]["mappings"]
        for code, text in mapping["options"].items()
    }
    result = queries.run(_substitute(panel["targets"][0]["expr"], everything))["data"]["result"]
    codes = {r["metric"]["livestream_id"]: int(float(r["value"][1])) for r in result}
    names = {r["metric"]["livestream_id"]: r["metric"]["stream"] for r in result}
    assert len(codes) == len(result) == len(world), result
    assert codes[ERRORED] == mapped["ERRORED"] and names[ERRORED] == "Errored stream"
    assert codes[UNKNOWN] == mapped["OTHER"] and names[UNKNOWN] == UNKNOWN
    for stream_id in live:
        assert codes[stream_id] == mapped["LIVE"], (stream_id, codes)

    # The alerts table: the errored stream's alerts, named; each row a firing alert.
    alerts = queries.result(ALERTS_TABLE, everything)
    assert all(r["metric"]["alertstate"] == "firing" for r in alerts), alerts
    of_errored = [r["metric"] for r in alerts if r["metric"].get("livestream_id") == ERRORED]
    assert {a["alertname"] for a in of_errored} >= STREAM_ALERTS, alerts
    assert {a["name"] for a in of_errored} == {"Errored stream"}, of_errored

    # Counter age: every live stream, once, read within the last few poll intervals.
    ages = {
        r["metric"]["livestream_id"]: float(r["value"][1])
        for r in queries.result("Counter age of live streams", everything)
    }
    assert set(ages) == live and all(0 <= age < 10 for age in ages.values()), ages

    # Exporter health: nothing dropped; the configuration as loaded at start.
    dropped = queries.result("Streams dropped per app", everything)
    assert {r["metric"]["app_id"]: float(r["value"][1]) for r in dropped} == {
        APP: 0,
        OTHER_APP: 0,
    }
    assert queries.value("Configuration reload", everything) == 1
    loaded = queries.value("Configuration loaded", everything)
    assert loaded is not None and 0 <= time.time() - loaded / 1000 < 120, loaded

    # The budget table: one row per credentials and target (its four queries keep only
    # those two labels, so that Grafana's merge joins them): each credentials' own budget,
    # and the limit the simulator states for each token (the same for both).
    title = "Request budget and API policy now"
    budget: dict[str, dict[str, float]] = {}
    for ref in "ABCD":
        rows = queries.result(title, everything, ref)
        assert all(set(r["metric"]) == {"credentials", "instance"} for r in rows), rows
        budget[ref] = {r["metric"]["credentials"]: float(r["value"][1]) for r in rows}
        assert len(budget[ref]) == len(rows) == len(BUDGETS), rows
    for name, (requests, window) in BUDGETS.items():
        assert (budget["A"][name], budget["B"][name]) == (requests, window), budget
        assert (budget["C"][name], budget["D"][name]) == SIM_RATE_LIMIT, budget

    # App analytics: read for both apps, each with its credentials' spare requests, within
    # the last few seconds; the totals are the apps' sums. OTHER went live in this test:
    # its app has a session today.
    now = queries.instant(everything)
    analytics = "Analytics per app now"
    per_app = {
        ref: {r["metric"]["app_id"]: float(r["value"][1]) for r in now[f"{analytics}/{ref}"]}
        for ref in "ABCDE"
    }
    assert per_app["A"] == {APP: 1, OTHER_APP: 1}, per_app
    assert all(0 <= age < 10 for age in per_app["B"].values()), per_app
    assert all(set(values) == {APP, OTHER_APP} for values in per_app.values()), per_app
    assert per_app["C"][OTHER_APP] >= 1, per_app
    for title, ref in (
        ("Livestream sessions today", "C"),
        ("Ingest hours today", "D"),
        ("Viewer hours today", "E"),
    ):
        (total,) = now[f"{title}/A"]
        assert float(total["value"][1]) == pytest.approx(sum(per_app[ref].values())), title
    assert [float(r["value"][1]) for r in now["Apps with analytics off/A"]] == [0], now
    (last_read,) = now["Oldest analytics read/A"]
    assert float(last_read["value"][1]) == pytest.approx(max(per_app["B"].values())), last_read


def _check_rejected_reload(queries: Queries, workdir: Path, procs: list[Proc]) -> None:
    """A reload (SIGHUP) the exporter rejects, of a config with an unknown key, reads
    "failed", and its alert, which names no app, is in the alerts table whichever app is
    selected."""
    config_path = workdir / "exporter.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["poll"]["intervall"] = config["poll"]["interval"]  # a typo: an unknown key
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (exporter,) = [p for p in procs if p.name == "exporter"]
    exporter.popen.send_signal(signal.SIGHUP)
    other_app = {**_everything(), "app_id": OTHER_APP}
    _wait(
        "the rejected reload in the Configuration reload stat",
        lambda: queries.value("Configuration reload", other_app) == 0,
        procs,
    )

    def reload_alert() -> list[dict[str, str]]:
        alerts = queries.result(ALERTS_TABLE, other_app)
        return [r["metric"] for r in alerts if r["metric"]["alertname"] == RELOAD_ALERT]

    (alert,) = _wait(f"{RELOAD_ALERT} in the alerts table", reload_alert, procs)
    assert "app_id" not in alert and alert["job"] == JOB, alert


def _check_variables(url: str, dashboard: Mapping[str, Any]) -> None:
    """The variable queries, as Grafana runs label_values(), list the simulator's ids,
    and each narrows to the selection of the ones before it."""
    variables = _variables(dashboard)

    def options(name: str, values: Mapping[str, str]) -> set[str]:
        selector, label = _label_values(variables[name])
        body = prometheus_api(
            url,
            f"/api/v1/label/{label}/values",
            **{"match[]": _substitute(selector, values), "start": f"{time.time() - 600:.0f}"},
        )
        assert body["status"] == "success", body
        return set(body["data"])

    assert options(JOB_VAR, {}) == {JOB}
    job = {JOB_VAR: _regex_of([JOB])}
    assert options(CREDENTIALS_VAR, job) == set(BUDGETS)
    assert options(CREDENTIALS_VAR, {JOB_VAR: "no-such-job"}) == set()
    other = _regex_of([OTHER_CREDENTIALS])
    job = {**job, CREDENTIALS_VAR: ".*"}
    assert options("account_id", job) == {ACCOUNT}
    assert options("account_id", {**job, JOB_VAR: "no-such-job"}) == set()
    assert options("account_id", {**job, CREDENTIALS_VAR: "no-such-credentials"}) == set()
    assert options("app_id", {**job, "account_id": ".*"}) == {APP, OTHER_APP}
    assert options("app_id", {**job, "account_id": "no-such-account"}) == set()
    assert options("app_id", {**job, CREDENTIALS_VAR: other, "account_id": ".*"}) == {OTHER_APP}
    streams = options("livestream_id", {**job, "account_id": ACCOUNT, "app_id": ".*"})
    assert {*EXTRA_STREAMS, OTHER} <= streams and len(streams) == STREAMS + len(EXTRA_STREAMS) + 1
    assert options("livestream_id", {**job, "account_id": ACCOUNT, "app_id": OTHER_APP}) == {OTHER}


def _check_selections(queries: Queries) -> None:
    """Selecting another job empties every panel: no query escapes the job. Selecting
    credentials no app is read with empties every panel of apps, streams or budgets, and
    leaves the alerts of no credentials; selecting OTHER_CREDENTIALS narrows every result
    to OTHER_APP and to those credentials. Selecting an app, or some streams, narrows every
    result that has the label, and keeps the selected ones: a selected id with a "."
    matches itself, not its look-alike."""
    elsewhere = queries.instant({**_everything(), JOB_VAR: "no-such-job"})
    assert not any(elsewhere.values()), [k for k, result in elsewhere.items() if result]

    scoped = {
        f"{panel['title']}/{target['refId']}"
        for panel, target in queries.targets
        if "$credentials" in target["expr"]
    }
    assert len(scoped) >= 50, scoped
    nobody = queries.instant({**_everything(), CREDENTIALS_VAR: "no-such-credentials"})
    for key in scoped - {f"{ALERTS_TABLE}/A"}:
        assert not nobody[key], f"{key} with credentials no app has: {nobody[key]}"
    for alert in nobody[f"{ALERTS_TABLE}/A"]:
        assert not {"app_id", "credentials"} & set(alert["metric"]), alert
    others = {**_everything(), CREDENTIALS_VAR: _regex_of([OTHER_CREDENTIALS])}
    results = queries.instant(others)
    for key, result in results.items():
        apps = {r["metric"]["app_id"] for r in result if "app_id" in r["metric"]}
        names = {r["metric"]["credentials"] for r in result if "credentials" in r["metric"]}
        assert apps <= {OTHER_APP} and names <= {OTHER_CREDENTIALS}, (key, apps, names)
    listed = {r["metric"]["livestream_id"] for r in results["Status per stream/A"]}
    assert listed == {OTHER}, listed
    assert queries.value("Streams live now", others) == 1
    assert queries.value("Streams ERRORED", others) == 0
    budgets = {r["metric"]["credentials"] for r in results["Request budget available/A"]}
    assert budgets == {OTHER_CREDENTIALS}, results["Request budget available/A"]

    job = {JOB_VAR: _regex_of([JOB]), CREDENTIALS_VAR: ".*"}
    chosen = [ERRORED, UNKNOWN, DOTTED]
    for label, selected, values in (
        (
            "app_id",
            {OTHER_APP},
            {**job, "account_id": ".*", "app_id": OTHER_APP, "livestream_id": ".*"},
        ),
        (
            "livestream_id",
            set(chosen),
            {
                **job,
                "account_id": _regex_of([ACCOUNT]),
                "app_id": _regex_of([APP, OTHER_APP]),
                "livestream_id": _regex_of(chosen),
            },
        ),
        (
            "livestream_id",
            {DOTTED},
            {**job, "account_id": ".*", "app_id": ".*", "livestream_id": _regex_of([DOTTED])},
        ),
    ):
        results = queries.instant(values)
        for key, result in results.items():
            seen = {r["metric"][label] for r in result if label in r["metric"]}
            assert seen <= selected, f"{key} with {label}={selected}: {seen}"
        if label == "livestream_id":
            listed = {r["metric"][label] for r in results["Status per stream/A"]}
            assert listed == selected, f"Status per stream with {label}={selected}: {listed}"


def _check_exporter_down(
    queries: Queries, procs: list[Proc], everything: Mapping[str, str]
) -> None:
    """With the exporter stopped and its target down, the scrape-up stat reads 0 ("down"),
    the alerts table shows the exporter's own alerts only (the target down among them: the
    others resolve with their series), and every other panel that shows the present
    (stats, tables, bar gauge) has no data: its series are stale, not held at their last
    value nor read as 0."""
    (exporter,) = [p for p in procs if p.name == "exporter"]
    reap(exporter)
    rest = [p for p in procs if p is not exporter]
    _wait(
        f"Prometheus to see {JOB} down",
        lambda: queries.value(EXPORTER_UP, everything) == 0,
        rest,
    )
    results = queries.instant(everything)
    down = results["Exporter scrape targets/A"]
    assert [float(r["value"][1]) for r in down] == [0.0], down
    assert queries.value("Streams live now", everything) is None
    assert queries.value("Apps with failing polls", everything) is None
    now_panels = [
        (panel, target)
        for panel, target in queries.targets
        if target.get("instant") and panel["title"] not in (EXPORTER_UP, ALERTS_TABLE)
    ]
    assert len(now_panels) >= 10, now_panels
    for panel, target in now_panels:
        key = f"{panel['title']}/{target['refId']}"
        assert not results[key], f"{key} with {JOB} down: {results[key]}"

    def exporter_alerts_only() -> list[dict[str, str]]:
        alerts = [r["metric"] for r in queries.result(ALERTS_TABLE, everything)]
        names = {a["alertname"] for a in alerts}
        only = EXPORTER_DOWN_ALERT in names and all("app_id" not in a for a in alerts)
        return alerts if only else []

    alerts = _wait(
        lambda: f"only the exporter's alerts: {queries.result(ALERTS_TABLE, everything)}",
        exporter_alerts_only,
        rest,
    )
    assert {a["job"] for a in alerts} == {JOB}, alerts


@pytest.mark.timeout(90)
def test_webhook_row_shows_deliveries_with_a_webhooks_section(tmp_path: Path) -> None:
    """An exporter with a webhooks section, registered with the simulator (as
    ``webhooks register`` does it): the Webhooks row's queries return data, the receiver's
    series being there from the start; a stream stopped in the simulator comes as an
    accepted delivery, and no change goes unannounced."""
    require_tool("prometheus")
    dashboard = _dashboard()
    assert len(_webhook_panels(dashboard)) >= 2
    for panel in _webhook_panels(dashboard):
        for target in panel["targets"]:
            assert WEBHOOK_METRIC.search(target["expr"]), panel["title"]
    token = tmp_path / "token"
    token.write_text("dashboard-webhooks-token\n", encoding="utf-8")
    stream = "dash-hooked"
    with contextlib.ExitStack() as stack:
        simulator, origin = stack.enter_context(
            spawned_simulator(
                tmp_path,
                *("--account-id", ACCOUNT, "--app-id", APP, "--token-file", str(token)),
                *("--livestreams", "0", "--live", "0"),
            )
        )
        procs = [simulator]
        control = origin + "/-/simulator"
        created = post(
            control + "/livestreams", {"account_id": ACCOUNT, "app_id": APP, "id": stream}
        )
        assert created.status == 201, created.text
        went_live = post(f"{control}/livestreams/{stream}/live", {"viewers": 3})
        assert went_live.status == 200, went_live.text

        port = free_port()
        config = {
            "api": {"base_url": origin + "/client/v4", "token_file": str(token), "timeout": "2s"},
            "poll": {"interval": "1s", "max_staleness": "15s"},
            "apps": [{"account_id": ACCOUNT, "app_id": APP, "discover": True}],
            "webhooks": {
                "listen_address": f"{LOOPBACK}:{port}",
                "public_key_url": origin + "/.well-known/webhooks.json",
            },
        }
        config_text = yaml.safe_dump(config, sort_keys=False)
        exporter, target = stack.enter_context(spawned_exporter(tmp_path, config_text))
        procs.append(exporter)
        url = f"http://{LOOPBACK}:{port}{DEFAULT_WEBHOOK_PATH}"
        registered = run(
            exporter_command(
                *("webhooks", "register", "--config.file", str(tmp_path / "exporter.yaml")),
                *("--url", url),
            ),
            timeout=30,
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr
        prometheus = stack.enter_context(
            spawned_prometheus(
                tmp_path, prometheus_config(job=JOB, target=target, rule_files=()), watch=procs
            )
        )
        procs.append(prometheus.proc)
        queries = Queries(prometheus.url, dashboard)
        everything = _everything()

        def stream_live() -> float | None:
            result = queries.run(f'realtimekit_livestream_live{{livestream_id="{stream}"}}')
            values = [float(r["value"][1]) for r in result["data"]["result"]]
            return values[0] if values else None

        _wait(f"{stream} live in Prometheus", lambda: stream_live() == 1, procs)
        stopped = post(f"{control}/livestreams/{stream}/stop", {"status": "IDLE"})
        assert stopped.status == 200, stopped.text
        _wait(f"{stream} stopped in Prometheus", lambda: stream_live() == 0, procs)

        def accepted() -> list[dict[str, Any]]:
            results = queries.instant(everything)
            return [
                r
                for r in results["Webhook deliveries by outcome/A"]
                if r["metric"].get("outcome") == "accepted" and float(r["value"][1]) > 0
            ]

        _wait("an accepted delivery in the Webhooks row", accepted, procs, timeout=SETTLE_TIMEOUT)
        results = queries.instant(everything)
        for key in _webhook_keys(dashboard):
            assert results[key], f"{key}: no data with a webhooks section"
        unannounced = results["Changes no webhook announced (last hour)/A"]
        assert [float(r["value"][1]) for r in unannounced] == [0.0], unannounced
